"""What one server is asked to serve, as one typed, validated object.

`streamrec serve` maps its flags onto a `ServerOptions`, and `create_app` reads nothing else, so
a value the CLI cannot express cannot reach the server either. Changes to the model's own
`serving:` section go through `ServerOptions.settings`, which re-validates the merged section
like the config file: `max_batch_rows=0`, an unknown key or a misspelt nested key is refused
with pydantic's message, never kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamrec.config import ServingConfig
from streamrec.serving.variants import VariantOptions


class ServerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    model_dir: Path = Field(description="the ranking model: a model or training run directory")
    deltas_dir: Path | None = Field(
        None, description="deltas to apply while serving (default: beside the model)"
    )
    watch: bool = Field(True, description="follow deltas and new models; off: a fixed model")
    token: str | None = Field(None, description="bearer token every endpoint but health needs")
    guard_health: bool = Field(False, description="the token guards /healthz and /readyz too")
    retriever_dir: Path | None = Field(None, description="a two-tower model: /v1/recommend")
    retriever_deltas: Path | None = Field(
        None, description="the retriever's deltas (default: beside the retriever's model)"
    )
    retrieve: int | None = Field(
        None, ge=1, description="items /v1/recommend retrieves (default: retrieval.candidates)"
    )
    preranker_dir: Path | None = Field(None, description="a pre-ranking model (e.g. cold)")
    prerank_keep: int = Field(100, ge=1, description="items the pre-ranker passes on (K2)")
    variants: VariantOptions | None = Field(
        None, description="other ranking models served beside this one (serving/variants.py)"
    )
    serving: dict[str, Any] = Field(
        default_factory=dict,
        description="changes to the model's `serving:` section; nested sections "
        "(compute_allocation, feedback) change key by key",
    )

    @model_validator(mode="after")
    def _stages_fit(self) -> ServerOptions:
        if self.preranker_dir is not None and self.retriever_dir is None:
            raise ValueError("a pre-ranker sits between retrieval and ranking: add --retriever")
        if self.retriever_deltas is not None and self.retriever_dir is None:
            raise ValueError("--retriever-deltas are a retriever's: add --retriever")
        return self

    def settings(self, model_serving: ServingConfig) -> ServingConfig:
        """The model's `serving:` section with this server's changes, validated as a whole."""
        merged = _merge(model_serving.model_dump(), self.serving)
        settings = ServingConfig.model_validate(merged)
        if settings.compute_allocation.enabled and self.retriever_dir is None:
            raise ValueError("compute allocation sizes /v1/recommend's stages: add --retriever")
        return settings


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied; a dict in both is merged key by key, not replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
