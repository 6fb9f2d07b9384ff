"""ThreadFlag: a switch raised for the length of a `with` block, on the calling thread only.

Some behaviour is chosen by the caller's context rather than by an argument every layer in
between would have to pass on: a model's `state_dict()` leaving its tables out while the
model directory writes them apart, a check forcing a code path that small inputs would skip.
A thread-local flag keeps other threads (the server's inference worker) unaffected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ThreadFlag:
    def __init__(self) -> None:
        self._local = threading.local()

    def __bool__(self) -> bool:
        """Whether the flag is raised on this thread."""
        return getattr(self._local, "on", False)

    @contextmanager
    def raised(self) -> Iterator[None]:
        """Raise the flag on this thread within the block (nested blocks keep it raised)."""
        before = bool(self)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = before
