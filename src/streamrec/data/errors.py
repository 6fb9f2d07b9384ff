"""Bad input: the error users see, and the dead-letter file that keeps skipped records.

A reader never drops a record silently: each one it cannot parse is either written to the
dead-letter file with its file, line and reason (the default), or, in strict mode, raised as a
`DataError` whose message names the file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TextIO


class DataError(Exception):
    """An input problem the user must fix; the message names the file (and line) and says how."""


class DeadLetter:
    """Counts rejected records and appends them as JSON lines to `path` (if given).

    Each line: {"file": ..., "line": 1-based line or null, "reason": ..., "record": raw text}.
    With `strict=True` the first rejected record raises DataError instead. A file's line is
    reported once however often it is read (the schema-fitting sample, then every epoch).
    """

    def __init__(self, path: str | Path | None = None, strict: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.strict = strict
        self.count = 0
        self.examples: list[dict] = []
        self._fh: TextIO | None = None
        self._reported: set[tuple[str, int]] = set()  # (file, line) already dead-lettered

    def reject(self, file: str, line: int | None, reason: str, record: str = "") -> None:
        where = f"{file}:{line}" if line is not None else file
        if self.strict:
            raise DataError(
                f"{where}: {reason} (drop --strict to skip bad rows into a dead-letter file)"
            )
        if line is not None:
            if (file, line) in self._reported:
                return
            self._reported.add((file, line))
        self.count += 1
        entry = {"file": file, "line": line, "reason": reason, "record": record}
        if len(self.examples) < 5:
            self.examples.append(entry)
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("a", encoding="utf-8")
            self._fh.write(json.dumps(entry) + "\n")
            self._fh.flush()

    def checkpoint(self) -> int:
        """Make every line written so far durable; → the file's size, which `rewind` takes
        back to when training resumes from the checkpoint that recorded it."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return self.path.stat().st_size if self.path is not None and self.path.exists() else 0

    def rewind(self, size: int) -> None:
        """Drop the lines written after the checkpoint at `size` bytes: the records they name
        are read again after a restart and would otherwise be dead-lettered twice."""
        self.close()
        if self.path is not None and self.path.exists() and self.path.stat().st_size > size:
            os.truncate(self.path, size)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
