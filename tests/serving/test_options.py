"""ServerOptions: the one typed door from `serve`'s flags to the server."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streamrec.config import ServingConfig
from streamrec.serving.options import ServerOptions
from streamrec.serving.variants import variant_options

MODEL = Path("runs/model")


def test_changes_merge_into_the_models_section_key_by_key() -> None:
    model = ServingConfig(max_batch_rows=64, feedback={"sample_rate": 0.5, "max_queue": 7})
    options = ServerOptions(
        model_dir=MODEL,
        retriever_dir=Path("runs/tt"),
        serving={
            "max_delay_ms": 0,
            "feedback": {"impressions": "runs/imps"},
            "compute_allocation": {"enabled": True, "slo_ms": 20},
        },
    )
    settings = options.settings(model)
    assert settings.max_batch_rows == 64  # the model's own, untouched
    assert settings.max_delay_ms == 0
    assert settings.feedback.impressions == "runs/imps"
    assert (settings.feedback.sample_rate, settings.feedback.max_queue) == (0.5, 7)
    assert settings.compute_allocation.enabled and settings.compute_allocation.slo_ms == 20
    assert model.feedback.impressions is None  # the model's settings are not mutated


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"max_batch_rows": 0}, "max_batch_rows"),
        ({"max_batch_row": 8}, "max_batch_row"),
        ({"feedback": {"sample_rat": 0.1}}, "sample_rat"),
        ({"feedback": {"sample_rate": 2}}, "sample_rate"),
        ({"compute_allocation": {"slo_ms": -1}}, "slo_ms"),
    ],
)
def test_a_change_the_config_file_would_refuse_is_refused(changes: dict, says: str) -> None:
    options = ServerOptions(model_dir=MODEL, retriever_dir=Path("runs/tt"), serving=changes)
    with pytest.raises(ValidationError, match=says):
        options.settings(ServingConfig())


def test_stages_that_cannot_work_are_refused_before_anything_loads() -> None:
    with pytest.raises(ValidationError, match="add --retriever"):
        ServerOptions(model_dir=MODEL, preranker_dir=Path("runs/cold"))
    with pytest.raises(ValidationError, match="add --retriever"):
        ServerOptions(model_dir=MODEL, retriever_deltas=Path("runs/tt/deltas"))
    with pytest.raises(ValidationError, match="prerank_keep"):
        ServerOptions(model_dir=MODEL, prerank_keep=0)
    with pytest.raises(ValidationError, match="no_such_option"):
        ServerOptions(model_dir=MODEL, no_such_option=1)
    allocation = ServerOptions(model_dir=MODEL, serving={"compute_allocation": {"enabled": True}})
    with pytest.raises(ValueError, match="add --retriever"):
        allocation.settings(ServingConfig())


def test_variant_flags() -> None:
    assert variant_options([]) is None  # one model: no variant machinery at all
    options = variant_options(["new=runs/new"], split="main=90,new=10", shadows=("new",))
    assert options is not None
    assert options.others == {"new": Path("runs/new")}
    assert options.split == {"main": 90.0, "new": 10.0} and options.shadows == ("new",)
    for specs, kwargs, says in [
        (["new"], {}, "NAME=DIR"),
        (["new=x"], {"policy": "greedy"}, "weights or thompson"),
        (["new=x"], {"policy": "thompson"}, "add --actions"),
        (["new=x"], {"split": "main:90"}, "NAME=WEIGHT"),
    ]:
        with pytest.raises(ValueError, match=says):
            variant_options(specs, **kwargs)
    held = ServerOptions(model_dir=MODEL, variants=options)
    assert held.variants is not None and held.variants.others == options.others
