"""The Open Inference Protocol (KServe v2): bodies → rows (every wrong body a 4xx naming its
input), and a real server spoken to by `tritonclient`, a client no one here wrote, giving the
scores /v1/rank gives."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.serving.inference_protocol import (
    InferRequestReader,
    infer_response,
    tensor_metadata,
)
from streamrec.serving.request import RequestError

KINDS = {
    "user_id": "int",
    "price": "float",
    "city": "string",
    "item_id": "int",
    "tags": "list<string>",
    "history": "list<int>",
}
TASKS = ["click", "like"]
reader = InferRequestReader(KINDS, TASKS)


def _read(request: dict, binary: bytes = b"", max_rows: int = 1000):
    header = json.dumps(request).encode()
    return reader.read(
        header + binary, str(len(header)) if binary else None, 1 << 20, max_rows
    )


def _tensor(name: str, datatype: str, shape: list[int], data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _refused(request: dict, *words: str, status: int = 422, binary: bytes = b"") -> None:
    with pytest.raises(RequestError) as e:
        _read(request, binary)
    assert e.value.status == status, e.value.message
    for word in words:
        assert word in e.value.message, e.value.message


def test_context_is_broadcast_and_left_out_inputs_are_missing():
    call = _read({
        "id": "r1",
        "inputs": [
            _tensor("user_id", "INT64", [1], [7]),
            _tensor("city", "BYTES", [1, 1], ["Lyon"]),
            _tensor("item_id", "INT32", [3, 1], [[10], [11], [12]]),  # nested, [N, 1]
            _tensor("tags", "BYTES", [3], ['["a", "b"]', "[]", '["c"]']),  # ragged lists
            _tensor("history", "INT64", [3, 2], [1, 2, 3, 4, 5, 6]),  # [N, L]
        ],
    })
    rows = call.rows
    assert rows.num_rows == 3 and call.request_id == "r1"
    assert rows.columns["user_id"] == [7, 7, 7] and rows.columns["city"] == ["Lyon"] * 3
    assert rows.columns["item_id"] == [10, 11, 12]
    assert rows.columns["tags"] == [["a", "b"], [], ["c"]]
    assert rows.columns["history"] == [[1, 2], [3, 4], [5, 6]]
    padded = _read({"inputs": [  # rectangular lists padded as an ONNX graph reads them
        _tensor("tags", "BYTES", [2, 2], ["a", "", "", ""]),
        _tensor("history", "INT32", [2, 3], [7, -1, -1, 8, 9, -1]),
    ]})
    assert padded.rows.columns["tags"] == [["a"], []]
    assert padded.rows.columns["history"] == [[7], [8, 9]]
    assert rows.columns["price"] == [None] * 3 and rows.missing == {"price": 3}
    assert rows.shared == {"user_id", "city", "price"}  # sent once (or not at all): shared
    assert call.outputs == TASKS and call.binary == [False, False]


def _binary_bytes(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def test_binary_tensors_read_as_json_ones_and_nan_is_missing():
    items = np.array([5, 6], dtype=np.int64).tobytes()
    prices = np.array([1.5, np.nan], dtype=np.float32).tobytes()
    cities = _binary_bytes(["Oslo", "Nîmes"])
    call = _read(
        {
            "inputs": [
                {"name": "item_id", "datatype": "INT64", "shape": [2],
                 "parameters": {"binary_data_size": len(items)}},
                {"name": "price", "datatype": "FP32", "shape": [2, 1],
                 "parameters": {"binary_data_size": len(prices)}},
                {"name": "city", "datatype": "BYTES", "shape": [2],
                 "parameters": {"binary_data_size": len(cities)}},
            ],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "like"}, {"name": "click", "parameters": {"binary_data": False}}],
        },
        items + prices + cities,
    )
    assert call.rows.columns["item_id"] == [5, 6]
    assert call.rows.columns["price"] == [1.5, None] and call.rows.missing["price"] == 1
    assert call.rows.columns["city"] == ["Oslo", "Nîmes"]
    assert call.outputs == ["like", "click"] and call.binary == [True, False]


@pytest.mark.parametrize(
    ("request_body", "words"),
    [
        ({"inputs": [_tensor("item_idd", "INT64", [1], [1])]}, ["item_idd", "item_id"]),
        ({"inputs": [_tensor("item_id", "FP32", [1], [1.0])]}, ["item_id", "FP32", "INT64"]),
        ({"inputs": [_tensor("item_id", "INT64", [2], [1])]}, ["item_id", "1 values", "2"]),
        ({"inputs": [_tensor("item_id", "INT64", [1], ["x"])]}, ["item_id"]),
        ({"inputs": [_tensor("item_id", "INT64", [1], [2**63])]}, ["item_id"]),
        ({"inputs": [_tensor("item_id", "INT64", [1, 2], [1, 2])]}, ["item_id", "[N, 1]"]),
        ({"inputs": [_tensor("tags", "BYTES", [1], ["a"])]}, ["tags", "row 0", "JSON array"]),
        ({"inputs": [_tensor("tags", "BYTES", [1], ["[1]"])]}, ["tags", "row 0"]),
        ({"inputs": [_tensor("user_id", "INT64", [2], [1, 2]),
                     _tensor("item_id", "INT64", [3], [1, 2, 3])]}, ["user_id", "2 rows"]),
        ({"inputs": [_tensor("item_id", "INT64", [1], [1]),
                     _tensor("item_id", "INT64", [1], [1])]}, ["twice"]),
        ({"inputs": [_tensor("item_id", "INT64", [0], [])]}, ["no rows"]),
        ({"inputs": [{"name": "item_id", "datatype": "INT64", "shape": [1]}]}, ["neither"]),
        ({"inputs": [_tensor("item_id", "INT64", [1], [1])], "outputs": [{"name": "ctr"}]},
         ["ctr", "click"]),
        ({"inputs": []}, ["inputs"]),
        ({"inputs": [_tensor("item_id", "INT64", [-1], [1])]}, ["shape"]),
        ({"inputs": [_tensor("item_id", "INT64", [1], [1])], "extra": 1}, ["extra"]),
    ],
)
def test_wrong_json_bodies_are_422_naming_what_is_wrong(request_body, words):
    _refused(request_body, *words)


def test_wrong_binary_bodies_are_422_naming_what_is_wrong():
    def binary(name, datatype, shape, size):
        return {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                            "parameters": {"binary_data_size": size}}]}

    eight = np.array([1], dtype=np.int64).tobytes()
    _refused(binary("item_id", "INT64", [2], 8), "item_id", "16", binary=eight)
    _refused(binary("item_id", "INT64", [1], 16), "item_id", "remain", binary=eight)
    _refused(binary("item_id", "INT64", [1], 8), "belong to no input", binary=eight + b"more")
    _refused(binary("item_id", "UINT64", [1], 8), "beyond int64",
             binary=np.array([2**64 - 1], dtype=np.uint64).tobytes())
    _refused(binary("price", "FP64", [1], 8), "infinite",
             binary=np.array([np.inf]).tobytes())
    _refused(binary("city", "BYTES", [1], 5), "ends early", binary=b"\x09\x00\x00\x00a")
    _refused(binary("city", "BYTES", [1], 6), "UTF-8", binary=b"\x02\x00\x00\x00\xff\xfe")
    _refused(binary("item_id", "INT64", [1], 8), "Inference-Header-Content-Length", binary=b"")
    with pytest.raises(RequestError) as e:
        reader.read(b'{"inputs": []}', "999", 1 << 20, 10)
    assert "Inference-Header-Content-Length" in e.value.message


def test_too_many_rows_or_bytes_are_413():
    with pytest.raises(RequestError) as e:
        _read({"inputs": [_tensor("item_id", "INT64", [3], [1, 2, 3])]}, max_rows=2)
    assert e.value.status == 413 and "limit is 2" in e.value.message
    with pytest.raises(RequestError) as e:
        reader.read(b"x" * 100, None, 99, 10)
    assert e.value.status == 413


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20),
    cities=st.lists(st.text(max_size=8), min_size=1, max_size=1),
    as_binary=st.booleans(),
)
def test_binary_and_json_encodings_of_the_same_tensors_read_the_same(ids, cities, as_binary):
    n = len(ids)
    json_call = _read({"inputs": [
        _tensor("item_id", "INT64", [n], ids), _tensor("city", "BYTES", [1], cities),
    ]})
    raw_ids, raw_cities = np.array(ids, dtype=np.int64).tobytes(), _binary_bytes(cities)
    binary_call = _read(
        {"inputs": [
            {"name": "item_id", "datatype": "INT64", "shape": [n],
             "parameters": {"binary_data_size": len(raw_ids)}},
            {"name": "city", "datatype": "BYTES", "shape": [1],
             "parameters": {"binary_data_size": len(raw_cities)}},
        ]},
        raw_ids + raw_cities,
    )
    assert binary_call.rows == json_call.rows
    assert json_call.rows.columns["item_id"] == ids
    assert json_call.rows.columns["city"] == cities * n


def test_responses_carry_json_or_binary_outputs_as_asked():
    call = _read({
        "inputs": [_tensor("item_id", "INT64", [2], [1, 2])],
        "outputs": [{"name": "like", "parameters": {"binary_data": True}}, {"name": "click"}],
    })
    scores = np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32)
    body, headers = infer_response("m", "3.4", "r", call, scores, TASKS)
    cut = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:cut])
    assert header["model_name"] == "m" and header["model_version"] == "3.4"
    like, click = header["outputs"]
    assert like["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(body[cut:], "<f4"), scores[:, 1])
    assert click["data"] == pytest.approx([0.1, 0.3]) and click["shape"] == [2]


def test_metadata_declares_one_input_per_feature_and_one_output_per_task():
    meta = tensor_metadata(KINDS, TASKS)
    by_name = {i["name"]: i for i in meta["inputs"]}
    assert list(by_name) == list(KINDS)
    assert by_name["price"] == {"name": "price", "datatype": "FP32", "shape": [-1]}
    assert by_name["tags"]["datatype"] == "BYTES" and by_name["tags"]["shape"] == [-1, -1]
    assert [o["name"] for o in meta["outputs"]] == TASKS


# --- a real server, a real client -------------------------------------------------------

CONTEXT = {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"}
GENRES = [["Comedy", "Drama"], ["Action"], []]


def _triton_inputs(items: list[int], binary: bool):
    import tritonclient.http as triton

    def tensor(name, array, datatype):
        t = triton.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array, binary_data=binary)
        return t

    n = len(items)
    genres = [json.dumps(GENRES[i % 3]) for i in range(n)]
    return [
        tensor("user_id", np.array([CONTEXT["user_id"]], dtype=np.int64), "INT64"),
        tensor("age", np.array([[CONTEXT["age"]]], dtype=np.int32), "INT32"),
        *(
            tensor(f, np.array([CONTEXT[f]], dtype=np.object_), "BYTES")
            for f in ("gender", "occupation", "zip_code")
        ),
        tensor("item_id", np.array(items, dtype=np.int64), "INT64"),
        tensor("genres", np.array(genres, dtype=np.object_), "BYTES"),
    ]


@pytest.fixture(scope="module")
def triton_server(trained_run):
    from tests.serving.conftest import TOKEN, Server

    s = Server(trained_run, "--token", TOKEN)
    yield s
    s.stop()


def test_tritonclient_gets_the_scores_of_v1_rank(triton_server):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    server = triton_server
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    def auth() -> dict[str, str]:  # tritonclient writes its own headers into the dict given
        return dict(server.headers)

    assert client.is_server_live() and client.is_server_ready()  # probes need no token
    meta = client.get_model_metadata("ml100k_deepfm", headers=auth())
    assert {i["name"] for i in meta["inputs"]} == {*CONTEXT, "item_id", "genres"}
    assert meta["outputs"] == [{"name": "label", "datatype": "FP32", "shape": [-1]}]
    assert client.is_model_ready("ml100k_deepfm", headers=auth())

    items = list(range(1, 61))
    candidates = [{"item_id": i, "genres": GENRES[k % 3]} for k, i in enumerate(items)]
    v1 = server.post("/v1/rank", json={"context": CONTEXT, "candidates": candidates}).json()
    for binary in (True, False):
        result = client.infer(
            "ml100k_deepfm", _triton_inputs(items, binary), headers=auth(), request_id=f"b{binary}"
        )
        np.testing.assert_allclose(result.as_numpy("label"), v1["scores"]["label"], rtol=1e-6)
        answer = result.get_response()
        assert answer["model_version"] == v1["model_version"] and answer["id"] == f"b{binary}"
    versioned = client.infer(
        "ml100k_deepfm", _triton_inputs(items[:3], False), headers=auth(),
        model_version=v1["model_version"],
        outputs=[triton.InferRequestedOutput("label", binary_data=False)],
    )
    np.testing.assert_allclose(versioned.as_numpy("label"), v1["scores"]["label"][:3], rtol=1e-6)

    for call, words in (
        (lambda: client.infer("ml100k_deepfm", _triton_inputs([1], True)), "bearer token"),
        (lambda: client.infer("other", _triton_inputs([1], True), headers=auth()), "ml100k_deepfm"),
        (lambda: client.infer("ml100k_deepfm", _triton_inputs([1], True), headers=auth(),
                              model_version="0.0"), "not served"),
    ):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert words in str(e.value)


def test_v2_infer_shares_the_cache_metrics_and_missing_features_of_v1(triton_server):
    server = triton_server

    def metric(name: str) -> float:
        for line in server.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(name)

    items = list(range(200, 230))
    body = {"context": CONTEXT, "candidates": [{"item_id": i, "genres": []} for i in items]}
    assert server.post("/v1/rank", json=body).status_code == 200
    hits = metric("streamrec_cache_hits_total")
    request = {"inputs": [
        {"name": f, "datatype": "BYTES" if isinstance(v, str) else "INT64", "shape": [1],
         "data": [v]} for f, v in CONTEXT.items()
    ] + [
        {"name": "item_id", "datatype": "INT64", "shape": [30], "data": items},
        {"name": "genres", "datatype": "BYTES", "shape": [30, 0], "data": []},
    ]}
    r = server.post("/v2/models/ml100k_deepfm/infer", json=request)
    assert r.status_code == 200, r.text
    assert metric("streamrec_cache_hits_total") - hits == 30  # the rows /v1/rank scored
    assert 'endpoint="infer",status="200"' in server.get("/metrics").text
    request["inputs"] = request["inputs"][1:]  # no user_id: missing, and said so
    r = server.post("/v2/models/ml100k_deepfm/infer", json=request)
    assert r.status_code == 200 and r.headers["X-Missing-Features"] == "user_id"
    r = server.post("/v2/models/ml100k_deepfm/infer", json={"inputs": [{"name": "x"}]})
    assert r.status_code == 422 and "error" in r.json()
