"""`streamrec demo`: the whole system on MovieLens-100k, end to end, in a few minutes.

  1. split MovieLens-100k per user by time: each user's first 80% of ratings to train on, the
     last 20% to replay later as a live stream;
  2. train the DeepFM ranker, the two-tower retriever and a COLD pre-ranker on the 80%
     (recall@50 next to the popularity baseline);
  3. start the model server (the cascade: retrieve 1,000 → pre-rank → rank 100) on a free
     loopback port;
  4. replay the 20% in time order into a local stream, train the ranker online from it
     (predict first, then learn) and sync deltas to the running server every second, measuring
     for every event the seconds until the server serves a model that learnt from it;
  5. ask POST /v1/recommend for a few users and print what they get, each stage's size and
     time, and the three-stage cascade's recall@50 next to ranking all 1,000 (two stages).
No service to install; everything runs in this process and its threads.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from streamrec.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CASCADE_K1, CASCADE_K2 = 1000, 100  # items retrieved; items the pre-ranker passes to the ranker


def cascade_recall(
    retriever_dir: Path,
    preranker_dir: Path,
    ranker_dir: Path,
    retriever_cfg: Any,
    k1: int,
    k2: int,
    k: int = 50,
    users: int | None = 300,
) -> dict[str, Any]:
    """recall@k over `users` test users (evenly spaced by user id, the same each run; None:
    all) of: the retriever's top k; ranking all k1 it retrieves (two stages); the
    pre-ranker's best k2 of them, ranked (three stages) — through the server's own stages,
    in process.
    (benchmarks/cascade.py measures the same over every test user, with compute.)"""
    import pyarrow as pa

    from streamrec.data.errors import DeadLetter
    from streamrec.data.splits import open_splits
    from streamrec.retrieval.evaluate import ranking_metrics, user_items
    from streamrec.serving.prerank_stage import PreRankStage
    from streamrec.serving.request import rows_table
    from streamrec.serving.retrieval_stage import RecommendRequest, RetrievalStage
    from streamrec.serving.snapshot import Snapshot
    from streamrec.store import find_model_dir
    from streamrec.train.two_tower import user_queries

    splits = open_splits(retriever_cfg.data, DeadLetter())
    train = pa.Table.from_batches(list(splits.train()))
    test = pa.Table.from_batches(list(splits.valid()))
    seen = {u: set(v) for u, v in user_items(train).items()}
    truth = {u: set(v) for u, v in user_items(test).items() if u in seen}
    if users is not None and len(truth) > users:
        step = len(truth) / users
        chosen = sorted(truth)
        truth = {chosen[int(i * step)]: truth[chosen[int(i * step)]] for i in range(users)}
    features = retriever_cfg.model.params["user_features"]
    history = retriever_cfg.data.history_length or 50
    queries = {q["user_id"]: q for q in user_queries(train, features, history).to_pylist()}
    profile = {r["user_id"]: r for r in train.to_pylist()}
    retrieval = RetrievalStage.load(retriever_dir)
    pre = PreRankStage.load(preranker_dir, k2)
    ranker = Snapshot.load(find_model_dir(ranker_dir))
    answers: dict[str, dict[int, list[int]]] = {"retrieval": {}, "two_stage": {}, "three_stage": {}}
    for user in truth:
        query = {f: queries[user][f] for f in features}
        items, _ = retrieval.retrieve(RecommendRequest(query, k, seen[user]), k1)
        rows = retrieval.item_rows(items, list(retrieval.catalog[items[0]]))
        context = {f: profile[user][f] for f in ranker.context_features}
        full = ranker.predict(rows_table(context, rows, ranker.kinds))[:, 0]
        kept, _ = pre.top({**query, **context}, items, rows, k2)
        position = {item: i for i, item in enumerate(items)}
        kept_scores = full[[position[i] for i in kept]]  # ranking a subset: the same scores
        answers["retrieval"][user] = items[:k]
        answers["two_stage"][user] = [items[i] for i in np.argsort(-full, kind="stable")[:k]]
        best = np.argsort(-kept_scores, kind="stable")[:k]
        answers["three_stage"][user] = [kept[i] for i in best]
    recall = {name: ranking_metrics(a, truth)[f"recall@{k}"] for name, a in answers.items()}
    return {"users": len(truth), **recall}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ServerThread(threading.Thread):
    def __init__(self, app, port: int) -> None:
        import uvicorn

        from streamrec.serving.http import server_config

        super().__init__(daemon=True, name="streamrec-demo-server")
        self.server = uvicorn.Server(
            server_config(app, "127.0.0.1", port, app.state.server.settings)
        )

    def run(self) -> None:
        self.server.run()

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(timeout=10)


def run_demo(
    workdir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    events_per_second: float = 2500.0,
) -> dict[str, Any]:
    import pyarrow as pa

    from streamrec import api
    from streamrec.data.errors import DeadLetter
    from streamrec.data.splits import open_splits
    from streamrec.data.stream import LocalLog, LocalLogSource
    from streamrec.serving.app import create_app
    from streamrec.train.online import OnlineTrainer

    workdir = Path(workdir)
    started = time.perf_counter()
    ranker_cfg = load_config(EXAMPLES / "ml100k_deepfm.yaml")
    retriever_cfg = load_config(EXAMPLES / "ml100k_two_tower.yaml")
    preranker_cfg = load_config(EXAMPLES / "ml100k_cold.yaml")

    log("[1/5] MovieLens-100k: each user's first 80% of ratings → training, last 20% → stream")
    log(f"[2/5] training the {ranker_cfg.model.name} ranker ({ranker_cfg.train.epochs} epochs) …")
    ranked = api.train(ranker_cfg, workdir / "ranker", progress=progress)
    ranker_dir = ranked.model_dir
    m = ranked.metrics["label"]
    log(
        f"      ranker test AUC {m['auc']:.4f}  GAUC {m.get('gauc', float('nan')):.4f}  "
        f"logloss {m['logloss']:.4f}"
    )
    log("      training the two-tower retriever …")
    retrieval = api.train(retriever_cfg, workdir / "retriever", progress=progress)
    retriever_dir = retrieval.model_dir
    rm = retrieval.metrics
    log(
        f"      retrieval recall@50 {rm['recall@50']:.4f} (popularity "
        f"{rm['baseline_recall@50']:.4f}), index recall@100 vs exact "
        f"{rm['index_recall@100_vs_exact']:.3f}"
    )

    log("      training the COLD pre-ranker …")
    preranker_dir = api.train(preranker_cfg, workdir / "preranker", progress=progress).model_dir

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log(f"[3/5] serving retriever → pre-ranker → ranker on {url}")
    app = create_app(
        ranker_dir,
        retriever_dir=retriever_dir,
        preranker_dir=preranker_dir,
        prerank_keep=CASCADE_K2,
        retrieve=CASCADE_K1,
        deltas_dir=workdir / "online" / "deltas",
        poll_seconds=0.1,
    )
    server = _ServerThread(app, port)
    server.start()
    for _ in range(200):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)

    splits = open_splits(ranker_cfg.data, DeadLetter())
    stream_rows = pa.Table.from_batches(list(splits.valid())).to_pylist()
    log(
        f"[4/5] replaying {len(stream_rows):,} events at {events_per_second:,.0f}/s; online "
        "training with a delta every second …"
    )
    stream_dir = workdir / "stream"
    producer = LocalLog(stream_dir)

    def produce() -> None:
        t0 = time.monotonic()
        for i, record in enumerate(stream_rows):
            producer.append(record)
            if i % 250 == 249:
                producer.flush()
                wait = (i + 1) / events_per_second - (time.monotonic() - t0)
                if wait > 0:
                    time.sleep(wait)
        producer.close()

    online_cfg = ranker_cfg.model_copy(deep=True)
    online_cfg.online.sync_interval_seconds = 1.0
    online_cfg.online.checkpoint_interval_seconds = 5.0
    online_cfg.online.init_model = str(ranker_dir)
    online = OnlineTrainer(online_cfg, LocalLogSource(stream_dir), workdir / "online")
    consumed: dict[int, list[float]] = {}
    visible: dict[int, float] = {}
    online.on_delta = lambda version, times: consumed.__setitem__(version, times)
    stop = threading.Event()

    def watch_server() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                v = client.get(url + "/v1/model").json()["delta_version"]
                for version in range(1, v + 1):
                    visible.setdefault(version, time.time())
                time.sleep(0.05)

    threads = [threading.Thread(target=produce), threading.Thread(target=watch_server)]
    for t in threads:
        t.start()
    status = online.run(stop_when_idle=2.0)
    threads[0].join()
    deadline = time.time() + 10
    while online.exporter.version not in visible and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    threads[1].join()
    freshness = [visible[v] - t for v, times in consumed.items() if v in visible for t in times]
    p99 = float(np.percentile(freshness, 99)) if freshness else float("nan")
    w = status["windowed"].get("label", {})
    log(
        f"      trained {status['events_trained']:,} events online; progressive AUC "
        f"{w.get('auc', float('nan')):.4f}; {len(consumed)} deltas; event → served p99 "
        f"{p99:.2f} s"
    )

    log("[5/5] POST /v1/recommend for three users:")
    recommendations = {}
    test_users = sorted({r["user_id"] for r in stream_rows})[:3]
    by_user = {r["user_id"]: r for r in stream_rows}
    for user in test_users:
        r = by_user[user]
        body = {
            "user": {f: r[f] for f in ("user_id", "age", "gender", "occupation")},
            "k": 10,
            "debug": True,
        }
        answer = httpx.post(url + "/v1/recommend", json=body, timeout=30).json()
        recommendations[str(user)] = answer["items"]
        log(f"      user {user} ({r['age']}, {r['gender']}, {r['occupation']}): {answer['items']}")
    d = answer["debug"]
    stages = " → ".join(
        f"{name} {d[count]} in {1000 * d['seconds'][name]:.1f} ms"
        for name, count in (("retrieval", "retrieved"), ("preranking", "preranked"),
                            ("ranking", "ranked"))
    )
    log(f"      stages of the last one: {stages} → top 10")
    server.stop()
    cascade = cascade_recall(
        retriever_dir, preranker_dir, ranker_dir, retriever_cfg, CASCADE_K1, CASCADE_K2
    )
    log(
        f"      recall@50 over {cascade['users']} test users: retrieve {CASCADE_K1} → pre-rank → "
        f"rank {CASCADE_K2}: {cascade['three_stage']:.4f}; rank all {CASCADE_K1} (two stages): "
        f"{cascade['two_stage']:.4f} ({cascade['three_stage'] / cascade['two_stage']:.2f}×); "
        f"the retriever's own order: {cascade['retrieval']:.4f}"
    )
    return {
        "recall@50": rm["recall@50"],
        "baseline_recall@50": rm["baseline_recall@50"],
        "ndcg@10": rm["ndcg@10"],
        "ranker": {"metrics": ranked.metrics, "samples_per_s": ranked.samples_per_s},
        "online": {
            "events_trained": status["events_trained"],
            "deltas": len(consumed),
            "progressive": status["windowed"],
        },
        "freshness_p99_s": p99,
        "recommendations": recommendations,
        "cascade": {"k1": CASCADE_K1, "k2": CASCADE_K2, "stages": answer["debug"], **cascade},
        "seconds": time.perf_counter() - started,
    }
