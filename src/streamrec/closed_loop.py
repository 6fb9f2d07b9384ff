"""The closed loop, run for real with simulated users: serve → log → act → join → train → sync.

Two servers (`streamrec serve` processes) answer /v1/recommend from the same trained models:
the *closed loop* one logs its impressions (`--log-impressions`) and takes its users' actions on
POST /v1/feedback (`--actions`), and an online trainer (in this process) joins the two streams,
learns, and sends deltas back to it every second; the *frozen* one never changes. Beside them,
two references computed in process: the retriever's own order and popularity.

The user model (`SimulatedUsers`): each user's held-out future interactions are the items they
would engage with. A request shows k items; the item at 0-based position p is examined with
probability 1 / log2(p + 2) (the DCG discount read as position bias: 1 at the top, 0.5 at the
third place, 0.29 at the tenth) and clicked if examined and in the user's future. A clicked
item is consumed: that arm never shows it to that user again and it no longer counts as
relevant. Every arm sees the same users in the same rounds with the same random draws per
(round, user, position), so differences come from the lists, not the dice.

Users return, as a product's do: the run draws an active population (twice the users of a
round) and each round samples from it, so a user comes back about every other round — and a
model that learnt from their last visit can show them something else than what they ignored.

A round: a sample of the active users asks each arm for k items; clicks go back (to the
closed loop's server only, over HTTP); then the round waits until the trainer has trained on
every impression logged so far and the server serves the resulting delta — so round r+1 is
served by a model that learnt from rounds ≤ r, as a loop that keeps up would be.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import pyarrow as pa

from streamrec.config import JobConfig
from streamrec.data.stream import LocalLogSource
from streamrec.data.stream.joined import JoinedSource
from streamrec.data.stream.joiner import OnlineJoiner
from streamrec.models.persistence import load_model
from streamrec.retrieval.evaluate import user_items
from streamrec.schema import SECONDS_PER_UNIT, Label
from streamrec.serving.loadgen import run_load
from streamrec.serving.retrieval_stage import RecommendRequest, RetrievalStage
from streamrec.train.online import OnlineTrainer

ARMS = ("closed_loop", "frozen", "retrieval_only", "popularity")


def examination(positions: np.ndarray) -> np.ndarray:
    """P(a user examines the item at each 0-based position): 1 / log2(position + 2)."""
    return 1.0 / np.log2(np.asarray(positions, np.float64) + 2.0)


@dataclass
class SimulatedUsers:
    """queries: user → the /v1/recommend `user` body (the retriever's user features as of the
    end of training, history included); future: user → held-out items; seen: user → training
    items (never recommended); popular: training items, most interactions first."""

    queries: dict[int, dict[str, Any]]
    future: dict[int, set[int]]
    seen: dict[int, set[int]]
    popular: list[int]

    @classmethod
    def from_split(
        cls, train: pa.Table, test: pa.Table, user_features: list[str], history: int
    ) -> SimulatedUsers:
        seen_lists = user_items(train)
        future = {u: set(v) for u, v in user_items(test).items() if u in seen_lists}
        users = train["user_id"].to_numpy()
        _, last_reversed = np.unique(users[::-1], return_index=True)
        last = train.take(pa.array(np.sort(len(users) - 1 - last_reversed))).to_pylist()
        queries = {}
        for row in last:
            u = row["user_id"]
            if u not in future:
                continue
            query = {f: row[f] for f in user_features if f != "history" and f in row}
            if "history" in user_features:
                query["history"] = seen_lists[u][-history:]
            queries[u] = query
        items, counts = np.unique(train["item_id"].to_numpy(), return_counts=True)
        popular = items[np.argsort(-counts, kind="stable")].tolist()
        seen = {u: set(seen_lists[u]) for u in future}
        return cls(queries, future, seen, popular)


class Arm(Protocol):
    name: str

    def recommend(
        self, user: int, query: dict[str, Any], exclude: set[int], k: int
    ) -> tuple[list[int], str | None]:
        """k items for the user, never one in `exclude` → (items, request id)."""
        ...

    def feedback(self, request_id: str | None, item: int) -> None: ...


class HttpArm:
    """A server's /v1/recommend; clicks go to its /v1/feedback when `learns`."""

    def __init__(self, name: str, url: str, learns: bool) -> None:
        self.name, self.learns = name, learns
        self.client = httpx.Client(base_url=url, timeout=60)
        self.explored: dict[str, set[int]] = {}  # request → the items it showed to explore
        self.explored_clicks = 0

    def recommend(self, user, query, exclude, k):
        body = {"user": query, "k": k, "exclude": sorted(exclude)}
        answer = self.client.post("/v1/recommend", json=body)
        answer.raise_for_status()
        got = answer.json()
        if got.get("explored"):  # serving.explore_share: the last n items were explored
            self.explored[got["request_id"]] = set(got["items"][-got["explored"] :])
        return got["items"], got["request_id"]

    @property
    def explored_slots(self) -> int:
        return sum(len(items) for items in self.explored.values())

    def feedback(self, request_id, item):
        if item in self.explored.get(request_id, ()):
            self.explored_clicks += 1
        if self.learns:
            r = self.client.post(
                "/v1/feedback", json={"request_id": request_id, "item_id": item, "action": "click"}
            )
            r.raise_for_status()


class RetrievalArm:
    """The retriever's own order (the server's retrieval stage, in process)."""

    name = "retrieval_only"

    def __init__(self, stage: RetrievalStage) -> None:
        self.stage = stage

    def recommend(self, user, query, exclude, k):
        items, _ = self.stage.retrieve(RecommendRequest(query, k, exclude), k)
        return items[:k], None

    def feedback(self, request_id, item):
        pass


class PopularityArm:
    name = "popularity"

    def __init__(self, popular: list[int]) -> None:
        self.popular = popular

    def recommend(self, user, query, exclude, k):
        out = []
        for item in self.popular:
            if item not in exclude:
                out.append(item)
                if len(out) == k:
                    break
        return out, None

    def feedback(self, request_id, item):
        pass


@dataclass
class RoundStats:
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    recall_sum: float = 0.0  # Σ over requests with a remaining future: hits / min(k, |future|)
    recall_requests: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / max(1, self.impressions)

    @property
    def recall(self) -> float:
        return self.recall_sum / max(1, self.recall_requests)


@dataclass
class Simulation:
    users: SimulatedUsers
    arms: list[Arm]
    k: int = 10
    seed: int = 0
    rounds: list[dict[str, RoundStats]] = field(default_factory=list)

    active_users: int = 300  # the returning users each round samples from

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._consumed: dict[str, dict[int, set[int]]] = {a.name: {} for a in self.arms}
        everyone = sorted(self.users.queries)
        self.active = self._rng.choice(
            everyone, min(self.active_users, len(everyone)), replace=False
        ).tolist()

    def run_round(self, users_per_round: int) -> dict[str, RoundStats]:
        active = self.active
        sample = self._rng.choice(active, min(users_per_round, len(active)), replace=False)
        draws = self._rng.random((len(sample), self.k))  # the same dice for every arm
        look = examination(np.arange(self.k))
        stats = {}
        for arm in self.arms:
            s = RoundStats()
            for j, user in enumerate(sample.tolist()):
                done = self._consumed[arm.name].setdefault(user, set())
                remaining = self.users.future[user] - done
                items, request_id = arm.recommend(
                    user, self.users.queries[user], self.users.seen[user] | done, self.k
                )
                hits = np.fromiter((i in remaining for i in items), bool, len(items))
                clicked = hits & (draws[j, : len(items)] < look[: len(items)])
                for position in np.flatnonzero(clicked).tolist():
                    arm.feedback(request_id, items[position])
                    done.add(items[position])
                s.requests += 1
                s.impressions += len(items)
                s.clicks += int(clicked.sum())
                if remaining:
                    s.recall_sum += float(hits.sum()) / min(self.k, len(remaining))
                    s.recall_requests += 1
            stats[arm.name] = s
        self.rounds.append(stats)
        return stats

    def summary(self) -> dict[str, dict[str, float]]:
        """ctr and recall@k per arm over the last third of the rounds (at least one)."""
        last = self.rounds[-max(1, len(self.rounds) // 3) :]
        out: dict[str, dict[str, float]] = {"ctr": {}, "recall": {}}
        for arm in self.arms:
            total = RoundStats()
            for r in last:
                s = r[arm.name]
                total.impressions += s.impressions
                total.clicks += s.clicks
                total.recall_sum += s.recall_sum
                total.recall_requests += s.recall_requests
            out["ctr"][arm.name] = total.ctr
            out["recall"][arm.name] = total.recall
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies. Ctrl-C ends
    the demo with an immediate exit (launch.py), and a kill -9 skips every `finally`: neither
    may leave servers behind holding their ports. (Linux; elsewhere a no-op.)"""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ServerProcess:
    """`streamrec serve ARGS` on a free loopback port, its output in `log_file`."""

    def __init__(self, args: list[str], log_file: Path, timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_file, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamrec", "serve", *args, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: see {log_file}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start in {timeout:g} s: see {log_file}")
            time.sleep(0.2)

    def get(self, path: str) -> dict[str, Any]:
        return httpx.get(self.url + path, timeout=30).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class LoopTrainer(threading.Thread):
    """`OnlineTrainer` over the joined impression log and action stream, on a thread."""

    def __init__(
        self, config: JobConfig, impressions: Path, actions: Path, out: Path, group: str
    ) -> None:
        super().__init__(daemon=True, name=f"streamrec-loop-trainer-{group}")
        j = config.online.join
        self.joiner = OnlineJoiner(j.tasks, j.window_seconds, j.allowed_lateness, j.max_pending)
        source = JoinedSource(  # `group`: this trainer's own committed reading position
            LocalLogSource(impressions, group),
            LocalLogSource(actions, group),
            self.joiner,
            config.schema_.timestamp,
            SECONDS_PER_UNIT[config.schema_.timestamp_unit],
        )
        self.source = source
        self.trainer = OnlineTrainer(config, source, out, progress=False)
        self.status: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.status = self.trainer.run()
        except BaseException as e:  # reported by `stop`
            self.error = e
        finally:
            self.source.close()

    def stop(self) -> dict[str, Any]:
        self.trainer.stop_requested.set()
        self.join(timeout=120)
        if self.error is not None:
            raise RuntimeError(f"the loop's trainer failed: {self.error!r}") from self.error
        return self.status


def wait_for_sync(
    trainer: LoopTrainer,
    server: ServerProcess,
    impressions: int,
    timeout: float = 30.0,
    retriever_trainer: LoopTrainer | None = None,
) -> bool:
    """Until each trainer has trained on `impressions` joined examples and the server serves
    its newest delta — the ranker's, and the retriever's when it learns too (→ True), or
    `timeout` seconds (→ False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = server.get("/v1/model")
        rankers = _caught_up(trainer, impressions, served.get("delta_version", 0))
        retrieval = retriever_trainer is None or _caught_up(
            retriever_trainer, impressions, served.get("retrieval", {}).get("delta_version", 0)
        )
        if rankers and retrieval:
            return True
        time.sleep(0.1)
    return False


def wait_until_served(server: ServerProcess, final: dict[str, int], timeout: float = 30.0) -> None:
    """Until the server serves the ranker's delta `final["delta_version"]` and, when given,
    the retriever's `final["retrieval"]` (or `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = server.get("/v1/model")
        ranker = model.get("delta_version", 0) >= final["delta_version"]
        retriever = "retrieval" not in final or (
            model.get("retrieval", {}).get("delta_version", 0) >= final["retrieval"]
        )
        if ranker and retriever:
            return
        time.sleep(0.1)


def _caught_up(trainer: LoopTrainer, impressions: int, served_delta: int) -> bool:
    if trainer.error is not None:
        raise RuntimeError(f"the loop's trainer failed: {trainer.error!r}")
    t = trainer.trainer
    return t.events_consumed >= impressions and t.synced and served_delta >= t.exporter.version


def loop_config(ranker: JobConfig, ranker_dir: Path) -> JobConfig:
    """The ranker's config for learning from the loop: start from the trained model, a delta
    every second, a one-second join window (simulated clicks come within a second), batches
    of 256 joined examples."""
    cfg = ranker.model_copy(deep=True)
    cfg.online.init_model = str(ranker_dir)
    cfg.online.sync_interval_seconds = 1.0
    cfg.online.checkpoint_interval_seconds = 10.0
    cfg.online.join.window_seconds = 1.0
    label = cfg.schema_.labels[0].name if cfg.schema_.labels else "label"
    cfg.online.join.tasks = {"click": label}
    cfg.data.batch_size = 256
    return cfg


def retriever_loop_config(retriever: JobConfig, retriever_dir: Path) -> JobConfig:
    """The retriever's config for learning from the loop: as the ranker's (`loop_config`), its
    examples the joined impressions labelled by clicks — the clicked ones are its positives
    (`models/two_tower.py`) — in batches of 1,024 joined impressions, so that each in-batch
    softmax has a few dozen clicked items to tell apart. The learning is the embedding rows'
    (the users' and the clicked items', with their own row optimizers); the towers' dense
    layers move at a hundredth of their offline rate. A fresh Adam moves every weight by about
    its rate on the first steps, whatever the gradient, and a few dozen clicks are no reason to
    move a trained tower: on ML-100k, at the offline rate the loop's CTR fell to 1.0× frozen
    (recall@10 0.060); at a tenth it was 0.8–1.24× from run to run; at a hundredth 1.19–1.43×
    over three runs, each above the same run with the retriever frozen (1.03–1.19×)."""
    cfg = retriever.model_copy(deep=True)
    cfg.train.dense_lr = retriever.train.dense_lr / 100
    cfg.online.init_model = str(retriever_dir)
    cfg.online.sync_interval_seconds = 1.0
    cfg.online.checkpoint_interval_seconds = 10.0
    cfg.online.join.window_seconds = 1.0
    cfg.online.join.tasks = {"click": "label"}
    cfg.schema_ = cfg.schema_.model_copy(update={"labels": [Label(name="label")]})
    cfg.data.batch_size = 1024
    return cfg


def measure_p99(
    url: str, queries: list[dict[str, Any]], k: int, qps: float, seconds: float
) -> float | None:
    """p99 ms of /v1/recommend at `qps` (open loop, Poisson arrivals)."""
    bodies = [{"user": q, "k": k} for q in queries]
    report = asyncio.run(
        run_load(url, qps, seconds, 0, endpoint="/v1/recommend", request_bodies=bodies)
    )
    return report["p99_ms"]


def compare_p99(
    urls: dict[str, str], queries: list[dict[str, Any]], k: int, qps: float, repeats: int = 3
) -> dict[str, float | None]:
    """Median p99 ms of each server, measured in turn `repeats` times (A B A B …: both see the
    same host noise), after one warm-up request per query on each: the servers then differ in
    what they do per request (logging), not in which users' vectors their caches hold (a
    learning retriever's cache starts empty at each delta — a cost of learning, which
    `benchmarks/retrieval_freshness.py` measures)."""
    with httpx.Client(timeout=30) as client:
        for url in urls.values():
            for q in queries:
                client.post(url + "/v1/recommend", json={"user": q, "k": k})
    runs: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(repeats):
        for name, url in urls.items():
            p99 = measure_p99(url, queries, k, qps, 8.0)
            if p99 is not None:
                runs[name].append(p99)
    return {name: float(np.median(v)) if v else None for name, v in runs.items()}


def run_closed_loop(
    ranker_config: JobConfig,
    ranker_dir: Path,
    retriever_dir: Path,
    users: SimulatedUsers,
    workdir: Path,
    rounds: int = 9,
    users_per_round: int = 150,
    k: int = 10,
    k1: int = 1000,
    seed: int = 0,
    latency_qps: float = 0.0,
    log: Callable[[str], None] = print,
    before_stop: Callable[[str], Any] | None = None,
    retriever_learns: bool = True,
    explore_share: float = 0.0,
) -> dict[str, Any]:
    """The four arms over `rounds` rounds (see the module docstring) → the benchmark's JSON
    object (`benchmarks/closed_loop.py`). In the closed loop the ranker learns from its
    traffic and, with `retriever_learns`, so does the retriever (its own online trainer over
    the same two streams; the server serves its deltas too). latency_qps > 0: afterwards, p99
    of the logging server and of the frozen one at that rate. `before_stop(url)` is called
    with the closed loop server's URL after the rounds (its answer is the result's
    "before_stop"). explore_share > 0: the closed loop's server explores that share of its
    slots (`serve --explore-share`; a ranker that estimates its uncertainty), and the result
    says how many slots it explored and how often they were clicked."""
    workdir.mkdir(parents=True, exist_ok=True)
    imps, acts, online = workdir / "impressions", workdir / "actions", workdir / "online"
    online_retriever = workdir / "online_retriever"
    common = [str(ranker_dir), "--retriever", str(retriever_dir), "--retrieve", str(k1)]
    no_deltas = workdir / "no_deltas"  # the frozen arm's, and a retriever that does not learn
    loop = ServerProcess(
        [*common, "--log-impressions", str(imps), "--actions", str(acts),
         "--deltas", str(online / "deltas"), "--retriever-deltas",
         str(online_retriever / "deltas" if retriever_learns else no_deltas),
         "--explore-share", str(explore_share)],
        workdir / "loop_server.log",
    )
    frozen = None
    trainer = retriever_trainer = None
    try:
        frozen = ServerProcess(
            [*common, "--deltas", str(no_deltas), "--retriever-deltas", str(no_deltas)],
            workdir / "frozen_server.log",
        )
        trainer = LoopTrainer(
            loop_config(ranker_config, ranker_dir), imps, acts, online, "loop-ranker"
        )
        trainer.start()
        if retriever_learns:
            retriever_trainer = LoopTrainer(
                retriever_loop_config(load_model(retriever_dir).config, retriever_dir),
                imps,
                acts,
                online_retriever,
                "loop-retriever",
            )
            retriever_trainer.start()
        looped = HttpArm("closed_loop", loop.url, learns=True)
        arms: list[Arm] = [
            looped,
            HttpArm("frozen", frozen.url, learns=False),
            RetrievalArm(RetrievalStage.load(retriever_dir)),
            PopularityArm(users.popular),
        ]
        simulation = Simulation(users, arms, k, seed, active_users=2 * users_per_round)
        shown = 0
        for r in range(rounds):
            stats = simulation.run_round(users_per_round)
            shown += stats["closed_loop"].impressions
            synced = wait_for_sync(trainer, loop, shown, retriever_trainer=retriever_trainer)
            log(
                f"      round {r + 1}/{rounds}: CTR closed loop {stats['closed_loop'].ctr:.3f}"
                f"  frozen {stats['frozen'].ctr:.3f}  retrieval {stats['retrieval_only'].ctr:.3f}"
                f"  popularity {stats['popularity'].ctr:.3f}"
                + ("" if synced else "  (the trainer fell behind)")
            )
        status = trainer.stop()
        joined = dict(trainer.joiner.stats)
        final = {"delta_version": trainer.trainer.exporter.version}
        trainer = None
        retriever_status = None
        if retriever_trainer is not None:
            retriever_status = retriever_trainer.stop()
            final["retrieval"] = retriever_trainer.trainer.exporter.version
        retriever_trainer = None
        # The trainers' last deltas are served before anything is measured: a re-index
        # inside the latency window is the loop's cost, not the impression log's.
        wait_until_served(loop, final)
        extra = before_stop(loop.url) if before_stop is not None else None
        served = loop.get("/v1/status")
        latency = {"logging_on": None, "logging_off": None}
        if latency_qps > 0:
            sample = list(users.queries.values())[:200]
            latency = compare_p99(
                {"logging_on": loop.url, "logging_off": frozen.url}, sample, k, latency_qps
            )
            served = loop.get("/v1/status")
        impression_log = served["impression_log"]
        served_retrieval = loop.get("/v1/model").get("retrieval", {})
        summary = simulation.summary()
        return {
            "rounds": rounds,
            "users": users_per_round,
            "k": k,
            "ctr": summary["ctr"],
            "recall": summary["recall"],
            "ctr_by_round": {
                a: [round(r[a].ctr, 4) for r in simulation.rounds] for a in ARMS
            },
            "impressions_served": impression_log["requests_answered"],
            "impressions_logged": impression_log["records_logged"],
            "impressions_dropped": impression_log["records_dropped"],
            "actions_joined": joined["emitted_positive"],
            "examples_trained": status.get("events_trained"),
            "deltas": status.get("last_delta_version"),
            "retriever_learns": retriever_learns,
            "retriever_examples_trained": (retriever_status or {}).get("events_trained"),
            "retriever_deltas": (retriever_status or {}).get("last_delta_version"),
            "retriever_deltas_served": served_retrieval.get("delta_version"),
            "retriever_reindex": served_retrieval.get("last_reindex"),
            "event_to_delta_seconds": status.get("event_to_delta_seconds"),
            "p99_ms": latency,
            "before_stop": extra,
            "explore": {
                "share": explore_share,
                "slots": looped.explored_slots,
                "clicks": looped.explored_clicks,
                "ctr": looped.explored_clicks / max(1, looped.explored_slots),
            },
        }
    finally:
        for running in (trainer, retriever_trainer):
            if running is not None:
                running.trainer.stop_requested.set()
                running.join(timeout=60)
        for server in (loop, frozen):
            if server is not None:
                server.stop()


def offline_recall(
    users: SimulatedUsers, retriever_dir: Path, ranker_dir: Path, k1: int, k: int = 50
) -> dict[str, float]:
    """recall@k over every simulated user of the retriever's own top k, and of the ranker's
    order of the k1 items it retrieves (the two-stage list the server returns) — through the
    server's own stages, in process."""
    from streamrec.retrieval.evaluate import ranking_metrics
    from streamrec.serving.request import rows_table
    from streamrec.serving.snapshot import Snapshot

    stage = RetrievalStage.load(retriever_dir)
    ranker = Snapshot.load(ranker_dir)
    answers: dict[str, dict[int, list[int]]] = {"retrieval": {}, "ranked": {}}
    for user, query in users.queries.items():
        items, scores = stage.retrieve(RecommendRequest(query, k, users.seen[user]), k1)
        by_item = dict(zip(items, scores.tolist(), strict=True))
        rows = stage.item_rows(items, ranker.candidate_features, by_item)
        context = {f: v for f, v in query.items() if f in ranker.context_features}
        ranked = ranker.predict(rows_table(context, rows, ranker.kinds))[:, 0]
        answers["retrieval"][user] = items[:k]
        answers["ranked"][user] = [items[i] for i in np.argsort(-ranked, kind="stable")[:k]]
    return {
        name: ranking_metrics(found, users.future)[f"recall@{k}"]
        for name, found in answers.items()
    }
