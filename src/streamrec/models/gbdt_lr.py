"""GBDT + LR (He et al., "Practical Lessons from Predicting Clicks on Ads at Facebook", KDD 2014,
§3.1): boosted trees, fitted in batch, turn each row into one leaf per tree; every leaf is an id
in a dynamic table of a logistic regression, which trains — offline, then on the stream — like
`lr`.

The leaves are mean-pooled (each leaf reads 1/T): with one-hot leaves every example moves T
weights at the per-coordinate rate, and the logit T times as far as one id's — on a few
thousand rows per leaf that swings the model (Criteo sample: 0.67 AUC one-hot, 0.73 mean).

    X      = [dense columns, one frequency code per single-valued id feature]     [B, D + C]
    leaf_t = the leaf row b reaches in tree t (LightGBM)                          [B, T]
    logit  = bias + 1/T Σ_t w_leaf[t, leaf_t]  (+ `lr`'s per-id and dense terms: with_raw)

Why: trees find the crosses and thresholds of dense features that a linear model cannot, and a
linear model over their leaves follows the stream one cheap update at a time. The trees are
the slow part: retrained daily in the paper, refitted here by every fresh `streamrec train`
(`--warm-start` and `streamrec online` keep the trees the model was trained with, since its
leaf weights mean those trees).

The trees see ids through a small vocabulary per single-valued id feature (the
`category_levels` most frequent ids with at least `min_category_count` rows; any other id one
shared code; no id: missing), since a 64-bit hash is not a number to split on. Multi-valued and
sequence features reach only the raw LR term. The trees learn the first task; every task's
logit adds the same leaf weights, as `lr`'s per-id weights are shared by the tasks.

What the trees learnt (LightGBM's model text, the vocabularies) is one uint8 buffer, `trees`,
so it travels in `state_dict()`, model directories, checkpoints and dense deltas with nothing
else to copy. An unfitted model refuses to score: `streamrec train` fits it (`prepare`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from streamrec.batch import Batch, JaggedIds
from streamrec.config import TableConfig
from streamrec.embedding.collection import EmbeddingCollection
from streamrec.embedding.tiered import build_table
from streamrec.models.base import RankingModel
from streamrec.models.layers import LinearTerm, id_variance
from streamrec.models.lr import row_settings
from streamrec.schema import EmbeddingFeature, Schema

LEAF_FEATURE = "gbdt_leaf"
LEAF_TABLE = "gbdt_leaf@linear"
FORMAT = 1
EARLY_STOPPING_ROUNDS = 20


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise RuntimeError(
            "model gbdt_lr needs LightGBM: pip install 'streamrec[trees]'"
        ) from None
    return lightgbm


class TreeInputs:
    """How a Batch becomes the trees' input matrix: its dense columns, then one float code per
    single-valued id feature (0 … K−1 for the feature's K most frequent ids, K for any other
    id, NaN for none). A row that carries several ids of such a feature reads its first."""

    def __init__(self, dense_width: int, vocabularies: Mapping[str, np.ndarray]) -> None:
        self.dense_width = dense_width
        self.vocabularies = {f: np.asarray(v, np.int64) for f, v in vocabularies.items()}
        self._sorted = {}
        for feature, ids in self.vocabularies.items():
            order = np.argsort(ids, kind="stable")
            self._sorted[feature] = (ids[order], order.astype(np.float32))

    @property
    def width(self) -> int:
        return self.dense_width + len(self.vocabularies)

    @property
    def categorical_columns(self) -> list[int]:
        return list(range(self.dense_width, self.width))

    def matrix(self, batch: Batch) -> np.ndarray:
        """float32 [B, width]."""
        out = np.empty((batch.size, self.width), np.float32)
        out[:, : self.dense_width] = batch.dense.detach().float().cpu().numpy()
        for j, feature in enumerate(self.vocabularies):
            ids, present = first_ids(batch.sparse[feature])
            out[:, self.dense_width + j] = self.codes(feature, ids, present)
        return out

    def codes(self, feature: str, ids: np.ndarray, present: np.ndarray) -> np.ndarray:
        keys, codes = self._sorted[feature]
        out = np.full(ids.shape, float(keys.size), np.float32)
        if keys.size:
            at = np.minimum(np.searchsorted(keys, ids), keys.size - 1)
            known = keys[at] == ids
            out[known] = codes[at[known]]
        out[~present] = np.nan
        return out

    @staticmethod
    def fit(
        dense_width: int,
        ids: Mapping[str, tuple[np.ndarray, np.ndarray]],
        levels: int,
        min_count: int,
    ) -> TreeInputs:
        """Vocabularies from each feature's (first ids, present) over the fitting rows."""
        vocabularies = {}
        for feature, (values, present) in ids.items():
            unique, counts = np.unique(values[present], return_counts=True)
            keep = counts >= min_count
            unique, counts = unique[keep], counts[keep]
            order = np.lexsort((unique, -counts))[:levels]  # most frequent first, ties by id
            vocabularies[feature] = unique[order]
        return TreeInputs(dense_width, vocabularies)


def first_ids(ids: JaggedIds) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [B] each row's first id (0 where it has none), bool [B] whether it has one)."""
    lengths = ids.lengths().numpy()
    present = lengths > 0
    first = np.zeros(lengths.shape, np.int64)
    values = ids.values.cpu().numpy()
    first[present] = values[ids.offsets[:-1].numpy()[present]]
    return first, present


class GBDTLR(RankingModel):
    def __init__(
        self,
        schema: Schema,
        tables: dict[str, TableConfig],
        trees: int = 200,
        num_leaves: int = 31,
        tree_lr: float = 0.1,
        min_data_in_leaf: int = 100,
        category_levels: int = 1000,
        min_category_count: int = 10,
        fit_rows: int = 1_000_000,
        with_raw: bool = True,
        row_optimizer: Mapping[str, Any] | None = None,
        linear_lr: float | None = None,
        dense_lr: float | None = 0.05,
        rate_search: bool = True,
    ) -> None:
        """trees: at most this many boosting rounds (fewer when the validation split stops
        improving for 20 rounds); num_leaves, tree_lr, min_data_in_leaf: LightGBM's
        num_leaves, learning_rate and min_data_in_leaf; category_levels, min_category_count:
        each id feature's vocabulary for the trees; fit_rows: the trees fit on at most this
        many training rows (the first ones read); with_raw: the LR also reads the raw ids and
        dense columns (`lr`'s terms) besides the leaves; row_optimizer, linear_lr, dense_lr,
        rate_search: as `lr`'s, for the leaf weights and the raw per-id weights alike."""
        super().__init__(schema, tables, with_embeddings=False)
        if trees < 1 or num_leaves < 2:
            raise ValueError("gbdt_lr needs trees >= 1 and num_leaves >= 2")
        self.tree_params = {
            "trees": trees,
            "num_leaves": num_leaves,
            "tree_lr": tree_lr,
            "min_data_in_leaf": min_data_in_leaf,
            "category_levels": category_levels,
            "min_category_count": min_category_count,
            "fit_rows": fit_rows,
        }
        settings = row_settings(row_optimizer, linear_lr)
        self.linear = LinearTerm(schema, tables, self.num_tasks, settings) if with_raw else None
        self.bias = None if with_raw else nn.Parameter(torch.zeros(self.num_tasks))
        leaf_settings = TableConfig.model_validate(settings | {"dim": 1, "init_scale": 0.0})
        leaf_schema = Schema(
            embeddings=[
                EmbeddingFeature(
                    name=LEAF_FEATURE, table=LEAF_TABLE, kind="int", missing="empty",
                    pooling="mean",
                )
            ]
        )
        self.leaves = EmbeddingCollection(
            leaf_schema, {LEAF_TABLE: build_table(leaf_settings, name=LEAF_TABLE)}
        )
        self.dense_lr = dense_lr
        self.register_buffer("trees", torch.zeros(0, dtype=torch.uint8))
        self._booster: Any = None
        self._inputs: TreeInputs | None = None
        self._stride = num_leaves
        self.fit_report: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting the trees

    @property
    def prepared(self) -> bool:
        return self._booster is not None

    def prepare(
        self,
        train: Callable[[], Iterable[Batch]],
        valid: Callable[[], Iterable[Batch]] | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Fit the trees on the first `fit_rows` training rows (label: the first task), with
        early stopping on `valid` when given. → what was fitted (rows, trees, validation AUC)."""
        lgb = _lightgbm()
        p = self.tree_params
        features = self._tree_features()
        x_parts, y_parts, id_parts = [], [], {f: ([], []) for f in features}
        rows = 0
        for batch in train():
            take = min(batch.size, p["fit_rows"] - rows)
            if take <= 0:
                break
            part = batch.slice(0, take) if take < batch.size else batch
            x_parts.append(part.dense.float().numpy())
            y_parts.append(part.labels[:, 0].numpy())
            for f in features:
                values, present = first_ids(part.sparse[f])
                id_parts[f][0].append(values)
                id_parts[f][1].append(present)
            rows += take
        if rows == 0:
            raise ValueError("gbdt_lr: no training rows to fit its trees on")
        ids = {f: (np.concatenate(v), np.concatenate(m)) for f, (v, m) in id_parts.items()}
        inputs = TreeInputs.fit(
            self.dense_width, ids, p["category_levels"], p["min_category_count"]
        )
        x = np.empty((rows, inputs.width), np.float32)
        x[:, : self.dense_width] = np.concatenate(x_parts)
        for j, f in enumerate(features):
            x[:, self.dense_width + j] = inputs.codes(f, *ids[f])
        y = np.concatenate(y_parts)
        params = {
            "objective": "binary",
            "metric": ["auc", "binary_logloss"],  # rounds stop on the first
            "num_leaves": p["num_leaves"],
            "learning_rate": p["tree_lr"],
            "min_data_in_leaf": p["min_data_in_leaf"],
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": torch.get_num_threads(),
            "verbosity": -1,
        }
        cats = inputs.categorical_columns
        data = lgb.Dataset(x, y, categorical_feature=cats, free_raw_data=True)
        sets, callbacks = [], []
        vx, vy = [], []
        for batch in valid() if valid is not None else ():
            vx.append(inputs.matrix(batch))
            vy.append(batch.labels[:, 0].numpy())
        valid_rows = sum(len(v) for v in vy)
        if valid_rows:
            vx, vy = np.concatenate(vx), np.concatenate(vy)
            sets = [lgb.Dataset(vx, vy, reference=data)]
            callbacks = [
                lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)
            ]
        booster = lgb.train(
            params, data, num_boost_round=p["trees"], valid_sets=sets, callbacks=callbacks
        )
        best = booster.best_score
        booster = lgb.Booster(model_str=booster.model_to_string())  # the best round's trees
        report = {
            "rows": rows,
            "trees": booster.num_trees(),
            "features": {"dense": self.dense_width, "ids": features},
            "valid_rows": valid_rows,
        }
        if valid_rows:  # the trees alone, on the rows that chose their number
            report["trees_valid_auc"] = float(best["valid_0"]["auc"])
        self._store(booster, inputs, report)
        return report

    def _tree_features(self) -> list[str]:
        """The id features the trees read: one id per row (no sequence, no separator, no list
        input kind)."""
        return [
            f.name
            for f in self.schema.embeddings
            if f.max_length is None
            and f.separator is None
            and not (f.kind or "").startswith("list")
        ]

    def _store(self, booster: Any, inputs: TreeInputs, report: dict[str, Any]) -> None:
        bundle = {
            "format": FORMAT,
            "booster": booster.model_to_string(),
            "dense_width": inputs.dense_width,
            "vocabularies": {f: v.tolist() for f, v in inputs.vocabularies.items()},
            "report": report,
        }
        data = np.frombuffer(json.dumps(bundle).encode(), np.uint8)
        self.trees = torch.from_numpy(data.copy())
        self._unpack()

    def _unpack(self) -> None:
        if self.trees.numel() == 0:
            self._booster = self._inputs = None
            return
        bundle = json.loads(self.trees.numpy().tobytes())
        if bundle.get("format") != FORMAT:
            raise ValueError(f"gbdt_lr: trees saved in format {bundle.get('format')}, not {FORMAT}")
        if bundle["dense_width"] != self.dense_width:
            raise ValueError(
                f"gbdt_lr: the trees read {bundle['dense_width']} dense columns, the schema "
                f"gives {self.dense_width}"
            )
        self._booster = _lightgbm().Booster(model_str=bundle["booster"])
        self._inputs = TreeInputs(bundle["dense_width"], bundle["vocabularies"])
        self.fit_report = bundle.get("report", {})

    def prepared_state(self) -> dict[str, torch.Tensor]:
        return {"trees": self.trees}

    def load_prepared_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.trees = state["trees"].clone()
        self._unpack()

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = f"{prefix}trees"
        incoming = state_dict.get(key)
        changed = incoming is not None and not torch.equal(incoming, self.trees)
        if changed:
            self.trees = torch.empty_like(incoming)  # its size is the saved model's
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if changed:
            try:
                self._unpack()
            except (ValueError, json.JSONDecodeError) as e:
                error_msgs.append(str(e))

    # ------------------------------------------------------------------ scoring

    def leaf_ids(self, batch: Batch) -> np.ndarray:
        """int64 [B, T]: tree t's leaf for each row, as a leaf-table id (t · num_leaves + leaf)."""
        booster, inputs = self._fitted()
        if batch.size == 0:  # LightGBM cannot predict no rows
            return np.zeros((0, booster.num_trees()), np.int64)
        leaves = booster.predict(inputs.matrix(batch), pred_leaf=True, num_threads=1)
        leaves = np.asarray(leaves, np.int64).reshape(batch.size, -1)
        return leaves + np.arange(leaves.shape[1], dtype=np.int64) * self._stride

    def tree_logits(self, batch: Batch) -> torch.Tensor:
        """[B]: the trees' own logit (LightGBM alone), for comparing with the hybrid."""
        booster, inputs = self._fitted()
        if batch.size == 0:
            return torch.zeros(0)
        raw = booster.predict(inputs.matrix(batch), raw_score=True, num_threads=1)
        return torch.from_numpy(np.asarray(raw, np.float32))

    def _fitted(self) -> tuple[Any, TreeInputs]:
        if self._booster is None or self._inputs is None:
            raise RuntimeError(
                "gbdt_lr has no trees yet: `streamrec train` fits them before the first step "
                "(online training and serving start from a trained gbdt_lr model)"
            )
        return self._booster, self._inputs

    def _leaf_batch(self, batch: Batch) -> tuple[Batch, int]:
        """(a Batch of one feature, LEAF_FEATURE: each row's T leaf ids; T)."""
        leaves = self.leaf_ids(batch)
        b, t = leaves.shape
        jagged = JaggedIds(
            torch.from_numpy(leaves.reshape(-1)),
            torch.arange(0, b * t + 1, max(t, 1), dtype=torch.int64)[: b + 1],
        )
        leaf_batch = Batch(
            batch.labels[:, :0], batch.dense[:, :0], {LEAF_FEATURE: jagged},
            timestamps=batch.timestamps,
        )
        return leaf_batch, t

    def forward(self, batch: Batch) -> torch.Tensor:
        leaf_batch, _ = self._leaf_batch(batch)
        emb = self.leaves(leaf_batch)
        leaf_mean = sum(g.sum(dim=1) for _, g in emb.groups)  # [B, 1]
        if self.linear is None:
            return self.bias.expand(batch.size, -1) + leaf_mean
        return self.linear(batch) + leaf_mean

    estimates_uncertainty = True

    @torch.no_grad()
    def uncertainty(self, batch: Batch) -> torch.Tensor:
        """[B]: the count-based standard deviation of the logit (`layers.id_variance`): the raw
        ids' terms, and each leaf's at 1/T (mean-pooled)."""
        leaf_batch, t = self._leaf_batch(batch)
        variance = id_variance(self.leaves, leaf_batch, 1.0 / max(t, 1))
        if self.linear is not None:
            variance = variance + self.linear.logit_variance(batch)
        return variance.sqrt()

    def dense_param_groups(self, dense_lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.parameters()), "lr": self.dense_lr or dense_lr}]
