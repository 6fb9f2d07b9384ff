"""Open-loop load generator for /v1/rank (`streamrec bench serve`).

Requests are sent at Poisson arrival times regardless of how fast answers come back (open loop),
so a slow server shows up as latency and errors rather than as a politely lower request rate —
the mistake closed-loop generators make (coordinated omission). Request bodies are made from the
server's own /v1/model description: ints, floats or strings of the right kind per feature.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np


def make_body(info: dict, candidates: int, rng: np.random.Generator) -> dict:
    kinds = info["input_kinds"]

    def value(kind: str) -> object:
        if kind.startswith("list<"):
            return [value(kind[5:-1]) for _ in range(int(rng.integers(1, 4)))]
        if kind == "int":
            return int(rng.integers(1, 2000))
        if kind == "float":
            return float(rng.random())
        return f"v{int(rng.integers(0, 50))}"

    context = {f: value(kinds[f]) for f in info["features"]["context"]}
    cands = [{f: value(kinds[f]) for f in info["features"]["candidate"]} for _ in range(candidates)]
    return {"context": context, "candidates": cands}


async def run_load(
    url: str,
    qps: float,
    duration: float,
    candidates: int,
    token: str | None = None,
    seed: int = 0,
    bodies: int = 64,
    trace: list[tuple[float, float]] | None = None,
) -> dict:
    """Poisson load for `duration` seconds; returns latency percentiles and status counts.
    `trace`, when given, receives (send time from time.time(), latency s) per request."""
    if qps <= 0 or duration <= 0:
        raise ValueError("qps and duration must be positive")
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=30.0
    ) as client:
        info = (await client.get("/v1/model")).raise_for_status().json()
        pool = [make_body(info, candidates, rng) for _ in range(bodies)]
        latencies: list[float] = []
        statuses: dict[str, int] = {}

        async def one(body: dict) -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/rank", json=body)
                key = str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            latencies.append(time.perf_counter() - t0)
            if trace is not None:
                trace.append((time.time() - latencies[-1], latencies[-1]))
            statuses[key] = statuses.get(key, 0) + 1

        tasks = []
        start = time.perf_counter()
        next_at = 0.0
        while next_at < duration:
            delay = start + next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(pool[len(tasks) % len(pool)])))
            next_at += rng.exponential(1.0 / qps)
        sent_for = time.perf_counter() - start
        await asyncio.gather(*tasks)
    lat = np.array(latencies) * 1000
    ok = statuses.get("200", 0)
    return {
        "target_qps": qps,
        "sent": len(tasks),
        "achieved_qps": len(tasks) / sent_for,
        "ok": ok,
        "errors": len(tasks) - ok,
        "statuses": statuses,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "p999_ms": float(np.percentile(lat, 99.9)) if lat.size else None,
        "candidates": candidates,
    }
