"""Open-loop load generator for /v1/rank (`streamrec bench serve`) or any POST endpoint.

Requests are sent at Poisson arrival times regardless of how fast answers come back (open loop),
so a slow server shows up as latency and errors rather than as a politely lower request rate —
the mistake closed-loop generators make (coordinated omission). Request bodies are made from the
server's own /v1/model description: ints, floats or strings of the right kind per feature, and
encoded once; a lean keep-alive HTTP/1.1 client sends them (see `_Connections`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from urllib.parse import urlsplit

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


class _Connections:
    """Keep-alive HTTP/1.1 connections to one server, opened on demand and reused.

    A raw asyncio client, not httpx: on a small machine the load generator shares the CPU with
    the server, and a general-purpose client spends ~1 ms of CPU per request — it saturates its
    core long before the server does. Requests are pre-encoded bytes; responses are read just
    far enough to know the status and to keep the connection usable."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self, raw: bytes) -> int:
        reused = bool(self.idle)
        conn = self.idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        writer.write(raw)
        status_line = await reader.readline()
        if not status_line and reused:  # the server closed an idle keep-alive connection
            writer.close()
            return await self.send_on_new_connection(raw)
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value == b"chunked"
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            while size := int((await reader.readline()).strip(), 16):
                await reader.readexactly(size + 2)
            await reader.readline()
        elif length:
            await reader.readexactly(length)
        if close:
            writer.close()
        else:
            self.idle.append(conn)
        return status

    async def send_on_new_connection(self, raw: bytes) -> int:
        self.idle.append(await asyncio.open_connection(self.host, self.port))
        return await self.send(raw)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


def _encode_request(path: str, host: str, body: dict, token: str | None) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
    )
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    return (head + "\r\n").encode() + payload


async def run_load(
    url: str,
    qps: float,
    duration: float,
    candidates: int,
    token: str | None = None,
    seed: int = 0,
    bodies: int = 64,
    trace: list[tuple[float, float]] | None = None,
    endpoint: str = "/v1/rank",
    request_bodies: list[dict] | None = None,
) -> dict:
    """Poisson load for `duration` seconds; returns latency percentiles and status counts.
    `trace`, when given, receives (send time from time.time(), latency s) per request.
    Bodies: `request_bodies` sent in turn to `endpoint`, or by default `bodies` random
    /v1/rank bodies of `candidates` rows made from the server's /v1/model."""
    if qps <= 0 or duration <= 0:
        raise ValueError("qps and duration must be positive")
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url}: the load generator speaks plain http://host:port")
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if request_bodies is None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0) as client:
            info = (await client.get("/v1/model")).raise_for_status().json()
        request_bodies = [make_body(info, candidates, rng) for _ in range(bodies)]
    path = parts.path.rstrip("/") + endpoint
    pool = [_encode_request(path, parts.netloc, body, token) for body in request_bodies]
    connections = _Connections(parts.hostname, parts.port or 80)
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def one(raw: bytes) -> None:
        t0 = time.perf_counter()
        try:
            key = str(await asyncio.wait_for(connections.send(raw), timeout=30.0))
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.TimeoutError,
            ValueError,
            IndexError,  # not an HTTP status line
        ) as e:
            key = type(e).__name__
        latencies.append(time.perf_counter() - t0)
        if trace is not None:
            trace.append((time.time() - latencies[-1], latencies[-1]))
        statuses[key] = statuses.get(key, 0) + 1

    # Only the requests in flight are kept: gathering every task of a long run at its end
    # blocked this loop for ~20 ms, and the last requests' latency showed it.
    in_flight: set[asyncio.Task] = set()
    sent = 0
    # The collector off while timing: its full passes over a heap of thousands of live tasks
    # stalled this loop for 100–150 ms and showed up as server latency.
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        next_at = 0.0
        while next_at < duration:
            delay = start + next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(pool[sent % len(pool)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
            next_at += rng.exponential(1.0 / qps)
        sent_for = time.perf_counter() - start
        while in_flight:
            await asyncio.wait(set(in_flight))
    finally:
        if collecting:
            gc.enable()
    connections.close()
    lat = np.array(latencies) * 1000
    ok = statuses.get("200", 0)
    return {
        "target_qps": qps,
        "sent": sent,
        "achieved_qps": sent / sent_for,
        "ok": ok,
        "errors": sent - ok,
        "statuses": statuses,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "p999_ms": float(np.percentile(lat, 99.9)) if lat.size else None,
        "candidates": candidates,
    }
