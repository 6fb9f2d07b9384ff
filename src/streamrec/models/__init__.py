"""Ranking models, one file each; `build_model` turns a config into one."""

from streamrec.models.base import RankingModel
from streamrec.models.registry import MODELS, build_model, register_model

__all__ = ["MODELS", "RankingModel", "build_model", "register_model"]
