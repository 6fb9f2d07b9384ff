"""Commands end with their documented exit code every time: 0, or 2 for a data error — never an
abort at interpreter exit (`terminate called without an active exception`, 134) after good
work, which a reader thread still alive at teardown used to cause."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.mark.slow
def test_a_hundred_runs_of_a_short_command_all_exit_cleanly(tmp_path, criteo_train):
    bad = tmp_path / "bad.csv"
    with bad.open("w") as fh:  # a value that does not fit its column several blocks in
        fh.write("label,user_id,price\n")
        fh.writelines(f"{i % 2},{i * 7919 % 100003},{i / 7:.4f}\n" for i in range(250_000))
        fh.write("1,5,not-a-price\n")
    runs = [
        ([str(criteo_train), "--format", "criteo", "--json"], 0),
        ([str(bad), "--json"], 0),  # the odd row is dead-lettered, the rest read
        ([str(tmp_path / "missing.csv"), "--json"], 2),
    ] * 34

    def run(case: tuple[list[str], int]) -> tuple[int, int, str, str]:
        args, expected = case
        done = subprocess.run(
            [sys.executable, "-m", "streamrec", "data", "inspect", *args],
            capture_output=True, text=True, timeout=120,
        )
        return done.returncode, expected, done.stderr, done.stdout

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, runs))
    wrong = [(code, expected, err[-300:]) for code, expected, err, _ in results
             if code != expected]
    assert wrong == []
    assert all("Traceback" not in err and "terminate" not in err for _, _, err, _ in results)
    report = json.loads(results[1][3])
    assert report["rows"] == 250_000 and report["rejected_rows"] == 1
    assert results[2][2].strip() == f"error: {tmp_path / 'missing.csv'}: no such file"
