"""Commands end with their documented exit code every time: 0, or 2 for a data error — never an
abort at interpreter exit (`terminate called without an active exception`, 134) after good
work, which a reader thread still alive at teardown used to cause."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.mark.slow
def test_a_hundred_runs_of_a_short_command_all_exit_cleanly(tmp_path, criteo_train):
    bad = tmp_path / "bad.csv"
    with bad.open("w") as fh:  # a value that breaks the inferred type several blocks in
        fh.write("label,user_id,price\n")
        fh.writelines(f"{i % 2},{i * 7919 % 100003},{i / 7:.4f}\n" for i in range(250_000))
        fh.write("1,5,not-a-price\n")
    runs = [
        ([str(criteo_train), "--format", "criteo", "--json"], 0),
        ([str(bad), "--json"], 2),
    ] * 50

    def run(case: tuple[list[str], int]) -> tuple[int, int, str]:
        args, expected = case
        done = subprocess.run(
            [sys.executable, "-m", "streamrec", "data", "inspect", *args],
            capture_output=True, text=True, timeout=120,
        )
        return done.returncode, expected, done.stderr

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, runs))
    wrong = [(code, expected, err[-300:]) for code, expected, err in results if code != expected]
    assert wrong == []
    assert all("Traceback" not in err and "terminate" not in err for *_, err in results)
    assert "not-a-price" in results[1][2] and str(bad) in results[1][2]  # one line, names both
