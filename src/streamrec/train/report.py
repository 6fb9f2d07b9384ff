"""`streamrec report`: a run's curves from its metrics.csv, as PNG — batch training (running train
loss/AUC, validation loss/AUC per epoch), two-tower (softmax loss) and online runs (windowed
log loss / AUC as events are trained). Titled with the model and the config's name."""

from __future__ import annotations

import csv
import json
from pathlib import Path

_X = "samples"


def _title(run_dir: Path) -> str:
    """"model — config name" from the run's model or checkpoint manifest; else the folder."""
    for candidate in ("model", "checkpoint/latest", "checkpoint"):
        manifest = run_dir / candidate / "manifest.json"
        try:
            config = json.loads(manifest.read_text())["config"]
            return f"{config['model']['name']} — {config.get('name') or run_dir.name}"
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return run_dir.name


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves (`curves_figure`) to a PNG: `out`, default RUN/curves.png."""
    import matplotlib.pyplot as plt

    fig = curves_figure(run_dir)
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def curves_figure(run_dir: str | Path):  # -> matplotlib.figure.Figure
    """Loss (left) and AUC (right) against samples: training (running), validation per
    epoch, online (windowed) — whichever the run's metrics.csv holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no metrics.csv — is this a run directory of `train` or `online`?"
        )
    with path.open() as fh:
        rows = list(csv.DictReader(fh))

    def series(phase: str, key: str) -> tuple[list[float], list[float]]:
        pts = []
        for r in rows:
            # runs written before the column was named `phase` call it `kind`
            if r.get("phase", r.get("kind")) != phase:
                continue
            try:
                pts.append((float(r[_X]), float(r[key])))
            except (KeyError, TypeError, ValueError):
                continue  # empty, or the half row of a killed process
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 4))
    curves = [
        (ax_loss, "train", "loss", "-", "train loss (running)"),
        (ax_loss, "valid", "logloss", "o-", "validation log loss"),
        (ax_loss, "online", "logloss", "-", "online log loss (windowed, progressive)"),
        (ax_auc, "train", "auc", "-", "train AUC (running)"),
        (ax_auc, "valid", "auc", "o-", "validation AUC"),
        (ax_auc, "online", "auc", "-", "online AUC (windowed, progressive)"),
    ]
    for ax, phase, key, style, label in curves:
        x, y = series(phase, key)
        if x:  # a short run logs one training point: a line through it would not show
            ax.plot(x, y, style if len(x) > 1 else "o", label=label)
    ax_loss.set_ylabel("log loss")
    ax_auc.set_ylabel("AUC")
    for ax in (ax_loss, ax_auc):
        ax.set_xlabel(_X)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(_title(run_dir))
    fig.tight_layout()
    return fig
