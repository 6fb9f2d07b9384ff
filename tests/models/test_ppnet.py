"""PPNet: gates of 1 leave the shared tower as it is, the gates' gradient never reaches the
shared input, and the gate features default to the id features."""

from __future__ import annotations

import pytest
import torch

from streamrec.config import ConfigError, ModelConfig, TableConfig
from streamrec.models.check import SCHEMA, rows
from streamrec.models.ppnet import PPNet
from streamrec.models.registry import build_model
from streamrec.schema import Schema


def _model(**params) -> PPNet:
    schema = Schema.model_validate(SCHEMA).fit(rows(200, 0))
    tables = {name: TableConfig(dim=8) for name in schema.tables()}
    return build_model(ModelConfig(name="ppnet", params={"hidden": [16, 8], **params}),
                       schema, tables)


def test_gates_of_one_leave_the_shared_tower_unchanged():
    torch.manual_seed(0)
    model = _model()
    for gate in model.gates:  # 2·sigmoid(0) = 1
        torch.nn.init.zeros_(gate[-1].weight)
        torch.nn.init.zeros_(gate[-1].bias)
    x, personal = torch.randn(5, model.layers[0].in_features), torch.randn(5, 16)
    h = x
    for layer in model.layers:
        h = torch.relu(layer(h))
    torch.testing.assert_close(model.tower(x, personal), model.head(h))


def test_the_gates_gradient_stops_at_the_shared_input():
    torch.manual_seed(0)
    model = _model()
    for layer in model.layers:  # the tower ignores x: only the gates see it
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.ones_(layer.bias)
    x = torch.randn(5, model.layers[0].in_features, requires_grad=True)
    personal = torch.randn(5, 16, requires_grad=True)
    model.tower(x, personal).sum().backward()
    assert x.grad is None or not x.grad.any()
    assert personal.grad is not None and personal.grad.abs().sum() > 0


def test_gate_features_default_to_the_id_features_and_unknown_ones_are_refused():
    assert _model().gate_features == ["user_id", "item_id"]
    assert _model(gate_features=["genres"]).gate_features == ["genres"]
    with pytest.raises(ConfigError, match="zip"):
        _model(gate_features=["zip"])
