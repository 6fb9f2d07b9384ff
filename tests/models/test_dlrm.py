"""DLRM's shared computation: the bottom vector once where every row has the same, the dot
products of a request's own vectors once per request — scoring as the per-row formula."""

import pytest
import torch

from streamrec.config import JobConfig
from streamrec.models.check import REQUEST_FEATURES, SCHEMA, job_config, request_rows, rows
from streamrec.models.dlrm import DLRM
from streamrec.models.registry import build_model
from streamrec.models.request_sharing import always_split


def per_row_formula(model: DLRM, batch) -> torch.Tensor:
    """The paper's forward, row by row: bottom MLP over each row's dense input, every pairwise
    dot product of [bottom vector, embeddings], the top MLP — what the model must equal."""
    dense = batch.dense if model.dense_width else batch.dense.new_zeros(batch.size, 1)
    z = model.bottom(dense)
    emb = model.embed(batch).stacked(model.features)
    stacked = torch.cat([z[:, None, :], emb], dim=1)
    n = stacked.shape[1]
    i, j = torch.triu_indices(n, n, offset=1)
    dots = (stacked[:, i] * stacked[:, j]).sum(-1)
    parts = [z, dots] + ([emb.flatten(1)] if model.concat_embeddings else [])
    return model.top(torch.cat(parts, dim=1))


def ids_only_config(params: dict) -> JobConfig:
    config = JobConfig.model_validate({
        "name": "dlrm-ids-only",
        "schema": {**SCHEMA, "dense": []},
        "default_table": {"dim": 8, "optimizer": "adagrad", "lr": 0.05},
        "model": {"name": "dlrm", "params": params},
    })
    config.schema_ = config.schema.fit(rows(256, 0))
    return config


@pytest.mark.parametrize("concat", [False, True])
def test_without_dense_features_the_bottom_vector_is_computed_once_and_trains_alike(concat):
    """Ids-only data: the bottom MLP's input is a zero on every row; computed once and
    broadcast, the scores and the bottom MLP's gradients are the per-row formula's."""
    config = ids_only_config({"bottom": [32], "top": [16], "concat_embeddings": concat})
    torch.manual_seed(0)
    model = build_model(config.model, config.schema, config.table_configs())
    assert model.dense_width == 0
    batch = config.schema.encode(rows(64, 1))
    got = model(batch)
    expected = per_row_formula(model, batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    weight = model.bottom[-1].weight  # the first layer's weight sees only zeros
    (g_got,) = torch.autograd.grad(got.square().sum(), weight)
    (g_expected,) = torch.autograd.grad(per_row_formula(model, batch).square().sum(), weight)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-6)
    assert g_got.abs().sum() > 0


@pytest.mark.parametrize("concat", [False, True])
@pytest.mark.parametrize(
    "request_features", [REQUEST_FEATURES, ("user_id", "history")], ids=["age-too", "ids-only"]
)
def test_a_request_context_splits_the_top_layer_and_scores_as_the_rows(concat, request_features):
    """Requests giving their user, history and (first case) age once: with the dense column
    the request's, the bottom MLP runs once per request; the dot products among the request's
    vectors and its embeddings pass the top layer once per request — the rows' scores."""
    config = job_config("dlrm", {"bottom": [16], "top": [32, 8], "concat_embeddings": concat})
    torch.manual_seed(0)
    model = build_model(config.model, config.schema, config.table_configs()).eval()
    sizes = [1, 9, 40, 3]
    batch = config.schema.encode(request_rows(sizes, 4), with_labels=False)
    shared = config.schema.share_requests(batch, sizes, request_features)
    assert shared.context is not None
    with torch.no_grad(), always_split():
        plan = model._plan_for(shared, model.embed(shared), "age" in request_features)
        got = model(shared)
        expected = per_row_formula(model, batch)
    assert plan is not None and plan.shared_pairs.numel() > 0
    assert (0 in plan.nodes) == ("age" in request_features)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        unsplit = model(shared)  # 53 rows: not worth a split by default
    torch.testing.assert_close(unsplit, expected, rtol=1e-5, atol=1e-6)
