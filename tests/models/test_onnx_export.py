"""`streamrec export --format onnx`: onnxruntime scores what the model scores — the examples,
a model using every encoding the schema has, unknown ids and missing values — and the Triton
repository declares what the graph reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from streamrec.config import load_config, parse_config
from streamrec.models.persistence import load_model
from streamrec.onnx_export import OnnxExportError, export_onnx, onnx_inputs
from streamrec.train.job import run_training

REPO = Path(__file__).resolve().parents[2]


def _onnx_scores(model_file: Path, table: pa.Table, kinds: dict[str, str]) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in onnx_inputs(table, kinds).items() if k in wanted}
    return np.stack(session.run(None, feeds), axis=1)


def _model_scores(run: Path, table: pa.Table) -> np.ndarray:
    loaded = load_model(run)
    with torch.inference_mode():
        batch = loaded.config.schema.encode(table, with_labels=False)
        return loaded.model.eval().predict(batch).numpy()


def _triton_declares_the_graph(repository: Path) -> None:
    """What Triton checks when it loads an onnxruntime model: every input and output that
    config.pbtxt names exists in the graph with that type and rank, and no graph input is
    left undeclared."""
    text = (repository / "config.pbtxt").read_text()
    assert re.search(r'^backend: "onnxruntime"$', text, re.M)
    assert re.search(rf'^name: "{repository.name}"$', text, re.M)
    declared = {
        m["name"]: (m["type"], m["dims"].count("-1"))
        for m in re.finditer(
            r'\{ name: "(?P<name>[^"]+)" data_type: (?P<type>\w+) dims: \[(?P<dims>[^\]]*)\] \}',
            text,
        )
    }
    graph = onnx.load(str(repository / "1" / "model.onnx")).graph
    types = {1: "TYPE_FP32", 7: "TYPE_INT64", 8: "TYPE_STRING"}
    in_graph = {
        v.name: (types[v.type.tensor_type.elem_type], len(v.type.tensor_type.shape.dim))
        for v in [*graph.input, *graph.output]
    }
    assert declared == in_graph


def test_the_ml100k_example_scores_the_same_in_onnxruntime_also_for_unknown_ids(
    trained_run, tmp_path
):
    report = export_onnx(trained_run, tmp_path / "repo")
    assert report["checked_rows"] == 512 and report["max_abs_difference"] <= 1e-5
    assert report["unreachable_rows"] == {}
    repository = tmp_path / "repo" / "ml100k_deepfm"
    _triton_declares_the_graph(repository)
    kinds = load_model(trained_run).input_kinds
    unseen = pa.table({
        "user_id": [1, 99999, 2, 3],
        "item_id": [50, 172, 10**12, 1],
        "genres": [["Comedy", "Drama"], ["never-seen"], [], None],
        "age": [24, 24, -5, 30],
        "gender": ["M", "F", "X", None],
        "occupation": ["technician", "astronaut", "writer", "writer"],
        "zip_code": ["85711", "00000", "", "12345"],
    })
    np.testing.assert_allclose(
        _onnx_scores(repository / "1" / "model.onnx", unseen, kinds),
        _model_scores(trained_run, unseen), atol=1e-5,
    )


@pytest.mark.slow
@pytest.mark.parametrize("example", ["criteo_dlrm", "criteo_dcnv2"])
def test_the_criteo_examples_score_the_same_in_onnxruntime(example, criteo_train, tmp_path):
    cfg = load_config(REPO / "examples" / f"{example}.yaml")
    cfg.train.epochs = 1
    run_training(cfg, tmp_path / "run", progress=False)
    report = export_onnx(tmp_path / "run", tmp_path / "repo")
    assert report["checked_rows"] == 512 and report["max_abs_difference"] <= 1e-5
    _triton_declares_the_graph(tmp_path / "repo" / example)


def _every_encoding_config(data: Path, model: str) -> dict:
    return {
        "name": "every_encoding",
        "schema": {
            "labels": [{"name": "click"}, {"name": "buy"}],
            "dense": [
                {"name": "price", "transform": "quantile", "num_quantiles": 8,
                 "missing_indicator": True, "fill": -1.0},
                {"name": "age", "transform": "standardize"},
                {"name": "views", "transform": "log1p"},
            ],
            "encodings": [{"name": "device", "max_size": 3}],
            "embeddings": [
                {"name": "user"},
                {"name": "shop", "missing": "empty"},
                {"name": "tags", "pooling": "sqrtn"},
                {"name": "recent", "pooling": "mean"},
            ],
        },
        "default_table": {"dim": 8},
        "data": {"format": "parquet", "train": str(data), "batch_size": 256},
        "model": {"name": model},
        "train": {"epochs": 1},
    }


def _every_encoding_rows(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)

    def maybe(values, p=0.1):
        return [None if rng.random() < p else v for v in values]

    return pa.table({
        "click": rng.integers(0, 2, n).tolist(),
        "buy": rng.integers(0, 2, n).tolist(),
        "price": maybe(rng.lognormal(2, 1, n).tolist()),
        "age": maybe(rng.integers(18, 70, n).astype(float).tolist()),
        "views": rng.integers(0, 1000, n).astype(float).tolist(),
        "device": maybe([f"d{i}" for i in rng.integers(0, 6, n)]),
        "user": rng.integers(0, 300, n).tolist(),
        "shop": maybe([f"s{i}" for i in rng.integers(0, 50, n)], 0.2),
        "tags": [[f"t{j}" for j in rng.integers(0, 30, rng.integers(0, 4))] for _ in range(n)],
        "recent": [rng.integers(0, 500, rng.integers(0, 5)).tolist() for _ in range(n)],
    })


@pytest.mark.parametrize("model", ["deepfm", "dcnv2", "mmoe", "lr"])
def test_every_transform_encoding_pooling_and_missing_value_scores_the_same(model, tmp_path):
    pq.write_table(_every_encoding_rows(3000, 0), tmp_path / "train.parquet")
    cfg = parse_config(_every_encoding_config(tmp_path / "train.parquet", model))
    run_training(cfg, tmp_path / "run", progress=False)
    report = export_onnx(tmp_path / "run", tmp_path / "repo")
    assert report["max_abs_difference"] <= 1e-5
    assert report["outputs"] == ["click", "buy"]
    fresh = _every_encoding_rows(400, 1)  # unseen users, shops and tags among them
    fresh = fresh.set_column(
        fresh.schema.get_field_index("user"), "user", pa.array([10**6 + i for i in range(400)])
    )
    kinds = load_model(tmp_path / "run").input_kinds
    np.testing.assert_allclose(
        _onnx_scores(tmp_path / "repo" / "every_encoding" / "1" / "model.onnx", fresh, kinds),
        _model_scores(tmp_path / "run", fresh), atol=1e-5,
    )


def test_a_dlrm_on_ids_only_broadcasts_its_one_bottom_vector_to_any_batch(tmp_path):
    """Without dense features DLRM runs its bottom MLP once and broadcasts it: the exported
    graph must broadcast to the rows it is given, not to the traced batch's size."""
    pq.write_table(_every_encoding_rows(2000, 0), tmp_path / "train.parquet")
    config = _every_encoding_config(tmp_path / "train.parquet", "dlrm")
    config["schema"] = {**config["schema"], "dense": [], "encodings": []}
    config["model"]["params"] = {"bottom": [16], "top": [16]}
    run_training(parse_config(config), tmp_path / "run", progress=False)
    report = export_onnx(tmp_path / "run", tmp_path / "repo")
    assert report["max_abs_difference"] <= 1e-5
    fresh = _every_encoding_rows(37, 1)
    kinds = load_model(tmp_path / "run").input_kinds
    np.testing.assert_allclose(
        _onnx_scores(tmp_path / "repo" / "every_encoding" / "1" / "model.onnx", fresh, kinds),
        _model_scores(tmp_path / "run", fresh), atol=1e-5,
    )


def test_strings_not_in_the_training_data_are_counted_unreachable(trained_run, tmp_path):
    from streamrec.fid import fids_from_arrow
    from streamrec.models.persistence import save_model

    loaded = load_model(trained_run)
    table = loaded.model.embeddings.tables["zip_code"]
    learnt_from_a_stream = fids_from_arrow(pa.array(["stream-only-1", "stream-only-2"]))
    table.upsert(learnt_from_a_stream, np.ones((2, table.dim), np.float32))
    save_model(tmp_path / "model", loaded.model, loaded.config,
               {"input_kinds": loaded.input_kinds})
    report = export_onnx(tmp_path / "model", tmp_path / "repo")
    assert report["unreachable_rows"] == {"zip_code": 2}
    assert report["max_abs_difference"] <= 1e-5


def test_models_it_cannot_export_are_refused_with_the_reason(retriever_run, tmp_path):
    with pytest.raises(OnnxExportError, match="two-tower"):
        export_onnx(retriever_run, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_the_cli_writes_the_repository_and_reports_it(trained_run, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "streamrec", "export", str(trained_run), "--format", "onnx",
         "--out", str(tmp_path / "repo"), "--name", "ranker", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["name"] == "ranker" and report["max_abs_difference"] <= 1e-5
    _triton_declares_the_graph(tmp_path / "repo" / "ranker")
    refused = subprocess.run(
        [sys.executable, "-m", "streamrec", "export", str(trained_run), "--format", "onnx",
         "--out", str(tmp_path / "repo"), "--drop-zero-rows"],
        capture_output=True, text=True, timeout=300,
    )
    assert refused.returncode == 2 and "--drop-zero-rows" in refused.stderr


def test_a_graph_over_the_protobuf_limit_is_refused_before_it_is_built(
    trained_run, tmp_path, monkeypatch
):
    import streamrec.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 100_000)  # the ML-100k graph: ~400 kB
    with pytest.raises(OnnxExportError, match="2 GB limit"):
        export_onnx(trained_run, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_a_sequence_model_keeps_the_last_ids_as_training_does(tmp_path):
    from streamrec.models.check import SCHEMA, rows

    pq.write_table(rows(3000, 0), tmp_path / "train.parquet")
    cfg = parse_config({
        "name": "din_check", "schema": SCHEMA, "default_table": {"dim": 8},
        "data": {"format": "parquet", "train": str(tmp_path / "train.parquet")},
        "model": {"name": "din", "params": {"hidden": [32], "attention_hidden": [16]}},
        "train": {"epochs": 1},
    })
    run_training(cfg, tmp_path / "run", progress=False)
    report = export_onnx(tmp_path / "run", tmp_path / "repo")
    assert report["max_abs_difference"] <= 1e-5
    fresh = rows(300, 1, id_offset=150)  # some ids unseen
    rng = np.random.default_rng(2)
    longer = [list(rng.integers(0, 300, rng.integers(0, 10))) for _ in range(300)]
    fresh = fresh.set_column(fresh.schema.get_field_index("history"), "history",
                             pa.array(longer, pa.list_(pa.int64())))  # up to 9 ids: max 5 kept
    kinds = load_model(tmp_path / "run").input_kinds
    np.testing.assert_allclose(
        _onnx_scores(tmp_path / "repo" / "din_check" / "1" / "model.onnx", fresh, kinds),
        _model_scores(tmp_path / "run", fresh), atol=1e-5,
    )


def test_a_model_whose_training_data_is_gone_exports_from_the_files_given(
    tmp_path, criteo_train
):
    import shutil

    moved = tmp_path / "train.tsv"
    shutil.copy(criteo_train, moved)
    cfg = load_config(REPO / "examples" / "criteo_dlrm.yaml")
    cfg.train.epochs, cfg.data.train, cfg.data.valid = 1, str(moved), []
    run_training(cfg, tmp_path / "run", progress=False)
    moved.unlink()
    with pytest.raises(OnnxExportError, match="--strings-from"):
        export_onnx(tmp_path / "run", tmp_path / "repo")
    report = export_onnx(tmp_path / "run", tmp_path / "repo", strings_from=[criteo_train])
    assert report["checked_rows"] == 512 and report["max_abs_difference"] <= 1e-5
    assert report["unreachable_rows"] == {} and report["rejected_rows"] == 0
    broken = tmp_path / "with_bad_lines.tsv"  # malformed lines are skipped, and counted
    broken.write_text(criteo_train.read_text() + "not\ta\tcriteo\trow\n" * 3)
    report = export_onnx(tmp_path / "run", tmp_path / "repo2", strings_from=[broken])
    assert report["rejected_rows"] >= 3 and report["max_abs_difference"] <= 1e-5
