"""Every registered model — and a user's own — passes `check_model` (models/check.py)."""

import pytest
import torch

from streamrec.models import MODELS, RankingModel, register_model
from streamrec.models.check import CHECKS, check_model

PARAMS = {
    "din": {"sequence": "history", "target": "item_id"},
    "wide_deep": {"crosses": [["user_id", "genres"]]},
}


class MeanDot(RankingModel):
    """A user's model: defined outside streamrec, registered by name."""

    def forward(self, batch):
        emb = self.embed(batch).pooled
        score = (emb["user_id"] * (emb["item_id"] + emb["history"])).sum(1, keepdim=True)
        return score.expand(-1, self.num_tasks)


class Broken(MeanDot):
    """Scores that ignore the tables' rows on every rank but the first: what a model whose
    state lives outside its modules would do once sharded."""

    def forward(self, batch):
        out = super().forward(batch)
        return out + torch.distributed.get_rank() if torch.distributed.is_initialized() else out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(MODELS) - {"two_tower"}))
def test_every_registered_model_passes_the_check(name):
    assert check_model(name, PARAMS.get(name)) == list(CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepfm", "din"])
def test_models_pass_the_check_with_frequency_adaptive_tables(name):
    """rare_dim splits each table in two: saving, loading, state dicts and 2-rank sharding
    still give the scores of the model in one piece."""
    adaptive = {"rare_dim": 3, "promote_after": 2}
    assert check_model(name, PARAMS.get(name), adaptive) == list(CHECKS)


@pytest.mark.slow
def test_a_user_model_passes_and_a_broken_one_fails_by_name():
    register_model("mean_dot", MeanDot)
    register_model("broken", Broken)
    try:
        assert check_model("mean_dot") == list(CHECKS)
        with pytest.raises(AssertionError, match="sharded: 2 ranks score"):
            check_model("broken")
    finally:  # the registry is process-wide: leave it as found
        MODELS.pop("mean_dot", None)
        MODELS.pop("broken", None)
