"""Data errors surface before the first step, as one line naming the file: a validation file
without the label column used to fail after a full epoch with a 65-line traceback."""

import subprocess
import sys

import yaml


def _train(tmp_path, valid_header: str) -> subprocess.CompletedProcess:
    rows = [f"{i % 2},{i % 11},{i % 7}" for i in range(50_000)]
    (tmp_path / "train.csv").write_text("label,user,item\n" + "\n".join(rows) + "\n")
    (tmp_path / "valid.csv").write_text(valid_header + "\n1,2\n3,4\n")
    cfg = {
        "schema": {"labels": [{"name": "label"}],
                   "embeddings": [{"name": "user"}, {"name": "item"}]},
        "data": {"train": str(tmp_path / "train.csv"), "valid": [str(tmp_path / "valid.csv")],
                 "batch_size": 64},
        "model": {"name": "deepfm"},
        "train": {"epochs": 3},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "streamrec", "train", str(tmp_path / "job.yaml"), "--out",
         str(tmp_path / "run"), "-q"], capture_output=True, text=True, timeout=300,
    )


def test_a_validation_file_without_the_label_fails_before_training(tmp_path):
    done = _train(tmp_path, "user,item")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "valid.csv: no column(s) label" in lines[0]
    assert not (tmp_path / "run" / "metrics.csv").exists()  # not a single step was trained


def test_a_flag_is_validated_like_the_config_key_it_sets(tmp_path):
    """`train --epochs 0` was accepted (assigned to the config unchecked) where `--set
    train.epochs=0` was refused."""
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    epochs = subprocess.run(
        [sys.executable, "-m", "streamrec", "train", str(repo / "examples/ml100k_deepfm.yaml"),
         "--epochs", "0", "--out", str(tmp_path / "run"), "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert epochs.returncode == 2 and "train.epochs" in epochs.stderr, epochs.stderr
    assert not (tmp_path / "run" / "model").exists()

