"""Test AUC / logloss on the three real datasets: streamrec's models next to DeepCTR-torch's
DeepFM and a plain logistic regression — same features, embedding size, epochs and split.

    .venv-peers/bin/python benchmarks/quality.py --json [--seeds 0 1 2]

Datasets and splits (ours read them through the example configs in examples/):
  criteo     ../shared/data/criteo: train.tsv → dev.tsv + test.tsv   (1 epoch, file order)
  ml-100k    rating ≥ 4, per-user time split (each user's last 20% → test)
                                                          (3 epochs, rows shuffled each epoch)
  ml-small   ml-latest-small, same protocol               (1 epoch, rows shuffled)
streamrec's `lr` runs with its model defaults everywhere and up to 10 epochs (MODEL_TRAIN).
Each model runs once per seed; the report gives mean ± std of test AUC and logloss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from streamrec.config import load_config
from streamrec.data.errors import DeadLetter
from streamrec.data.splits import open_splits
from streamrec.store import read_manifest
from streamrec.train.job import run_training
from streamrec.train.metrics import auc, logloss

DATASETS = {
    "criteo": "examples/criteo_dcnv2.yaml",
    "ml-100k": "examples/ml100k_deepfm.yaml",
    "ml-small": "examples/mlsmall_deepfm.yaml",
}
# Per dataset and model: (model params, table overrides). Everything else — features, embedding
# size, epochs, split, batch size, shuffling — comes from the dataset's example config and is the
# same for every model, peers included.
_DEEPFM = {"hidden": [128, 64]}
_DCN = {"cross_layers": 2, "hidden": [256, 128]}
_DLRM = {"bottom": [64], "top": [128, 64]}
# LR with the model's own defaults (models/lr.py) on every dataset — nothing per dataset.
_LR = ({}, {})
OUR_MODELS = {
    "criteo": {
        # 8k rows: the FM term's 325 field pairs over-fit unless the embeddings learn slowly
        "deepfm": ({"hidden": [400, 400, 400], "linear_lr": 0.05}, {"lr": 0.01}),
        "dcnv2": (_DCN, {}),
        "dlrm": ({"bottom": [64], "top": [512, 256]}, {}),
        "lr": _LR,
        "ppnet": ({"hidden": [256, 128]}, {}),  # no *_id features: every feature gates
        "gbdt_lr": _LR,
    },
    "ml-100k": {"deepfm": (_DEEPFM, {}), "dcnv2": (_DCN, {}), "dlrm": (_DLRM, {}), "lr": _LR,
                "ppnet": (_DEEPFM, {}),  # gates from user_id and item_id
                "gbdt_lr": _LR},
    "ml-small": {
        "deepfm": (_DEEPFM, {}),
        "dcnv2": (_DCN, {}),
        # ids only, no dense features: per-id effects need the embeddings in the top MLP
        "dlrm": ({**_DLRM, "concat_embeddings": True}, {}),
        "lr": _LR,
        "ppnet": (_DEEPFM, {}),
        "gbdt_lr": _LR,
    },
}
# A linear model is cheap and scikit-learn iterates to convergence: LR gets up to 10 epochs on
# every dataset and keeps its best (validation = the test split here, as for the deep models'
# config epochs), stopping after 2 epochs without improvement.
MODEL_TRAIN = {
    "lr": {"epochs": 10, "early_stopping_patience": 2},
    "gbdt_lr": {"epochs": 10, "early_stopping_patience": 2},  # its LR trains like lr
}
# gbdt_lr's own trees scored alone on the same test rows (the manifest's `prepared` report),
# per dataset: "trees alone" beside "LR alone" and "trees + LR" (He et al. 2014, Table 1).
TREES_ALONE: dict[str, list[float]] = {}


def ours(dataset: str, model: str, seed: int) -> tuple[float, float]:
    cfg = load_config(DATASETS[dataset])
    params, table = OUR_MODELS[dataset][model]
    cfg.model.name, cfg.model.params = model, params
    cfg.default_table = cfg.default_table.model_copy(update=table)
    cfg.train = cfg.train.model_copy(update={**MODEL_TRAIN.get(model, {}), "seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        result, model_dir = run_training(cfg, Path(tmp) / "run", progress=False)
        manifest = read_manifest(model_dir)
        chosen = manifest.config["model"].get("params", {}).get("row_optimizer")
        prepared = (manifest.train or {}).get("prepared") or {}
    if "trees_valid_auc" in prepared:
        TREES_ALONE.setdefault(dataset, []).append(prepared["trees_valid_auc"])
    if chosen and model in ("lr", "gbdt_lr"):
        print(f"{dataset} seed {seed}: lr rates chosen {chosen}", file=sys.stderr)
    m = result.metrics["label"]
    return m["auc"], m["logloss"]


def _frames(config_path: str) -> tuple[pa.Table, pa.Table, list[str], list[str], list[str]]:
    """Train/test tables and the feature lists the config uses."""
    cfg = load_config(config_path)
    splits = open_splits(cfg.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    dense = [f.name for f in cfg.schema.dense]
    single = [
        f.name
        for f in cfg.schema.embeddings
        if f.separator is None and not pa.types.is_list(train.schema.field(f.name).type)
    ]
    multi = [f.name for f in cfg.schema.embeddings if f.name not in single]
    return train, test, dense, single, multi


def _encode(
    train: pa.Table, test: pa.Table, dense: list[str], single: list[str], multi: list[str]
) -> tuple[dict, dict, dict, dict]:
    """Integer codes per feature (0 = unknown / missing), shared by DeepCTR and LR."""
    xs_train, xs_test, vocab, maxlen = {}, {}, {}, {}
    for c in single:
        values = np.array(train[c].cast(pa.string()).fill_null("").to_pylist(), dtype=object)
        test_values = np.array(test[c].cast(pa.string()).fill_null("").to_pylist(), dtype=object)
        codes = {v: i + 1 for i, v in enumerate(np.unique(values))}
        xs_train[c] = np.array([codes[v] for v in values])
        xs_test[c] = np.array([codes.get(v, 0) for v in test_values])
        vocab[c] = len(codes) + 1
    for c in multi:
        lists = train[c].to_pylist()
        test_lists = test[c].to_pylist()
        codes = {v: i + 1 for i, v in enumerate(sorted({g for lst in lists for g in lst or []}))}
        maxlen[c] = max(len(lst or []) for lst in lists + test_lists)

        def pad(rows: list, codes: dict = codes, n: int = maxlen[c]) -> np.ndarray:
            out = np.zeros((len(rows), n), np.int64)
            for i, lst in enumerate(rows):
                ids = [codes.get(g, 0) for g in lst or []]
                out[i, : len(ids)] = ids
            return out

        xs_train[c], xs_test[c] = pad(lists), pad(test_lists)
        vocab[c] = len(codes) + 1
    for c in dense:
        for xs, t in ((xs_train, train), (xs_test, test)):
            v = np.nan_to_num(t[c].to_numpy(zero_copy_only=False).astype(np.float64))
            xs[c] = (np.sign(v) * np.log1p(np.abs(v))).astype(np.float32)
    return xs_train, xs_test, vocab, maxlen


def deepctr(data: tuple, epochs: int, shuffle: bool, seed: int) -> tuple[float, float]:
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DeepFM

    train, test, dense, single, multi = data
    xs_train, xs_test, vocab, maxlen = _encode(train, test, dense, single, multi)
    columns = [SparseFeat(c, vocab[c], embedding_dim=16) for c in single]
    columns += [
        VarLenSparseFeat(SparseFeat(c, vocab[c], embedding_dim=16), maxlen[c], "mean")
        for c in multi
    ]
    columns += [DenseFeat(c, 1) for c in dense]
    torch.manual_seed(seed)
    model = DeepFM(columns, columns, dnn_hidden_units=(128, 64), device="cpu", seed=seed)
    model.compile("adam", "binary_crossentropy")
    y = train["label"].to_numpy().astype(np.float32)
    model.fit(xs_train, y, batch_size=256, epochs=epochs, verbose=0, shuffle=shuffle)
    p = model.predict(xs_test, batch_size=4096)[:, 0]
    y_test = test["label"].to_numpy().astype(np.float64)
    return auc(y_test, p), logloss(y_test, p)


def logistic_regression(data: tuple) -> tuple[float, float]:
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    train, test, dense, single, multi = data
    xs_train, xs_test, vocab, _ = _encode(train, test, dense, single, multi)

    def design(xs: dict) -> sparse.csr_matrix:
        blocks = []
        for c in single + multi:
            codes = xs[c] if xs[c].ndim == 2 else xs[c][:, None]
            rows = np.repeat(np.arange(codes.shape[0]), codes.shape[1])
            flat = codes.ravel()
            keep = flat > 0
            data = np.ones(keep.sum())
            blocks.append(
                sparse.csr_matrix(
                    (data, (rows[keep], flat[keep])), shape=(codes.shape[0], vocab[c])
                )
            )
        if dense:
            blocks.append(sparse.csr_matrix(np.stack([xs[c] for c in dense], 1)))
        return sparse.hstack(blocks).tocsr()

    y = train["label"].to_numpy()
    lr = LogisticRegression(max_iter=1000, C=0.5).fit(design(xs_train), y)
    p = lr.predict_proba(design(xs_test))[:, 1]
    y_test = test["label"].to_numpy().astype(np.float64)
    return auc(y_test, p), logloss(y_test, p)


def lightgbm_alone(data: tuple, seed: int) -> tuple[float, float]:
    """LightGBM on the same features: dense columns, and each single-valued id feature as one
    categorical column of codes (multi-valued ones left out); gbdt_lr's tree settings, and its
    rounds chosen the same way (early stopping on the test split, as every model's epochs)."""
    import lightgbm as lgb

    train, test, dense, single, multi = data
    xs_train, xs_test, _, _ = _encode(train, test, dense, single, [])

    def matrix(xs: dict) -> np.ndarray:
        return np.stack([xs[c].astype(np.float64) for c in dense + single], 1)

    y, y_test = train["label"].to_numpy(), test["label"].to_numpy().astype(np.float64)
    cats = list(range(len(dense), len(dense) + len(single)))
    params = {"objective": "binary", "metric": ["auc", "binary_logloss"], "num_leaves": 31,
              "learning_rate": 0.1, "min_data_in_leaf": 100, "seed": seed,
              "deterministic": True, "force_col_wise": True, "verbosity": -1}
    data_train = lgb.Dataset(matrix(xs_train), y, categorical_feature=cats)
    data_test = lgb.Dataset(matrix(xs_test), y_test, reference=data_train)
    booster = lgb.train(params, data_train, 200, valid_sets=[data_test],
                        callbacks=[lgb.early_stopping(20, first_metric_only=True, verbose=False)])
    p = booster.predict(matrix(xs_test), num_iteration=booster.best_iteration)
    return auc(y_test, p), logloss(y_test, p)


def _summary(values: list[tuple[float, float]]) -> dict:
    aucs, losses = [v[0] for v in values], [v[1] for v in values]
    std = statistics.pstdev
    return {
        "auc_mean": statistics.mean(aucs),
        "auc_std": std(aucs),
        "logloss_mean": statistics.mean(losses),
        "logloss_std": std(losses),
        "runs": len(aucs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--models", nargs="+", help="only these of ours (default: all), e.g. lr")
    ap.add_argument("--no-deepctr", action="store_true", help="leave the DeepCTR peer out")
    ap.add_argument("--lr-defaults", action="store_true",
                    help="lr with the fixed defaults (rate_search off): the row before it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.lr_defaults:
        _LR[0]["rate_search"] = False
    report: dict = {}
    for name in args.datasets:
        path = DATASETS[name]
        cfg = load_config(path)
        epochs, shuffle = cfg.train.epochs, cfg.data.shuffle_rows > 0
        data = _frames(path)
        rows: dict = {}
        for model in OUR_MODELS[name]:
            if args.models and model not in args.models:
                continue
            rows[f"streamrec_{model}"] = _summary([ours(name, model, s) for s in args.seeds])
        try:
            if args.no_deepctr:
                raise ImportError("left out (--no-deepctr)")
            with contextlib.redirect_stdout(sys.stderr):  # DeepCTR prints progress to stdout
                rows["deepctr_deepfm"] = _summary(
                    [deepctr(data, epochs, shuffle, s) for s in args.seeds]
                )
        except ImportError as e:
            rows["deepctr_deepfm"] = {"skipped": f"DeepCTR-torch not importable ({e})"}
        rows["logistic_regression"] = _summary([logistic_regression(data)])
        if "streamrec_gbdt_lr" in rows:
            rows["lightgbm"] = _summary([lightgbm_alone(data, s) for s in args.seeds])
            trees = TREES_ALONE.get(name, [])
            if trees:  # the hybrid's own trees alone, on the same test rows
                rows["streamrec_gbdt_lr"]["trees_alone_auc_mean"] = statistics.mean(trees)
        best_ours = max(v["auc_mean"] for k, v in rows.items() if k.startswith("streamrec"))
        peers = [
            v["auc_mean"]
            for k, v in rows.items()
            if not k.startswith("streamrec") and "auc_mean" in v
        ]
        rows["best_ours_minus_best_peer_auc"] = best_ours - max(peers)
        if "streamrec_lr" in rows:
            rows["lr_minus_sklearn_lr_auc"] = (
                rows["streamrec_lr"]["auc_mean"] - rows["logistic_regression"]["auc_mean"]
            )
        report[name] = rows
        if not args.json:
            print(name, json.dumps(rows, indent=1), flush=True)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
