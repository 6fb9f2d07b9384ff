"""The model server: a Starlette app over one DynamicBatcher.

    POST /v1/rank       {"context": {...}, "candidates": [{...}, ...]} → calibrated scores per task
    POST /v1/recommend  retrieval → (pre-ranking →) ranking, with --retriever (--preranker)
    GET  /v1/model      versions, features (context / candidate), tables and rows, delta lag
    GET  /healthz       the process is up
    GET  /readyz        a model is loaded and serving; `degraded` and why when it may be stale
    GET  /metrics       Prometheus: requests, latency, batch sizes, queue depth, cache, deltas
    GET  /v1/status     what the status page shows, as JSON (recent traffic, freshness, …)
    GET  /v1/variants   model variants (--variant): split, policy, health, clicks, shadows
    POST /v1/variants/promote, /v1/variants/rollback   routing changes (need --token)
    GET  /              the status page (HTML; polls /v1/status)

Never imports training code: the model directory (`streamrec.store`) is the contract.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from streamrec import __version__
from streamrec.config import FeedbackLoopConfig, ServingConfig
from streamrec.retrieval.impression_set import RETRIEVAL_SCORE
from streamrec.serving import exploration
from streamrec.serving.action_intake import ActionIntake
from streamrec.serving.batcher import DynamicBatcher, EncodedRows, Overloaded
from streamrec.serving.cache import PredictionCache, row_key
from streamrec.serving.compute_allocation import ComputeAllocator, ComputeLevel
from streamrec.serving.direct_routes import DirectRoutes
from streamrec.serving.feedback import FeedbackReader, ServedRequests
from streamrec.serving.impression_log import ImpressionLog
from streamrec.serving.inference_protocol import infer_response, tensor_metadata
from streamrec.serving.item_encoding import EncodingsBySnapshot, ItemEncodings
from streamrec.serving.metrics import ServerMetrics
from streamrec.serving.openapi import DOCS_PAGE, openapi_document, request_examples
from streamrec.serving.options import ServerOptions
from streamrec.serving.prerank_stage import PreRankStage
from streamrec.serving.recent_traffic import RecentTraffic
from streamrec.serving.request import CandidateRows, RequestError, TypedBodyReader
from streamrec.serving.retrieval_stage import (
    RecommendRequest,
    RetrievalStage,
)
from streamrec.serving.retrieval_watcher import RetrievalWatcher
from streamrec.serving.snapshot import Snapshot
from streamrec.serving.status_page import STATUS_PAGE
from streamrec.serving.stream_writer import QueuedStreamWriter
from streamrec.serving.variants import (
    PromoteBody,
    Variant,
    VariantSet,
    build_variants,
)
from streamrec.serving.watcher import Watcher
from streamrec.store import find_deltas_dir


@dataclass
class ServerState:
    batcher: DynamicBatcher
    cache: PredictionCache
    metrics: ServerMetrics
    settings: ServingConfig
    watcher: Watcher | None
    token: str | None
    retriever: RetrievalStage | None = None
    retrieval_watcher: RetrievalWatcher | None = None  # the retriever's deltas (online runs)
    preranker: PreRankStage | None = None
    prerank_watcher: Watcher | None = None  # the pre-ranker's deltas and new models
    guard_health: bool = False  # --token also on /healthz and /readyz
    allocator: ComputeAllocator | None = None  # DCAF: K1 / K2 per request under the SLO
    variants: VariantSet | None = None  # several ranking models, traffic split among them
    served: ServedRequests | None = None  # request → variant, for clicks from the action stream
    feedback: FeedbackReader | None = None
    background: set = field(default_factory=set)  # shadow scorings in flight
    traffic: RecentTraffic = field(default_factory=RecentTraffic)  # the status page's chart
    started_at: float = field(default_factory=time.time)
    last_failure: tuple[float, str] | None = None  # (when, why) of the last failed inference
    impressions: ImpressionLog | None = None  # what was served, with its features (--log-…)
    intake: ActionIntake | None = None  # POST /v1/feedback → the action stream (--actions)
    log_rank: bool = False  # /v1/rank answers are logged too
    ranker_encodings: EncodingsBySnapshot = field(  # /v1/recommend's catalog rows, encoded
        default_factory=lambda: EncodingsBySnapshot(per_request=(RETRIEVAL_SCORE,))
    )
    rng: np.random.Generator = field(default_factory=np.random.default_rng)  # exploration


log = logging.getLogger("streamrec.serving")
FAILURE_SHOWN_SECONDS = 60.0  # a failed inference keeps /readyz degraded this long


def _unset_swap(fn: Callable[[], None]) -> None:
    raise RuntimeError("the retrieval watcher runs only inside the server's lifespan")


def _on_loop(loop: asyncio.AbstractEventLoop) -> Callable[[Callable[[], None]], None]:
    """Run a function on the event loop — where /v1/recommend reads the retrieval stage,
    synchronously — and wait for it: once it returns, no request still reads what it replaced."""

    def run(fn: Callable[[], None]) -> None:
        done: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            try:
                fn()
                done.set_result(None)
            except BaseException as e:  # handed back to the waiting thread
                done.set_exception(e)

        loop.call_soon_threadsafe(call)
        done.result(timeout=60)

    return run


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(options: ServerOptions) -> Starlette:
    """Build the ASGI app from one `ServerOptions` (what `streamrec serve`'s flags map onto):
    the ranking model and its deltas, the retriever and pre-ranker of /v1/recommend, variants,
    the token, and changes to the model's `serving:` section (validated as a whole)."""
    state = _build_state(options)
    app = DirectRoutes(
        direct=("/v1/rank", "/v1/recommend"), routes=_routes(state), lifespan=_lifespan(state)
    )
    app.state.server = state
    return app


def _build_state(options: ServerOptions) -> ServerState:
    """Load every stage and open every stream; nothing runs until the lifespan starts it."""
    model_dir = options.model_dir
    snapshot = Snapshot.load(model_dir)  # the directory found once, its manifest read once
    directory = snapshot.loaded.path
    settings = options.settings(snapshot.config.serving)
    snapshot.encode_rows(settings.row_precision)
    metrics = ServerMetrics()

    def on_batch(rows: int, seconds: float) -> None:
        """In the batcher's worker, right after the batch's inference."""
        metrics.batch_rows.observe(rows)
        metrics.batch_seconds.observe(seconds)
        looked_up, unknown = batcher.snapshot.take_id_counts()
        metrics.ids_looked_up.inc(looked_up)
        metrics.ids_unknown.inc(unknown)
        for table, (resolved, misses, dram, disk) in batcher.snapshot.take_tier_counts().items():
            metrics.tier_lookups.labels(table).inc(resolved)
            metrics.tier_misses.labels(table).inc(misses)
            metrics.tier_rows.labels(table, "dram").set(dram)
            metrics.tier_rows.labels(table, "disk").set(disk)

    batcher = DynamicBatcher(
        snapshot,
        settings.max_batch_rows,
        settings.max_delay_ms,
        settings.max_queue_rows,
        on_batch,
        settings.threads,
    )
    watch = options.watch
    deltas_dir = options.deltas_dir or find_deltas_dir(model_dir)
    watcher = (
        Watcher(batcher, Path(model_dir), Path(deltas_dir), settings.poll_seconds, metrics,
                settings.row_precision)
        if watch
        else None
    )
    state = ServerState(
        batcher,
        PredictionCache(settings.cache_bytes),
        metrics,
        settings,
        watcher,
        options.token,
        guard_health=options.guard_health,
    )
    _load_recommend_stages(state, options)

    if settings.feedback.impressions or settings.feedback.actions:
        _open_feedback_streams(state, settings.feedback)  # before the variants: their click
        # reader reads the actions
    if (variants := options.variants) is not None:
        main = Variant(variants.main_name, str(directory), batcher, state.cache, watcher)
        state.variants = build_variants(variants, main, settings, watch)
        if variants.actions is not None:
            from streamrec.data.stream.connect import open_source

            state.served = ServedRequests()
            state.feedback = FeedbackReader(
                open_source(variants.actions, group="streamrec-serve-feedback"),
                state.served,
                frozenset(variants.reward_actions),
            )
    if settings.compute_allocation.enabled:
        state.allocator = ComputeAllocator(settings.compute_allocation)
    return state


def _load_recommend_stages(state: ServerState, options: ServerOptions) -> None:
    """The retriever (and pre-ranker) of /v1/recommend, each following its own deltas."""
    watch, poll_seconds = options.watch, state.settings.poll_seconds
    if (retriever_dir := options.retriever_dir) is not None:
        state.retriever = RetrievalStage.load(retriever_dir)
        if options.retrieve is not None:
            state.retriever.candidates = options.retrieve
        if watch:
            state.retrieval_watcher = RetrievalWatcher(
                state.retriever,
                Path(options.retriever_deltas or find_deltas_dir(retriever_dir)),
                _unset_swap,  # the event loop's, once it runs (lifespan)
                poll_seconds,
            )
    if (preranker_dir := options.preranker_dir) is not None:
        rows = state.settings.row_precision
        state.preranker = PreRankStage.load(preranker_dir, options.prerank_keep, rows)
        if watch:
            state.prerank_watcher = Watcher(
                state.preranker,
                Path(preranker_dir),
                find_deltas_dir(preranker_dir),
                poll_seconds,
                row_precision=rows,
            )


def _lifespan(state: ServerState) -> Callable[[Starlette], Any]:
    """Start the workers, watchers and writers before the first request; stop them (queued
    impressions written, tiered tables' private disk copies removed) after the last."""
    batcher, watcher = state.batcher, state.watcher
    others = list(state.variants.variants.values())[1:] if state.variants else []

    @asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        for v in others:
            v.batcher.start()
        if state.allocator is not None:
            state.allocator.start()
        watchers = [w for w in (watcher, state.prerank_watcher) if w is not None]
        watchers += [v.watcher for v in others if v.watcher is not None]
        for w in watchers:
            w.check_deltas()  # apply what is already on disk before serving
            w.start()
        if (rw := state.retrieval_watcher) is not None:
            rw.swap = lambda fn: fn()  # no request is in flight yet
            rw.check_deltas()
            rw.swap = _on_loop(asyncio.get_running_loop())
            rw.start()
            watchers.append(rw)
        health = (
            asyncio.get_running_loop().create_task(_watch_variants(state.variants))
            if state.variants is not None
            else None
        )
        if state.feedback is not None:
            state.feedback.start()
        writers = [w.writer for w in (state.impressions, state.intake) if w is not None]
        for writer in writers:
            writer.start()
        yield
        for writer in writers:
            writer.stop()  # what is queued is written before the process ends
        if health is not None:
            health.cancel()
        if state.feedback is not None:
            state.feedback.stop()
        for w in watchers:
            w.stop()
        if state.allocator is not None:
            await state.allocator.stop()
        for v in others:
            v.batcher.stop()
            v.batcher.snapshot.close()
        batcher.stop()
        batcher.snapshot.close()  # tiered tables: their private disk copies go now (uvicorn
        # re-raises SIGTERM after this, so nothing at interpreter exit would run)

    return lifespan


def _routes(state: ServerState) -> list[Route]:
    return [
        Route("/v1/rank", _endpoint(state, "rank", _rank), methods=["POST"]),
        Route("/v1/recommend", _endpoint(state, "recommend", _recommend), methods=["POST"]),
        Route("/v1/items", _endpoint(state, "items", _add_items), methods=["POST"]),
        Route("/v1/feedback", _endpoint(state, "feedback", _feedback), methods=["POST"]),
        Route("/v1/model", _endpoint(state, "model", _model), methods=["GET"]),
        Route("/healthz", _endpoint(state, "healthz", _healthz), methods=["GET"]),
        Route("/readyz", _endpoint(state, "readyz", _readyz), methods=["GET"]),
        Route("/metrics", _endpoint(state, "metrics", _metrics), methods=["GET"]),
        Route("/openapi.json", _endpoint(state, "openapi", _openapi), methods=["GET"]),
        Route("/docs", _endpoint(state, "docs", _docs), methods=["GET"]),
        Route("/v1/status", _endpoint(state, "status", _status), methods=["GET"]),
        Route("/v1/variants", _endpoint(state, "variants", _variants), methods=["GET"]),
        Route(
            "/v1/variants/promote", _endpoint(state, "promote", _promote), methods=["POST"]
        ),
        Route(
            "/v1/variants/rollback", _endpoint(state, "rollback", _rollback), methods=["POST"]
        ),
        Route("/", _endpoint(state, "page", _page), methods=["GET"]),
        *_inference_protocol_routes(state),
    ]


def _inference_protocol_routes(state: ServerState) -> list[Route]:
    """KServe v2 / Triton's REST API (`serving/inference_protocol.py`)."""
    model = "/v2/models/{name}"
    versioned = model + "/versions/{version}"
    return [
        Route("/v2", _endpoint(state, "v2_server", _v2_server), methods=["GET"]),
        Route("/v2/health/live", _endpoint(state, "v2_live", _v2_live), methods=["GET"]),
        Route("/v2/health/ready", _endpoint(state, "v2_ready", _v2_ready), methods=["GET"]),
        *(
            Route(path, _endpoint(state, name, handler), methods=[method])
            for base in (model, versioned)
            for path, name, handler, method in (
                (base, "v2_model", _v2_model, "GET"),
                (base + "/ready", "v2_model_ready", _v2_model_ready, "GET"),
                (base + "/infer", "infer", _v2_infer, "POST"),
            )
        ),
    ]


def _open_feedback_streams(state: ServerState, options: FeedbackLoopConfig) -> None:
    from streamrec.data.stream.address import parse_stream_address
    from streamrec.data.stream.connect import open_sink

    def writer(where: str) -> QueuedStreamWriter:
        address = parse_stream_address(where)  # a malformed address fails the start
        if address.path is not None:  # a local log: readers may open it before a write
            address.path.mkdir(parents=True, exist_ok=True)
        return QueuedStreamWriter(lambda: open_sink(address), str(address), options.max_queue)

    if options.impressions is not None:
        state.impressions = ImpressionLog(writer(options.impressions), options.sample_rate)
        state.log_rank = options.log_rank
    if options.actions is not None:
        state.intake = ActionIntake(writer(options.actions))


_PROBES = ("healthz", "readyz", "v2_live", "v2_ready")
_STATIC_PAGES = ("docs", "page")
_TRAFFIC = frozenset(("rank", "infer", "recommend", "items"))  # what the status page's chart counts


def _authorized(state: ServerState, name: str, request: Request) -> bool:
    if state.token is None or (name in _PROBES and not state.guard_health):
        return True  # orchestrators' probes carry no token
    if name in _STATIC_PAGES:
        return True  # static pages: they ask for the token to fetch their data
    given = request.headers.get("authorization", "").encode()
    return hmac.compare_digest(given, f"Bearer {state.token}".encode())  # constant time


def _endpoint(state: ServerState, name: str, handler):
    latency = state.metrics.latency.labels(name)  # bound once: `labels()` locks and hashes
    answered: dict[int, Any] = {}  # status → its bound request counter

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        if not _authorized(state, name, request):
            response: Response = _error(401, "missing or wrong bearer token")
        else:
            try:
                response = await handler(state, request)
            except RequestError as e:
                response = _error(e.status, e.message, e.headers)
            except Overloaded:
                response = _error(503, "overloaded: too many rows queued", {"Retry-After": "1"})
                state.metrics.unavailable.labels("overloaded").inc()
            except NonFiniteScores as e:  # never served as null: the model is broken
                response = _error(503, str(e))
                state.metrics.unavailable.labels("non_finite").inc()
                state.last_failure = (time.time(), str(e)[:300])
            except Exception as e:  # a failed inference (a disk tier's read error, …): 503
                log.exception("%s failed", name)
                why = f"inference failed: {type(e).__name__}: {e}"[:300]
                response = _error(503, why)
                state.metrics.unavailable.labels("inference_failed").inc()
                state.last_failure = (time.time(), why)
            except ClientDisconnect:  # closed mid-body (gone, or cut off as too slow)
                response = _error(400, "the client closed the connection before its body ended")
        elapsed = time.perf_counter() - started
        status = response.status_code
        if (counter := answered.get(status)) is None:
            counter = answered[status] = state.metrics.requests.labels(name, str(status))
        counter.inc()
        latency.observe(elapsed)
        if name in _TRAFFIC:
            state.traffic.record(elapsed, status)
        return response

    return endpoint


async def _body_bytes(state: ServerState, request: Request) -> bytes:
    """The raw body within `serving.max_body_bytes`: 413 before reading when the declared
    length is over the limit, and as soon as the bytes read pass it (a chunked body declares
    none), so an endless body never fills memory. (A body that trickles in too slowly has its
    connection closed by the protocol: `serving/http.py`.)"""
    declared = request.headers.get("content-length")
    limit = state.settings.max_body_bytes
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class NonFiniteScores(Exception):
    """The model returned NaN or infinite scores (e.g. a delta that poisoned its weights)."""


async def rank_rows(
    state: ServerState, rows: CandidateRows, user: object | None
) -> tuple[np.ndarray, str, Variant | None]:
    """Scores [rows, tasks], the model version and the variant that served them. With
    variants, the split picks one (`user` keys sticky routing); if its inference fails, it is
    taken out of rotation and the next variant answers — the caller never sees its failure.
    Shadows then score the same rows in the background."""
    vs = state.variants
    if vs is None:
        scores, version = await score_rows(state, rows, state.batcher, state.cache)
        return scores, version, None
    chosen = vs.choose(user)
    failure: Exception | None = None
    for variant in (chosen, *vs.others(chosen)):
        try:
            scores, version = await score_rows(state, rows, variant.batcher, variant.cache)
        except (RequestError, Overloaded):
            raise  # the request's fault, or the server's load: not the variant's
        except Exception as e:
            variant.failures += 1
            state.metrics.variant_failures.labels(variant.name).inc()
            vs.take_out(variant, f"inference failed: {type(e).__name__}: {e}")
            failure = e
            continue
        variant.served += 1
        state.metrics.variant_requests.labels(variant.name).inc()
        for shadow in vs.shadows():
            task = asyncio.get_running_loop().create_task(
                _shadow_score(state, shadow, rows, scores, variant.name)
            )
            state.background.add(task)
            task.add_done_callback(state.background.discard)
        return scores, version, variant
    raise failure  # every variant failed


async def _shadow_score(
    state: ServerState, shadow: Variant, rows: CandidateRows, served: np.ndarray, by: str
) -> None:
    """Score `rows` on a shadow and log how it differs from what `by` served."""
    try:
        scores = await _infer(state, shadow.batcher, rows, None)
    except Exception as e:  # a failing shadow leaves rotation; the answer has gone already
        shadow.failures += 1
        state.variants.take_out(shadow, f"inference failed: {type(e).__name__}: {e}")
        return
    diff = np.abs(scores[:, 0] - served[:, 0])
    shadow.shadow_scored += 1
    shadow.shadow_rows += rows.num_rows
    shadow.shadow_abs_diff += float(diff.sum())
    state.metrics.shadow_requests.labels(shadow.name).inc()
    state.variants.shadow_log.append({
        "at": time.time(),
        "shadow": shadow.name,
        "served_by": by,
        "rows": rows.num_rows,
        "mean_abs_diff": float(diff.mean()),
        "same_top": int(np.argmax(scores[:, 0])) == int(np.argmax(served[:, 0])),
    })


async def _watch_variants(variants: VariantSet) -> None:
    """Health checks of every variant, twice a second (out of rotation within a second of a
    problem its watcher or worker reports)."""
    while True:
        variants.check_health()
        await asyncio.sleep(0.5)


async def score_rows(
    state: ServerState, rows: CandidateRows, batcher: DynamicBatcher, cache: PredictionCache
) -> tuple[np.ndarray, str]:
    """Scores [rows, tasks] through cache → batcher; returns (scores, version). Every score
    served, cached or computed, goes into the score histogram."""
    scores, version = await _cached_scores(state, rows, batcher, cache)
    state.metrics.scores.observe_many(batcher.snapshot.split(scores)[0])
    return scores, version


async def _cached_scores(
    state: ServerState, rows: CandidateRows, batcher: DynamicBatcher, cache: PredictionCache
) -> tuple[np.ndarray, str]:
    snapshot = batcher.snapshot
    version = snapshot.serving_version
    n = rows.num_rows
    if not cache.enabled:  # every row computed: no per-row bookkeeping
        state.metrics.cache_misses.inc(n)
        return await _infer(state, batcher, rows, None), version
    results: list[np.ndarray | None] = [None] * n
    waiting: list[tuple[int, asyncio.Future]] = []  # rows another request is computing
    copies: list[tuple[int, int]] = []  # (row, earlier row of this request with the same key)
    to_compute: list[int] = []
    keys = [row_key(version, rows.row_values(i)) for i in range(n)]
    claimed: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            results[i] = hit
        elif (f := cache.inflight(key)) is not None:
            waiting.append((i, f))
        elif key in claimed:  # the same row twice in one request
            copies.append((i, claimed[key]))
        else:
            claimed[key] = i
            cache.start(key)
            to_compute.append(i)
    state.metrics.cache_hits.inc(n - len(to_compute))
    state.metrics.cache_misses.inc(len(to_compute))
    if to_compute:
        try:
            scores = await _infer(state, batcher, rows, to_compute)
        except BaseException as e:
            for i in to_compute:
                cache.finish(keys[i], None, e)
            raise
        for j, i in enumerate(to_compute):
            results[i] = scores[j]
            cache.finish(keys[i], scores[j], None)
    for i, future in waiting:
        results[i] = await future
    for i, j in copies:
        results[i] = results[j]
    return np.stack(results), version


async def _infer(
    state: ServerState, batcher: DynamicBatcher, rows: CandidateRows, subset: list[int] | None
) -> np.ndarray:
    """Scores [rows (or len(subset)), tasks] from the batcher; NonFiniteScores if any is NaN
    or infinite (they are never cached nor served)."""
    return await _submit(state, batcher, rows if subset is None else rows.take(subset))


async def _submit(
    state: ServerState, batcher: DynamicBatcher, rows: CandidateRows | EncodedRows
) -> np.ndarray:
    """Scores [rows, tasks] from the batcher; NonFiniteScores if any is NaN or infinite."""
    state.metrics.queue_rows.set(state.batcher.queued_rows)
    version = batcher.snapshot.serving_version
    scores = await batcher.submit(rows)
    if not np.isfinite(scores).all():
        raise NonFiniteScores(
            f"model {version} returned non-finite scores "
            f"({int((~np.isfinite(scores)).sum())} of {scores.size}); it needs a new model "
            "or delta"
        )
    return scores


_encode_json = msgspec.json.Encoder().encode


class _RequestIds:
    """Ids for requests that bring none: a random prefix per server process and a counter
    (unique across restarts and replicas, and ~10× cheaper than a uuid4 per request)."""

    def __init__(self) -> None:
        self.prefix = uuid.uuid4().hex[:12]
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}-{next(self.counter)}"


_request_ids = _RequestIds()


async def _rank(state: ServerState, request: Request) -> Response:
    body = await _body_bytes(state, request)
    snapshot = state.batcher.snapshot
    rows, request_id = snapshot.request_reader.read(
        body, state.settings.max_body_bytes, state.settings.max_candidates
    )
    user = rows.columns.get(USER_KEY, [None])[0] if rows.num_rows else None
    scores, version, variant = await rank_rows(state, rows, user)
    probabilities, sigma = snapshot.split(scores)
    answer = {
        "model_version": version,
        "scores": {t: probabilities[:, i].tolist() for i, t in enumerate(snapshot.tasks)},
        "request_id": request_id or _request_ids.next(),
    }
    if sigma is not None:  # the first task's logit σ per candidate (lr, gbdt_lr)
        answer["uncertainty"] = sigma.tolist()
    headers = _note_ranked(state, rows, scores, answer, variant)
    return Response(_encode_json(answer), media_type="application/json", headers=headers)


def _note_ranked(
    state: ServerState,
    rows: CandidateRows,
    scores: np.ndarray,
    answer: dict[str, Any],
    variant: Variant | None,
) -> dict[str, str] | None:
    """What every scoring API (/v1/rank, /v2 infer) does after scoring: the variant and request
    remembered for the feedback that may follow, missing features counted (and named in the
    returned headers), the impression logged. `answer` holds model_version and request_id."""
    _note_variant(state, answer, variant)
    if state.intake is not None:
        state.intake.recent.add(answer["request_id"])
    headers = None
    missing = rows.missing
    if missing:
        for feature, count in missing.items():
            state.metrics.missing_values.labels(feature).inc(count)
        headers = {"X-Missing-Features": ",".join(missing)}
    if state.log_rank and "item_id" in rows.columns and state.impressions.wants():
        ids = rows.columns["item_id"]
        features = [
            {f: column[i] for f, column in rows.columns.items() if column[i] is not None}
            for i in range(rows.num_rows)
        ]
        ranking = {i: float(s) for i, s in zip(ids, scores[:, 0], strict=True) if i is not None}
        _log_impressions(state, "rank", answer, {}, ids, features, {"ranking": ranking})
    return headers


def _served_model(state: ServerState, request: Request) -> Snapshot:
    """The snapshot a /v2/models/{name}[/versions/{version}] path names; 404 otherwise. The
    server serves one model, named by its config's `name`, at its newest version (a delta moves
    the version on; an older one is gone)."""
    snapshot = state.batcher.snapshot
    name = request.path_params["name"]
    if name != snapshot.config.name:
        raise RequestError(404, f"no model '{name}'; this server serves '{snapshot.config.name}'")
    version = request.path_params.get("version")
    if version is not None and version not in (
        snapshot.serving_version, str(snapshot.model_version)
    ):
        raise RequestError(
            404, f"model '{name}' version '{version}' is not served; the server serves "
            f"{snapshot.serving_version} (deltas move it on: leave the version out for the "
            "newest)"
        )
    return snapshot


async def _v2_infer(state: ServerState, request: Request) -> Response:
    """Open Inference Protocol inference (`serving/inference_protocol.py`): the same scoring as
    /v1/rank — cache, batcher, variants, impressions — from tensors."""
    snapshot = _served_model(state, request)
    body = await _body_bytes(state, request)
    call = snapshot.infer_reader.read(
        body,
        request.headers.get("inference-header-content-length"),
        state.settings.max_body_bytes,
        state.settings.max_candidates,
    )
    rows = call.rows
    scores, version, variant = await rank_rows(state, rows, rows.columns.get(USER_KEY, [None])[0])
    answer = {"model_version": version, "request_id": call.request_id or _request_ids.next()}
    headers = _note_ranked(state, rows, scores, answer, variant) or {}
    content, protocol_headers = infer_response(
        snapshot.config.name, version, answer["request_id"], call, scores, snapshot.tasks
    )
    return Response(content, headers={**headers, **protocol_headers})


async def _v2_server(state: ServerState, request: Request) -> Response:
    return JSONResponse(
        {"name": "streamrec", "version": __version__, "extensions": ["binary_tensor_data"]}
    )


async def _v2_live(state: ServerState, request: Request) -> Response:
    return JSONResponse({"live": True})


async def _v2_ready(state: ServerState, request: Request) -> Response:
    alive = state.batcher.alive
    return JSONResponse({"ready": alive}, status_code=200 if alive else 503)


async def _v2_model(state: ServerState, request: Request) -> Response:
    snapshot = _served_model(state, request)
    return JSONResponse({
        "name": snapshot.config.name,
        "versions": [snapshot.serving_version],
        "platform": f"streamrec_{snapshot.config.model.name}",
        **tensor_metadata(snapshot.kinds, snapshot.tasks),
    })


async def _v2_model_ready(state: ServerState, request: Request) -> Response:
    snapshot = _served_model(state, request)
    alive = state.batcher.alive
    return JSONResponse(
        {"name": snapshot.config.name, "ready": alive}, status_code=200 if alive else 503
    )


USER_KEY = "user_id"  # the feature that keys sticky routing (and a user's activity)


def _note_variant(state: ServerState, answer: dict[str, Any], variant: Variant | None) -> None:
    """Say which variant answered, and remember it for the clicks that may follow."""
    if variant is None:
        return
    answer["variant"] = variant.name
    if state.served is not None:
        state.served.remember(answer["request_id"], variant)


async def _recommend(state: ServerState, request: Request) -> Response:
    """The cascade: the retrieval stage picks K1 items; with a pre-ranker, it keeps the best K2
    of them; the ranking model scores those with the user as context; the top k by score come
    back with every stage's model version (and, with "debug", each stage's count and time).
    With compute allocation on, K1 and K2 are this request's level (`compute_allocation.py`);
    a level with K2 = 0 returns the last stage's order and says which stage scored it."""
    if state.retriever is None:
        raise RequestError(404, "this model directory has no retrieval stage")
    started = time.perf_counter()
    wanted = state.retriever.read_recommend(
        await _body_bytes(state, request), state.settings.max_body_bytes
    )
    allocator = state.allocator
    if allocator is None:
        return await _cascade(state, wanted, None)
    index, value = allocator.allocate(wanted.user, wanted.value)
    level = allocator.levels[index]
    state.metrics.allocation_level.labels(level.name).inc()
    try:
        return await _cascade(state, wanted, level, {"value": value, "lambda": allocator.lam})
    finally:  # failed requests took time too
        allocator.observe(time.perf_counter() - started)


async def _cascade(
    state: ServerState,
    wanted: RecommendRequest,
    level: ComputeLevel | None,
    allocation: dict[str, float] | None = None,
) -> Response:
    stage = state.retriever
    logged = state.impressions is not None and state.impressions.wants()
    clock = [time.perf_counter()]
    items, scores = stage.retrieve(wanted, level.k1 if level else None)
    retrieved = len(items)
    scored_by = "retrieval"
    # Each stage's score of every item it scored: for the impression log (logged requests),
    # and the retrieval score for models that read it as a feature (`retrieval_score`)
    by_stage: dict[str, dict[int, float]] = {}
    snapshot = state.batcher.snapshot
    pre = state.preranker
    wants_score = RETRIEVAL_SCORE in snapshot.candidate_features or (
        pre is not None and RETRIEVAL_SCORE in pre.snapshot.candidate_features
    )
    retrieved_items, retrieved_scores = items, scores

    def retrieval_scores() -> dict[int, float] | None:
        """item → retrieval score, made when a row path or the log needs it (a dict of 1,000
        items was ~5% of a request's CPU on the encoded path, which reads the array)."""
        if "retrieval" not in by_stage and (logged or wants_score):
            by_stage["retrieval"] = dict(
                zip(retrieved_items, retrieved_scores.tolist(), strict=True)
            )
        return by_stage.get("retrieval")

    if logged:
        retrieval_scores()
    clock.append(time.perf_counter())
    versions = {"retrieval": stage.serving_version, "ranking": snapshot.serving_version}
    preranked = pre is not None and (level is None or level.preranked)
    ranks = level is None or level.k2 > 0
    if preranked:
        versions["preranking"] = pre.version
        keep = pre.keep if level is None else max(level.k2, wanted.k)  # K2 = 0: k
        if len(items) > keep or not ranks:
            items, scores = await asyncio.to_thread(
                pre.top, wanted.user, items, stage, np.asarray(scores, np.float64), keep
            )
            scored_by = "preranking"
            if logged:
                by_stage["preranking"] = dict(zip(items, np.asarray(scores).tolist(), strict=True))
    elif ranks and level is not None:
        top = max(level.k2, wanted.k)
        items, scores = items[:top], scores[:top]  # retrieval's best K2
    clock.append(time.perf_counter())
    answer: dict[str, Any] = {"items": [], "scores": [], "retrieved": retrieved}
    answer["request_id"] = wanted.request_id or _request_ids.next()
    variant = None
    context = {f: v for f, v in wanted.user.items() if f in snapshot.context_features}
    candidates: list[dict[str, Any]] | None = None
    sigma = None
    if items and ranks:
        encodings = state.ranker_encodings.of(snapshot) if state.variants is None else None
        if encodings is not None:  # the catalog's cached encodings: no rows built
            ranked, versions["ranking"] = await _rank_encoded(
                state, encodings, wanted.user, items, np.asarray(scores, np.float64)
            )
        else:  # variants: each may read other features — rows every one of them can read
            candidates = stage.item_rows(items, snapshot.candidate_features, retrieval_scores())
            ranked, versions["ranking"], variant = await rank_rows(
                state,
                CandidateRows.from_dicts(context, candidates, snapshot.kinds),
                wanted.user.get(USER_KEY),
            )
        scores = ranked[:, 0]
        sigma = snapshot.split(ranked)[1]
        scored_by = "ranking"
    share = state.settings.explore_share
    if share > 0 and sigma is not None:
        order, explored = exploration.choose(
            np.asarray(scores), sigma, wanted.k, share, state.rng
        )
        answer["explored"] = explored  # the last `explored` items were explored
        state.metrics.explored_slots.inc(explored)
    else:
        order = np.argsort(-np.asarray(scores), kind="stable")[: wanted.k]
    answer["items"] = [items[j] for j in order]
    answer["scores"] = [float(scores[j]) for j in order]
    clock.append(time.perf_counter())
    seconds = dict(zip(("retrieval", "preranking", "ranking"), np.diff(clock), strict=True))
    ran = {"retrieval": True, "preranking": preranked, "ranking": ranks}
    for name, spent in seconds.items():
        if ran[name]:
            state.metrics.stage_seconds.labels(name).observe(spent)
    answer["versions"] = versions
    answer["scored_by"] = scored_by
    _note_variant(state, answer, variant)
    if level is not None:
        answer["level"] = level.name
    if wanted.debug:
        answer["debug"] = {
            "retrieved": retrieved,
            "preranked": len(items) if preranked else None,
            "ranked": len(items) if ranks else 0,
            "seconds": {k: float(v) for k, v in seconds.items() if ran[k]},
        }
        if allocation is not None:
            answer["debug"]["allocation"] = allocation
    if state.intake is not None:
        state.intake.recent.add(answer["request_id"])
    if logged:
        # Every stage's inputs are logged, so each can learn from what it served: the ranker's
        # context and candidate rows, the retriever's user and item features, the pre-ranker's.
        pre_features = pre.snapshot if pre is not None else None
        item_features = stage.logged_item_features(
            snapshot.candidate_features, pre_features.candidate_features if pre_features else ()
        )
        if candidates is None or item_features is not snapshot.candidate_features:
            shown = stage.item_rows(answer["items"], item_features, retrieval_scores())
        else:
            shown = [candidates[j] for j in order]
        if ranks and items:
            by_stage["ranking"] = dict(zip(answer["items"], answer["scores"], strict=True))
        logged_context = {
            f: v
            for f, v in wanted.user.items()
            if f in snapshot.context_features
            or f in stage.user_features
            or (pre_features is not None and f in pre_features.context_features)
        }
        _log_impressions(
            state, "recommend", answer, logged_context, answer["items"], shown, by_stage
        )
    return Response(_encode_json(answer), media_type="application/json")


async def _rank_encoded(
    state: ServerState,
    encodings: ItemEncodings,
    user: dict[str, Any],
    items: list[int],
    retrieval_scores: np.ndarray,
) -> tuple[np.ndarray, str]:
    """The ranker's scores [items, tasks] of catalog items and its version: rows assembled from
    the catalog's cached encodings (`serving/item_encoding.py`), batched with other requests.
    The prediction cache is not consulted: its keys are rows, which this path never builds."""
    batcher, stage = state.batcher, state.retriever
    assert stage is not None
    snapshot = batcher.snapshot
    per_request = {RETRIEVAL_SCORE: retrieval_scores}
    batch = encodings.batch(user, np.asarray(items, np.int64), stage, per_request)

    def rows_of(n: int) -> CandidateRows:
        """The first n items as rows for the model serving now (which may read other
        features than the one the batch was encoded for)."""
        current = batcher.snapshot
        some = items[:n]
        by_item = dict(zip(some, retrieval_scores[:n].tolist(), strict=True))
        context = {f: v for f, v in user.items() if f in current.context_features}
        rows = stage.item_rows(some, current.candidate_features, by_item)
        return CandidateRows.from_dicts(context, rows, current.kinds)

    if batcher.wants_warmup_rows():  # now and then: rows a reloaded model warms up on
        batcher.note_warmup_rows(rows_of(64))
    state.metrics.cache_misses.inc(len(items))
    encoded = EncodedRows(batch, snapshot, lambda: rows_of(len(items)))
    scores = await _submit(state, batcher, encoded)
    state.metrics.scores.observe_many(batcher.snapshot.split(scores)[0])
    return scores, snapshot.serving_version


def _log_impressions(
    state: ServerState,
    endpoint: str,
    answer: dict[str, Any],
    context: dict[str, Any],
    items: list[int],
    features: list[dict[str, Any]],
    by_stage: dict[str, dict[int, float]],
) -> None:
    """One record of what this answer showed (`serving/impression_log.py`); a full queue
    drops it and counts it, never failing the answer."""
    shown = [
        {
            "item_id": item,
            "features": row,
            "scores": {name: scores[item] for name, scores in by_stage.items() if item in scores},
        }
        for item, row in zip(items, features, strict=True)
    ]
    extra = {k: answer[k] for k in ("variant", "scored_by", "level", "explored") if k in answer}
    if not state.impressions.log(
        answer["request_id"], endpoint, context, shown, answer.get("versions", {}), **extra
    ):
        state.metrics.impressions_dropped.inc()
    else:
        state.metrics.impressions_logged.inc()


async def _feedback(state: ServerState, request: Request) -> Response:
    """A user's action on an answer's item → the action stream (202)."""
    if state.intake is None:
        raise RequestError(
            404, "this server has no action stream: start it with --actions STREAM"
        )
    answer = state.intake.accept(await _body_bytes(state, request), state.settings.max_body_bytes)
    state.metrics.feedback.labels("known" if answer["known_request"] else "unknown").inc()
    return JSONResponse(answer, status_code=202)


async def _add_items(state: ServerState, request: Request) -> Response:
    """Index new or changed items ({"items": [{item features}, …]}) without a rebuild."""
    if state.retriever is None:
        raise RequestError(404, "this server has no retrieval stage")
    items = state.retriever.read_items(
        await _body_bytes(state, request), state.settings.max_body_bytes
    )
    await asyncio.to_thread(state.retriever.add_items, items)
    return JSONResponse({"indexed": len(items), "items_in_index": state.retriever.retriever.size})


async def _model(state: ServerState, request: Request) -> Response:
    info = state.batcher.snapshot.describe()
    w = state.watcher
    if w is not None:
        info["deltas_applied"] = w.deltas_applied
        info["deltas_skipped"] = w.deltas_skipped
        info["reloads"] = w.reloads
        info["last_reload"] = w.last_reload
        info["quarantined_deltas"] = [
            {"version": v, "reason": reason} for v, (reason, _) in sorted(w.quarantined.items())
        ]
        info["degraded"] = _degraded(state)
        if w.newest_delta_seen_at and info["last_delta_applied_at"]:
            info["seconds_behind_newest_delta"] = max(
                0.0, w.newest_delta_seen_at - info["last_delta_applied_at"]
            )
    info["cache"] = {"hit_rate": state.cache.hit_rate(), "bytes": state.cache.bytes}
    if state.retriever is not None:
        info["retrieval"] = state.retriever.describe()
        if (rw := state.retrieval_watcher) is not None:
            info["retrieval"]["deltas_skipped"] = rw.deltas_skipped
            info["retrieval"]["quarantined_deltas"] = [
                {"version": v, "reason": why} for v, why in sorted(rw.quarantined.items())
            ]
    if state.variants is not None:
        info["variants"] = state.variants.describe()
    if state.preranker is not None:
        info["preranking"] = state.preranker.describe()
        if (pw := state.prerank_watcher) is not None:
            info["preranking"]["deltas_applied"] = pw.deltas_applied
            info["preranking"]["reloads"] = pw.reloads
    return JSONResponse(info)


async def _openapi(state: ServerState, request: Request) -> Response:
    snapshot = state.batcher.snapshot
    retriever = state.retriever
    examples = request_examples(
        snapshot.kinds,
        snapshot.context_features,
        snapshot.candidate_features,
        None
        if retriever is None
        else {f: retriever.kinds[f] for f in retriever.user_features if f in retriever.kinds},
    )
    document = openapi_document(
        snapshot.request_reader.body_type,
        snapshot.schema.task_names or ["label"],
        {"name": snapshot.config.model.name, "version": snapshot.serving_version},
        retrieval=None
        if state.retriever is None
        else (state.retriever.recommend_reader.body_type, state.retriever.items_reader.body_type),
        variants=state.variants is not None,
        feedback=state.intake is not None,
        token=state.token is not None,
        token_guards_health=state.guard_health,
        examples=examples,
    )
    return JSONResponse(document)


async def _docs(state: ServerState, request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


def _degraded(state: ServerState) -> list[str]:
    """Why a served model may be stale (the ranker's reasons, then the pre-ranker's), or
    what it serves may not be learnt from (a feedback stream that cannot be written)."""
    reasons = state.watcher.degraded_reasons() if state.watcher is not None else []
    if state.prerank_watcher is not None:
        reasons += [f"pre-ranker: {r}" for r in state.prerank_watcher.degraded_reasons()]
    if state.last_failure is not None:
        when, why = state.last_failure
        age = time.time() - when
        if age < FAILURE_SHOWN_SECONDS:
            reasons.append(f"{why} ({age:.0f} s ago)")
    for what, log in (("impression log", state.impressions), ("action stream", state.intake)):
        since = log.writer.unavailable_since if log is not None else None
        if since is not None:
            reasons.append(
                f"{what} {log.writer.name} unavailable for {time.time() - since:.0f} s "
                f"({log.writer.last_error}); {log.writer.queued} records queued"
            )
    return reasons


async def _page(state: ServerState, request: Request) -> Response:
    return HTMLResponse(STATUS_PAGE)


async def _status(state: ServerState, request: Request) -> Response:
    """Everything the status page shows, in one JSON object (for scripts too)."""
    snapshot = state.batcher.snapshot
    w = state.watcher
    versions: dict[str, Any] = {
        "model": snapshot.model_version,
        "delta": snapshot.delta_version,
        "serving": snapshot.serving_version,
    }
    if state.retriever is not None:
        versions["retrieval"] = state.retriever.serving_version
    if state.preranker is not None:
        versions["preranking"] = state.preranker.version
    degraded = _degraded(state)
    responses = [
        {"endpoint": sample.labels["endpoint"], "status": sample.labels["status"],
         "count": int(sample.value)}
        for family in state.metrics.requests.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    ]
    body = {
        "model": snapshot.config.model.name,
        "versions": versions,
        "status": "degraded" if degraded else ("ok" if state.batcher.alive else "not ready"),
        "degraded": degraded,
        "uptime_s": time.time() - state.started_at,
        "freshness": {
            "event_to_served_s": w.event_to_served_s if w else None,
            "delta_lag_s": w.delta_lag_s if w else None,
            "last_delta_applied_at": snapshot.delta_applied_at,
        },
        "traffic": {
            "bucket_seconds": state.traffic.bucket_seconds,
            "last_minute": state.traffic.summary(60.0),
            "series": [p.to_json() for p in state.traffic.series()],
        },
        "cache": {"hit_rate": state.cache.hit_rate(), "bytes": state.cache.bytes},
        "queue_rows": state.batcher.queued_rows,
        "deltas": {
            "applied": w.deltas_applied if w else 0,
            "skipped": w.deltas_skipped if w else 0,
            "quarantined": len(w.quarantined) if w else 0,
        },
        "reloads": w.reloads if w else 0,
        "last_reload": w.last_reload if w else None,
        "training_health": w.training_health if w else [],
        "compute_allocation": state.allocator.describe() if state.allocator else None,
        "variants": _variants_body(state) if state.variants else None,
        "responses": sorted(responses, key=lambda r: (r["endpoint"], r["status"])),
        "impression_log": state.impressions.describe() if state.impressions else None,
        "feedback": state.intake.describe() if state.intake else None,
    }
    return JSONResponse(body)


def _variant_set(state: ServerState) -> VariantSet:
    if state.variants is None:
        raise RequestError(
            404, "this server holds one model: start it with --variant NAME=DIR to serve more"
        )
    return state.variants


def _variants_body(state: ServerState) -> dict[str, Any]:
    vs = _variant_set(state)
    body = vs.describe()
    body["recent_shadow_scores"] = list(vs.shadow_log)[-20:]
    if state.feedback is not None:
        body["feedback"] = dict(state.feedback.counts)
    return body


async def _variants(state: ServerState, request: Request) -> Response:
    return JSONResponse(_variants_body(state))


def _admin(state: ServerState) -> VariantSet:
    """Routing changes need an authenticated caller: refused on a server without --token."""
    vs = _variant_set(state)
    if state.token is None:
        raise RequestError(403, "routing changes need a server started with --token")
    return vs


_promote_reader = TypedBodyReader(PromoteBody, "promote")


async def _promote(state: ServerState, request: Request) -> Response:
    """{"variant": NAME}: all traffic to NAME; the split before is kept for a rollback."""
    vs = _admin(state)
    name = _promote_reader.read(
        await _body_bytes(state, request), state.settings.max_body_bytes
    ).variant
    try:
        weights = vs.promote(name)
    except KeyError:
        raise RequestError(404, f"no variant {name!r}; serving {sorted(vs.variants)}") from None
    except ValueError as e:
        raise RequestError(409, str(e)) from None
    return JSONResponse({"promoted": name, "weights": weights, "policy": vs.policy})


async def _rollback(state: ServerState, request: Request) -> Response:
    vs = _admin(state)
    try:
        weights = vs.rollback()
    except LookupError as e:
        raise RequestError(409, str(e)) from None
    return JSONResponse({"weights": weights, "policy": vs.policy})


async def _healthz(state: ServerState, request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readyz(state: ServerState, request: Request) -> Response:
    """200 while a model serves — also when degraded (stale but answering: taking it out of
    rotation would not help); the reasons say what an operator should look at."""
    alive = state.batcher.alive
    reasons = _degraded(state)
    body = {"ready": alive, "status": "degraded" if reasons else "ok", "degraded": reasons}
    if not alive:
        state.metrics.unavailable.labels("not_ready").inc()
    return JSONResponse(body, status_code=200 if alive else 503)


async def _metrics(state: ServerState, request: Request) -> Response:
    state.metrics.queue_rows.set(state.batcher.queued_rows)
    if (allocator := state.allocator) is not None:
        state.metrics.allocation_lambda.set(allocator.lam)
        state.metrics.allocation_observed.set(allocator.observed_s)
    if state.variants is not None:
        for v in state.variants.variants.values():
            state.metrics.variant_in_rotation.labels(v.name).set(int(v.in_rotation))
            state.metrics.variant_clicks.labels(v.name).set(v.clicks)
    snapshot = state.batcher.snapshot
    state.metrics.model.info(
        {
            "model": snapshot.config.model.name,
            "model_version": str(snapshot.model_version),
            "delta_version": str(snapshot.delta_version),
            "serving_version": str(snapshot.serving_version),
        }
    )
    return Response(generate_latest(state.metrics.registry), media_type="text/plain; version=0.0.4")
