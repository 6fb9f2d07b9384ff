"""`streamrec predict`: one score per row in row order, an id column passed through, and the
same row scored the same from any file — column types come from the model, not the file."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model trained on a CSV whose `zip` ids are text ('04258293', 'A1…')."""
    tmp = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    n = 3000
    zips = [f"{z:08d}" if i % 3 else f"A{z}" for i, z in enumerate(rng.integers(0, 300, n))]
    rows = pa.table({
        "row_id": [f"r{i}" for i in range(n)],
        "user": rng.integers(0, 50, n),
        "zip": zips,
        "label": (rng.random(n) < 0.3).astype(int),
    })
    pacsv.write_csv(rows, tmp / "train.csv")
    cfg = {
        "schema": {"labels": [{"name": "label"}],
                   "embeddings": [{"name": "user"}, {"name": "zip"}]},
        "data": {"train": str(tmp / "train.csv"), "batch_size": 256},
        "model": {"name": "fm"},
        "train": {"epochs": 2},
    }
    (tmp / "job.yaml").write_text(yaml.safe_dump(cfg))
    done = _cli("train", str(tmp / "job.yaml"), "--out", str(tmp / "run"), "-q")
    assert done.returncode == 0, done.stderr
    return tmp


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamrec", *args], capture_output=True,
                          text=True, timeout=300)


def test_scores_every_row_in_order_with_the_id_column(model):
    out = model / "scores.parquet"
    done = _cli("predict", str(model / "run"), "--data", str(model / "train.csv"), "--out",
                str(out), "--id-column", "row_id", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    scores = pq.read_table(out)
    assert report["rows"] == scores.num_rows == 3000 and report["rows_per_s"] > 0
    assert scores.column_names == ["row_id", "score"]
    assert scores["row_id"].to_pylist() == [f"r{i}" for i in range(3000)]
    values = scores["score"].to_numpy()
    assert ((values > 0) & (values < 1)).all() and values.std() > 0


def test_the_same_rows_score_the_same_from_a_file_whose_ids_look_numeric(model):
    """'04258293' was text in training; a file holding only all-digit zips used to be read as
    int64 (fids of the numbers, not of the strings) and scored differently."""
    train = pacsv.read_csv(model / "train.csv", convert_options=pacsv.ConvertOptions(
        column_types={"zip": pa.string()}))
    digits = [i for i, z in enumerate(train["zip"].to_pylist()) if z.isdigit()][:50]
    with open(model / "digits.csv", "w") as fh:  # written by hand, as a user's file would be
        fh.write("row_id,user,zip,label\n")
        for r in train.take(digits).to_pylist():
            fh.write(f"{r['row_id']},{r['user']},{r['zip']},{r['label']}\n")
    scores = {}
    for name in ("train", "digits"):
        out = model / f"scores_{name}.csv"
        done = _cli("predict", str(model / "run"), "--data", str(model / f"{name}.csv"),
                    "--out", str(out), "--id-column", "row_id")
        assert done.returncode == 0, done.stderr
        table = pacsv.read_csv(out)
        scores[name] = dict(zip(table["row_id"].to_pylist(), table["score"].to_pylist(),
                                strict=True))
    assert len(scores["digits"]) == 50
    # Equal to float rounding: a wrong fid scores an unseen id (differences ~1e-2), while the
    # same row in a 50-row and a 3,000-row batch may differ in the last bit (the kernels'
    # reduction order depends on the batch's rows: MKL's blocking, oneDNN from 512 rows).
    for row_id, score in scores["digits"].items():
        assert score == pytest.approx(scores["train"][row_id], rel=1e-6, abs=1e-7), row_id
    evaluated = [json.loads(_cli("eval", str(model / "run"), "--data", str(model / f), "--json")
                            .stdout)["metrics"]["label"]["count"] for f in ("digits.csv",)]
    assert evaluated == [50]


def test_bad_requests_are_one_line_errors(model):
    wrong_suffix = _cli("predict", str(model / "run"), "--data", str(model / "train.csv"),
                        "--out", str(model / "scores.txt"))
    assert wrong_suffix.returncode == 2 and "scores.txt" in wrong_suffix.stderr
    no_id = _cli("predict", str(model / "run"), "--data", str(model / "train.csv"), "--out",
                 str(model / "x.csv"), "--id-column", "nope")
    assert no_id.returncode == 2 and "no column 'nope'" in no_id.stderr
    assert not (model / "x.csv").exists()  # nothing half-written under the name
    no_folder = _cli("predict", str(model / "run"), "--data", str(model / "train.csv"),
                     "--out", str(model / "missing" / "x.csv"))
    assert no_folder.returncode == 2 and "missing does not exist" in no_folder.stderr
    for done in (wrong_suffix, no_id, no_folder):
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def _on_a_terminal(*args: str) -> str:
    """What `streamrec ARGS` writes to a terminal (a pseudo-terminal of 120 × 40)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "streamrec", *args],
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=300)
    os.close(leader)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_eval_and_predict_show_progress_on_a_terminal_and_never_in_a_log(model):
    scores = model / "progress.parquet"
    predict = ("predict", str(model / "run"), "--data", str(model / "train.csv"), "--out",
               str(scores))
    assert "scoring" in _on_a_terminal(*predict)
    as_parquet = model / "train.parquet"  # a footer with the row count: a total and an ETA
    pq.write_table(pacsv.read_csv(model / "train.csv"), as_parquet)
    shown = _on_a_terminal("predict", str(model / "run"), "--data", str(as_parquet), "--out",
                           str(model / "progress2.parquet"))
    assert "scoring" in shown and "/3000" in shown
    assert "evaluating" in _on_a_terminal("eval", str(model / "run"), "--data",
                                         str(model / "train.csv"))
    logged = _cli(*predict)  # output captured, as a log or CI would: no bar
    assert logged.returncode == 0 and "scoring" not in logged.stderr + logged.stdout


def test_train_shows_a_bar_with_a_total_from_its_second_epoch(model, tmp_path):
    """The first epoch's rows are unknown until read (a CSV has no row count); from then on
    the bar has a total, so a percentage and an ETA."""
    shown = _on_a_terminal("train", str(model / "job.yaml"), "--out", str(tmp_path / "run"))
    assert "epoch 1" in shown and "epoch 2" in shown
    second = shown[shown.index("epoch 2"):]
    assert "/3000" in second and "%" in second, second[:500]
    assert "/3000" not in shown[:shown.index("epoch 2")]


def test_a_headerless_file_gets_an_error_that_names_the_fix(model, tmp_path):
    """A Criteo-like file read as CSV/TSV: its first line is data, so the "column names" are
    values — said in one line with the --format to use, never a traceback."""
    rows = "\n".join(f"{i % 2}\t{i % 5}\t\t{i % 3}\tab{i % 7}" for i in range(50)) + "\n"
    (tmp_path / "headerless.tsv").write_text(rows)
    done = _cli("predict", str(model / "run"), "--data", str(tmp_path / "headerless.tsv"),
                "--out", str(tmp_path / "s.parquet"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "headerless.tsv:1" in done.stderr and "--format criteo" in done.stderr

    (tmp_path / "values.csv").write_text("7,0.5,x\n" + "8,0.25,y\n" * 20)  # names unique
    done = _cli("predict", str(model / "run"), "--data", str(tmp_path / "values.csv"),
                "--out", str(tmp_path / "s.parquet"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no header row" in done.stderr and "--format criteo" in done.stderr
