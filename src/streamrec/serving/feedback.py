"""Clicks joined back to the variant that served them, for the bandit (`serving/variants.py`).

Every answered ranking request is remembered for `window_s` as request_id → variant. A thread
reads the action stream — the same records the online trainer joins: {"request_id", "item_id",
"action", "event_time"} on a local log, Kafka or Redis (`streamrec.data.stream`) — with a
consumer group of its own, and credits a click to the variant that served the request: once
per request, however many of its items were clicked. Actions for requests this server did not
answer (another replica's, or older than the window) are counted and ignored; a record that is
not a JSON object with a request_id is counted as malformed — never a crash.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import msgspec

from streamrec.data.stream.base import StreamSource
from streamrec.serving.variants import Variant

log = logging.getLogger("streamrec.serving")


class ServedRequests:
    """request_id → the variant that answered it, for `window_s` (at most `max_requests`,
    ~150 bytes each: an hour at 80 requests/s)."""

    def __init__(self, window_s: float = 3600.0, max_requests: int = 300_000) -> None:
        self.window_s = window_s
        self.max_requests = max_requests
        self._served: OrderedDict[str, tuple[float, Variant]] = OrderedDict()
        self._credited: set[str] = set()
        self._lock = threading.Lock()

    def remember(self, request_id: str, variant: Variant) -> None:
        now = time.monotonic()
        with self._lock:
            self._served[request_id] = (now, variant)
            while self._served and (
                len(self._served) > self.max_requests
                or next(iter(self._served.values()))[0] < now - self.window_s
            ):
                old, _ = self._served.popitem(last=False)
                self._credited.discard(old)

    def credit(self, request_id: str) -> Variant | bool:
        """Credit a click on `request_id` to the variant that answered it (→ that variant);
        → False if this server did not answer it (or has forgotten), True if it already has
        its click."""
        with self._lock:
            entry = self._served.get(request_id)
            if entry is None:
                return False
            if request_id in self._credited:
                return True
            self._credited.add(request_id)
        entry[1].clicks += 1
        return entry[1]


class _Action(msgspec.Struct):
    request_id: str
    action: str = "click"


class FeedbackReader:
    """The thread that reads the action stream and credits clicks."""

    def __init__(
        self, source: StreamSource, served: ServedRequests, actions: frozenset[str]
    ) -> None:
        self.source = source
        self.served = served
        self.actions = actions  # the action types that count as a reward (e.g. click)
        self.counts = {"read": 0, "credited": 0, "already_credited": 0, "unknown_request": 0,
                       "malformed": 0, "other_action": 0}
        self._decode = msgspec.json.Decoder(_Action).decode
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamrec-feedback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.source.close()

    def read_once(self, timeout: float = 0.2) -> int:
        """Read what has arrived; → messages read."""
        messages = self.source.poll(1000, timeout)
        for message in messages:
            self.counts["read"] += 1
            try:
                action = self._decode(message.value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.counts["malformed"] += 1
                continue
            if action.action not in self.actions:
                self.counts["other_action"] += 1
            else:
                credited = self.served.credit(action.request_id)
                outcome = (
                    "unknown_request" if credited is False
                    else "already_credited" if credited is True
                    else "credited"
                )
                self.counts[outcome] += 1
        if messages:
            self.source.commit(messages[-1].offset + 1)
        return len(messages)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.read_once()
            except Exception as e:  # a broken connection: retry, never stop serving
                log.warning("action stream: %s", e)
                self._stop.wait(1.0)
