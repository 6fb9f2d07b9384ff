"""/v2 infer (the Open Inference Protocol) next to /v1/rank: the same rows, the same server,
alternating.

    .venv/bin/python benchmarks/inference_protocol.py --json [--model runs/ml100k]

The MovieLens-100k DeepFM ranker (trained for one epoch into --workdir unless --model names one)
serves with the prediction cache off. Bodies: --bodies random /v1/rank requests of 100
candidates made from the server's /v1/model, each also written as a /v2 request — JSON tensors,
and binary tensors as `tritonclient` sends them by default — with the context as [1] tensors
(broadcast). Per repeat, in turn for each API:

  * server CPU per request: 300 sequential requests after 20 of warm-up (HTTP included);
  * latency under load: p50 / p99 of --seconds of open-loop Poisson load at --qps (JSON bodies;
    the load generator speaks JSON only).

Reports medians over --repeats and the ratios v2 / v1 (target: ≤ 1.05, the same path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
from pathlib import Path

import httpx
import numpy as np
from server_process import start_server

from streamrec.config import load_config
from streamrec.serving.loadgen import make_body, run_load
from streamrec.train.job import run_training

REPO = Path(__file__).resolve().parents[1]
PORT = 8475


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 10 ms


def v2_request(body: dict, kinds: dict[str, str], binary: bool) -> tuple[bytes, dict]:
    """(body bytes, headers) of the /v2 request for a /v1/rank body."""
    n = len(body["candidates"])
    tensors = []
    for feature, value in body["context"].items():
        tensors.append((feature, kinds[feature], [value], 1))
    for feature in body["candidates"][0]:
        tensors.append((feature, kinds[feature], [c[feature] for c in body["candidates"]], n))
    inputs, raw = [], []
    for feature, kind, values, rows in tensors:
        if kind.startswith("list<"):
            values, datatype = [json.dumps(v) for v in values], "BYTES"
        else:
            datatype = {"int": "INT64", "float": "FP32", "string": "BYTES"}[kind]
        tensor = {"name": feature, "datatype": datatype, "shape": [rows]}
        if not binary:
            tensor["data"] = values
        else:
            if datatype == "BYTES":
                data = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
            else:
                data = np.array(values, dtype="<i8" if datatype == "INT64" else "<f4").tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        inputs.append(tensor)
    header = json.dumps({"inputs": inputs}).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + b"".join(raw), {"Inference-Header-Content-Length": str(len(header))}


def cpu_per_request(pid: int, url: str, path: str, requests: list[tuple[bytes, dict]]) -> float:
    with httpx.Client(base_url=url, timeout=30) as client:
        for content, headers in requests[:20]:
            client.post(path, content=content, headers=headers).raise_for_status()
        started = process_cpu_s(pid)
        for i in range(300):
            content, headers = requests[20 + i % (len(requests) - 20)]
            client.post(path, content=content, headers=headers).raise_for_status()
        return 1000 * (process_cpu_s(pid) - started) / 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained ml100k ranker (default: train one)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-inference-protocol"))
    parser.add_argument("--qps", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bodies", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = args.model
    if model is None:
        model = args.workdir / "ranker"
        if not (model / "model").exists():
            cfg = load_config(REPO / "examples" / "ml100k_deepfm.yaml")
            cfg.train.epochs = 1
            run_training(cfg, model, progress=False)
    proc = start_server(model, PORT)
    url = f"http://127.0.0.1:{PORT}"
    try:
        info = httpx.get(url + "/v1/model").json()
        name = info["name"]
        rng = np.random.default_rng(0)
        bodies = [make_body(info, 100, rng) for _ in range(args.bodies)]
        v1 = [(json.dumps(b).encode(), {"content-type": "application/json"}) for b in bodies]
        v2_json = [v2_request(b, info["input_kinds"], binary=False) for b in bodies]
        v2_binary = [v2_request(b, info["input_kinds"], binary=True) for b in bodies]
        v2_path = f"/v2/models/{name}/infer"
        v1_scores = httpx.post(url + "/v1/rank", content=v1[0][0]).json()["scores"]["label"]
        v2_scores = httpx.post(url + v2_path, content=v2_json[0][0]).json()["outputs"][0]["data"]
        assert np.allclose(v1_scores, v2_scores, rtol=1e-6), "v2 and v1 scores differ"
        runs: dict[str, list[dict]] = {"v1": [], "v2_json": [], "v2_binary": []}
        for _ in range(args.repeats):
            for api, path, requests in (
                ("v1", "/v1/rank", v1), ("v2_json", v2_path, v2_json),
                ("v2_binary", v2_path, v2_binary),
            ):
                row = {"cpu_ms": cpu_per_request(proc.pid, url, path, requests)}
                if api != "v2_binary":
                    load = asyncio.run(run_load(
                        url, args.qps, args.seconds, 100, endpoint=path,
                        request_bodies=bodies if api == "v1" else [json.loads(c) for c, _ in
                                                                   requests],
                    ))
                    assert load["errors"] == 0, load
                    row.update(p50_ms=load["p50_ms"], p99_ms=load["p99_ms"])
                runs[api].append(row)
    finally:
        proc.kill()
        proc.wait()
    medians = {
        api: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        for api, rows in runs.items()
    }
    result = {
        "qps": args.qps,
        "repeats": args.repeats,
        "medians": medians,
        "v2_json_over_v1": {k: medians["v2_json"][k] / medians["v1"][k] for k in medians["v1"]},
        "v2_binary_cpu_over_v1": medians["v2_binary"]["cpu_ms"] / medians["v1"]["cpu_ms"],
        "runs": runs,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for api, m in medians.items():
            print(api, {k: round(v, 2) for k, v in m.items()})


if __name__ == "__main__":
    main()
