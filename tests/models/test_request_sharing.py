"""Request-level sharing: a request's features through the first dense layer once per
request (models/request_sharing.py), scoring as the unshared path does."""

import dataclasses

import numpy as np
import torch

from streamrec.models.check import REQUEST_FEATURES, job_config, request_rows
from streamrec.models.registry import build_model
from streamrec.models.request_sharing import (
    MIN_SAVED_MACS,
    LayerInput,
    always_split,
    worth_sharing,
)


def test_the_split_first_layer_is_the_whole_layer():
    """[request block, row block, dense with one request column] through a Linear + ReLU:
    the request columns once per request, the rest per row — the same output."""
    torch.manual_seed(0)
    from streamrec.batch import Batch, RequestContext

    sizes = [3, 1, 4]
    index = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    user = torch.randn(3, 5)
    item = torch.randn(8, 4)
    dense = torch.randn(8, 2)
    dense[:, 0] = torch.tensor([1.0, 2.0, 3.0])[index]  # column 0 is the request's
    batch = Batch(torch.zeros(8, 0), dense, {},
                  context=RequestContext.of(dense, sizes, [], [0]))
    mlp = torch.nn.Sequential(torch.nn.Linear(11, 6), torch.nn.ReLU())
    x = LayerInput(index, 3)
    x.add(user, per_request=True)
    x.add(item)
    x.add_dense(batch)
    whole = torch.cat([user[index], item, dense], dim=1)
    with always_split():
        split = x.through(mlp, lambda: whole)
    assert torch.allclose(split, mlp(whole), atol=1e-6)


def test_a_split_is_made_where_it_saves_work_and_scores_the_same():
    """A DeepFM of two requests × 600 candidates with 512 hidden units: the user's 17
    columns once per request save 1,198 × 17 × 512 multiply-adds — split by default — and
    score as the unshared rows; one request of three rows is not worth a split."""
    config = job_config("deepfm", {"hidden": [512, 32]})
    torch.manual_seed(0)
    model = build_model(config.model, config.schema, config.table_configs()).eval()
    sizes = [600, 600]
    rows = request_rows(sizes, 5)
    batch = config.schema.encode(rows, with_labels=False)
    shared = config.schema.share_requests(batch, sizes, REQUEST_FEATURES)
    # the request's columns: user_id and history (8 wide each), and age (one dense column)
    user_width = 16
    assert worth_sharing(model.deep, shared, user_width)
    assert (1200 - 2) * (user_width + 1) * 512 >= MIN_SAVED_MACS
    np.testing.assert_allclose(
        model.predict(shared).numpy(), model.predict(batch).numpy(), rtol=1e-5, atol=1e-6
    )
    small = config.schema.encode(request_rows([3], 5), with_labels=False)
    small = config.schema.share_requests(small, [3], REQUEST_FEATURES)
    assert small.context is not None and not worth_sharing(model.deep, small, user_width)


def test_a_context_sharing_none_of_the_models_inputs_is_scored_unsplit():
    """A batch whose requests share only inputs the model does not read: nothing to split,
    even where every split is forced — the plain path's scores, not an error."""
    config = job_config("deepfm", {"hidden": [16]})
    torch.manual_seed(0)
    model = build_model(config.model, config.schema, config.table_configs()).eval()
    sizes = [4, 6]
    batch = config.schema.encode(request_rows(sizes, 2), with_labels=False)
    shared = config.schema.share_requests(batch, sizes, ["not_an_input", "user_id"])
    assert shared.context is not None and shared.context.features == {"user_id"}
    nothing = dataclasses.replace(shared, context=dataclasses.replace(
        shared.context, features=frozenset()
    ))
    with always_split():
        got = model.predict(nothing)
    assert torch.equal(got, model.predict(batch))
