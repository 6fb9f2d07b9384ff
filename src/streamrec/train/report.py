"""`streamrec report`: training and validation curves of a run, from its metrics.csv, as PNG."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.csv — is this a training run directory?")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))

    def series(phase: str, key: str) -> tuple[list[float], list[float]]:
        pts = [
            (float(r["samples"]), float(r[key]))
            for r in rows
            # runs written before the column was named `phase` call it `kind`
            if r.get("phase", r.get("kind")) == phase and r.get(key) not in ("", None)
        ]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(*series("train", "loss"), label="train loss (running)")
    ax_loss.set_xlabel("samples")
    ax_loss.set_ylabel("log loss")
    ax_loss.legend()
    ax_auc.plot(*series("train", "auc"), label="train AUC (running)", alpha=0.7)
    x, y = series("valid", "auc")
    ax_auc.plot(x, y, "o-", label="validation AUC")
    ax_auc.set_xlabel("samples")
    ax_auc.set_ylabel("AUC")
    ax_auc.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
