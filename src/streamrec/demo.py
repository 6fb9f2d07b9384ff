"""`streamrec demo`: the whole system on MovieLens-100k, end to end, in a few minutes.

Step by step, with progress on stderr and one JSON object (with --json) or a summary at the end:
  1. load MovieLens-100k (cache, else the recbole wheel) and split each user's history by time;
  2. train the DeepFM ranker on the first 80% and evaluate it on the rest;
  3. reload the saved model directory (checksums verified) and score the test split again.
"""

from __future__ import annotations

import time
from pathlib import Path

from streamrec.config import load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ml100k_deepfm.yaml"


def _config():  # noqa: ANN202
    if EXAMPLE.exists():
        return load_config(EXAMPLE)
    return parse_config(
        {  # installed without the examples folder: the same job inline
            "name": "ml100k_deepfm",
            "schema": {
                "labels": [{"name": "label"}],
                "group_id": "user_id",
                "timestamp": "timestamp",
                "embeddings": [
                    {"name": n}
                    for n in ("user_id", "item_id", "age", "gender", "occupation", "zip_code")
                ]
                + [{"name": "genres", "pooling": "mean"}],
            },
            "default_table": {"dim": 16, "optimizer": "adagrad", "lr": 0.05},
            "data": {"format": "ml-100k", "split": "per_user_time", "batch_size": 256},
            "model": {"name": "deepfm", "params": {"hidden": [128, 64]}},
            "train": {"epochs": 3},
        }
    )


def run_demo(workdir: str | Path, progress: bool = True, log=print) -> dict:  # noqa: ANN001
    from streamrec.train.job import evaluate_model_dir, run_training

    workdir = Path(workdir)
    started = time.perf_counter()
    config = _config()
    log("[1/3] MovieLens-100k: per-user time split (last 20% of each user's ratings → test)")
    log(f"[2/3] training {config.model.name} for {config.train.epochs} epochs …")
    result, model_dir = run_training(config, workdir / "ranker", progress=progress)
    m = result.metrics["label"]
    log(
        f"      test AUC {m['auc']:.4f}  GAUC {m.get('gauc', float('nan')):.4f}  "
        f"logloss {m['logloss']:.4f}  ({result.samples_per_s:,.0f} samples/s)"
    )
    log(f"[3/3] reloading {model_dir} and scoring the test split again …")
    again = evaluate_model_dir(model_dir)["metrics"]["label"]
    log(f"      reloaded model AUC {again['auc']:.4f}")
    return {
        "ranker": {
            "metrics": result.metrics,
            "samples_per_s": result.samples_per_s,
            "model_dir": str(model_dir),
            "reloaded_auc": again["auc"],
        },
        "seconds": time.perf_counter() - started,
    }
