"""predict_rows: a block scored in forward chunks gets each row the score the whole block gets
— every row, in order, the last partial chunk included, for models that pool, share or
sequence across a batch's columns."""

import numpy as np
import pytest
import torch

from streamrec.models.check import job_config, rows
from streamrec.models.registry import build_model
from streamrec.serving import batch_scoring
from streamrec.serving.batch_scoring import predict_rows


@pytest.mark.parametrize("name", ["deepfm", "dlrm", "din"])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_scores_are_the_whole_blocks(monkeypatch, name, chunk):
    config = job_config(name, None)
    torch.manual_seed(0)
    model = build_model(config.model, config.schema, config.table_configs()).eval()
    batch = config.schema.encode(rows(150, 3), with_labels=False)  # 150 = 2 × 64 + 22
    with torch.inference_mode():
        whole = model.predict(batch).numpy()
    monkeypatch.setattr(batch_scoring, "FORWARD_ROWS", chunk)
    got = predict_rows(model, batch)
    assert got.shape == whole.shape == (150, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)
    assert len(np.unique(got[:, 0])) > 100  # distinct rows: an order mix-up would show


def test_a_block_within_one_chunk_is_one_call(monkeypatch):
    config = job_config("deepfm", None)
    model = build_model(config.model, config.schema, config.table_configs()).eval()
    batch = config.schema.encode(rows(40, 1), with_labels=False)
    calls = []
    original = model.predict
    monkeypatch.setattr(model, "predict", lambda b: calls.append(b.size) or original(b))
    predict_rows(model, batch)
    monkeypatch.setattr(batch_scoring, "FORWARD_ROWS", 16)
    predict_rows(model, batch)
    assert calls == [40, 16, 16, 8]
