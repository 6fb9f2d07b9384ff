"""Model names (as written in configs) → classes, and the one function that builds a model."""

from __future__ import annotations

import inspect

from streamrec.config import ConfigError, ModelConfig, TableConfig
from streamrec.models.base import RankingModel
from streamrec.models.cold import COLD
from streamrec.models.dcnv2 import DCNv2
from streamrec.models.deepfm import DeepFM
from streamrec.models.din import DIN
from streamrec.models.dlrm import DLRM
from streamrec.models.fm import FM
from streamrec.models.gbdt_lr import GBDTLR
from streamrec.models.lr import LR
from streamrec.models.mmoe import MMoE
from streamrec.models.ppnet import PPNet
from streamrec.models.two_tower import TwoTower
from streamrec.models.wide_deep import WideDeep
from streamrec.schema import Schema

MODELS: dict[str, type] = {
    "lr": LR,
    "gbdt_lr": GBDTLR,  # boosted trees' leaves as ids of an online LR (needs lightgbm)
    "fm": FM,
    "deepfm": DeepFM,
    "wide_deep": WideDeep,
    "dcnv2": DCNv2,
    "dlrm": DLRM,
    "din": DIN,
    "mmoe": MMoE,
    "ppnet": PPNet,  # per-layer gates from the user's and item's id embeddings
    "cold": COLD,  # pre-ranking: few features, an SE gate of learned importance
    "two_tower": TwoTower,  # retrieval; its job: streamrec.train.two_tower
}


def register_model(name: str, cls: type[RankingModel]) -> None:
    """Make a user-defined RankingModel subclass available to configs as `model.name`."""
    MODELS[name] = cls


def build_model(model: ModelConfig, schema: Schema, tables: dict[str, TableConfig]) -> RankingModel:
    if model.name not in MODELS:
        raise ConfigError(f"unknown model {model.name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[model.name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "schema", "tables"}
    unknown = set(model.params) - accepted
    if unknown:
        raise ConfigError(
            f"model {model.name!r} has no parameter(s) {sorted(unknown)}; "
            f"it takes {sorted(accepted)}"
        )
    keep_lists = {"crosses", "user_features", "item_features"}  # (dicts pass as they are)
    params = {
        k: tuple(v) if isinstance(v, list) and k not in keep_lists else v
        for k, v in model.params.items()
    }
    try:
        return cls(schema, tables, **params)
    except ValueError as e:
        raise ConfigError(f"model {model.name!r}: {e}") from None
