"""`python slow_io.py ARGS…` runs the `streamrec` command with every fsync and rename slowed
down, so a SIGKILL at a random moment often lands inside a checkpoint or delta write — the
chaos test's way to aim its kills at the critical sections without changing the code under
test."""

import os
import sys
import time

DELAY_S = float(os.environ.get("SLOW_IO_SECONDS", "0.02"))


def _slowed(fn):
    def slow(*args, **kwargs):
        time.sleep(DELAY_S)
        result = fn(*args, **kwargs)
        time.sleep(DELAY_S)
        return result

    return slow


os.fsync = _slowed(os.fsync)
os.rename = _slowed(os.rename)  # Path.rename calls it
os.replace = _slowed(os.replace)

if __name__ == "__main__":
    from streamrec.cli import main

    sys.argv[0] = "streamrec"
    main()
