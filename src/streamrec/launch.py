"""The `streamrec` executable's first code: signals get their documented exits before the
command's imports begin.

Ctrl-C while the interpreter imports the command (typer, then torch: a second or more) used to
end in a KeyboardInterrupt traceback and death by signal; a SIGTERM from a supervisor ended a
run with no word at all. Here, before anything heavy is imported:
  SIGINT  → exit 130, silently during start-up, then as `cli.main` handles Ctrl-C;
  SIGTERM → exit 143 with one line. Writes are crash-safe (temp file, fsync, rename), so a
            run stopped anywhere continues from its last checkpoint on the next start.
A signal that the parent set to be ignored (a background job's SIGINT) stays ignored.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

INTERRUPTED, TERMINATED = 130, 143


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so `finally` blocks (stream clients) still run."""


def _quiet_interrupt(signum: int, frame: FrameType | None) -> None:
    os._exit(INTERRUPTED)  # nothing to clean up yet: only imports were running


def _terminated(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("error: terminated (SIGTERM); the next start continues from the last "
                     "checkpoint\n")
    raise Terminated(TERMINATED)


def main() -> None:
    handles_sigint = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if handles_sigint:
        signal.signal(signal.SIGINT, _quiet_interrupt)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    from streamrec.cli import main as run_command

    if handles_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    run_command()
