"""Model variants: routing by weights, sticky users, Thompson sampling, health, promotion;
clicks joined back from the action stream."""

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from streamrec.data.stream import LocalLog, LocalLogSource
from streamrec.models.persistence import load_model
from streamrec.serving.feedback import FeedbackReader, ServedRequests
from streamrec.serving.variants import Variant, VariantSet, parse_split
from streamrec.train.delta_export import DeltaExporter


class _Worker:
    """What a Variant reads of its inference worker: whether it runs, the model version."""

    def __init__(self, version: str = "1.0") -> None:
        self.alive = True
        self.snapshot = SimpleNamespace(serving_version=version)


class _Watcher:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def degraded_reasons(self) -> list[str]:
        return list(self.reasons)


def _variant(name: str, shadow: bool = False) -> Variant:
    return Variant(name, f"/models/{name}", _Worker(), cache=None, watcher=_Watcher(),
                   shadow=shadow)


def _set(weights: dict[str, float], **kw) -> VariantSet:
    names = list(dict.fromkeys([*weights, *kw.pop("extra", [])]))
    shadows = kw.pop("shadows", ())
    variants = {n: _variant(n, shadow=n in shadows) for n in names}
    return VariantSet(variants, weights, **kw)


def _shares(vs: VariantSet, draws: int, key=None) -> dict[str, float]:
    names = [vs.choose(key(i) if key else None).name for i in range(draws)]
    return {n: names.count(n) / draws for n in vs.variants}


def test_split_text_is_parsed_and_bad_text_is_refused():
    assert parse_split("main=90, new=10") == {"main": 90.0, "new": 10.0}
    for bad in ("main", "main=x", "=5"):
        with pytest.raises(ValueError, match="NAME=WEIGHT"):
            parse_split(bad)
    with pytest.raises(ValueError, match="unknown variants"):
        VariantSet({"main": _variant("main")}, {"main": 1.0, "ghost": 1.0})
    with pytest.raises(ValueError, match="shadow"):
        _set({"main": 1.0, "s": 1.0}, shadows=["s"])


def test_traffic_follows_the_weights_and_sticky_users_keep_their_variant():
    vs = _set({"main": 90, "new": 10}, seed=1)
    assert _shares(vs, 20_000)["new"] == pytest.approx(0.10, abs=0.01)
    sticky = _set({"main": 50, "new": 50}, sticky=True)
    first = [sticky.choose(user).name for user in range(2000)]
    assert [sticky.choose(user).name for user in range(2000)] == first
    assert first.count("new") / 2000 == pytest.approx(0.5, abs=0.05)


def test_a_variant_out_of_rotation_gets_nothing_and_with_none_left_the_first_serves():
    vs = _set({"main": 50, "new": 50})
    vs.take_out(vs.variants["new"], "inference failed")
    assert _shares(vs, 500)["new"] == 0.0
    vs.take_out(vs.variants["main"], "inference failed")
    assert vs.choose(None).name == "main"
    assert [v.name for v in vs.others(vs.variants["main"])] == ["new"]


def test_thompson_sampling_moves_traffic_to_the_variant_that_gets_clicked():
    vs = _set({"a": 1, "b": 1}, policy="thompson", seed=3)
    rng = np.random.default_rng(0)
    rates = {"a": 0.05, "b": 0.15}
    chosen = []
    for _ in range(3000):
        v = vs.choose(None)
        v.served += 1
        v.clicks += int(rng.random() < rates[v.name])
        chosen.append(v.name)
    assert chosen[-1000:].count("b") / 1000 >= 0.8


def test_unhealthy_variants_leave_rotation_and_return_after_a_quiet_period(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("streamrec.serving.variants.time.monotonic", lambda: clock[0])
    vs = _set({"main": 1, "new": 1}, recover_s=10.0)
    new = vs.variants["new"]
    new.watcher.reasons = ["delta 7 quarantined: checksum"]
    vs.check_health()
    assert not new.in_rotation and new.out_reason.startswith("degraded: delta 7")
    clock[0] += 30.0  # still degraded: stays out
    vs.check_health()
    assert not new.in_rotation
    new.watcher.reasons = []
    clock[0] += 5.0
    vs.check_health()
    assert not new.in_rotation  # healthy for 5 s of the 10 required
    clock[0] += 6.0
    vs.check_health()
    assert new.in_rotation
    new.batcher.alive = False
    vs.check_health()
    assert new.out_reason == "its inference worker stopped"


def test_promotion_routes_everything_to_one_variant_and_rollback_restores_the_split():
    vs = _set({"main": 90, "new": 10}, policy="thompson", extra=["s"], shadows=["s"])
    with pytest.raises(LookupError, match="nothing to roll back"):
        vs.rollback()
    with pytest.raises(ValueError, match="shadow"):
        vs.promote("s")
    with pytest.raises(KeyError):
        vs.promote("ghost")
    assert vs.promote("new") == {"main": 0.0, "new": 1.0}
    assert vs.policy == "weights" and _shares(vs, 200)["new"] == 1.0
    assert vs.rollback() == {"main": 90, "new": 10} and vs.policy == "thompson"
    assert not vs.describe()["rollback_available"]


def test_clicks_from_the_action_stream_are_credited_once_per_served_request(tmp_path):
    vs = _set({"a": 1, "b": 1})
    served = ServedRequests(window_s=60.0)
    served.remember("r1", vs.variants["a"])
    served.remember("r2", vs.variants["b"])
    log = LocalLog(tmp_path / "actions")
    for record in (
        {"request_id": "r1", "item_id": 3, "action": "click", "event_time": 1.0},
        {"request_id": "r1", "item_id": 4, "action": "click", "event_time": 1.5},  # same request
        {"request_id": "r2", "item_id": 9, "action": "like", "event_time": 2.0},
        {"request_id": "elsewhere", "item_id": 1, "action": "click", "event_time": 2.0},
        {"item_id": 1, "action": "click"},  # no request_id
    ):
        log.append(record)
    log.append_raw(b"{not json")
    log.flush()
    reader = FeedbackReader(LocalLogSource(tmp_path / "actions", "serving"), served,
                            frozenset({"click"}))
    assert reader.read_once() == 6
    assert reader.counts == {"read": 6, "credited": 1, "already_credited": 1,
                             "unknown_request": 1, "malformed": 2, "other_action": 1}
    assert (vs.variants["a"].clicks, vs.variants["b"].clicks) == (1, 0)
    # The consumer group's position is committed: a restarted reader does not count them again.
    again = FeedbackReader(LocalLogSource(tmp_path / "actions", "serving"), served,
                           frozenset({"click"}))
    assert again.read_once(timeout=0.05) == 0


def test_served_requests_forget_what_is_older_than_the_window(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("streamrec.serving.feedback.time.monotonic", lambda: clock[0])
    served = ServedRequests(window_s=10.0, max_requests=2)
    a = _variant("a")
    served.remember("old", a)
    clock[0] = 11.0
    served.remember("new", a)
    assert served.credit("old") is False and served.credit("new") is a
    served.remember("x", a)
    served.remember("y", a)  # over max_requests: "new" goes
    assert served.credit("new") is False and served.credit("y") is a
    assert a.clicks == 2


# ---- through HTTP: `streamrec serve --variant NAME=DIR …` ----

CONTEXT = {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician", "zip_code": "85711"}
CANDIDATES = [{"item_id": i, "genres": ["Comedy"]} for i in range(1, 21)]
TOKEN = "s3cret"


def _rank(server, user: int, **extra) -> httpx.Response:
    body = {"context": {**CONTEXT, "user_id": user}, "candidates": CANDIDATES, **extra}
    return server.post("/v1/rank", json=body)


@pytest.fixture
def copy_of(trained_run, tmp_path):
    """A second model directory holding the same model (its own deltas folder)."""

    def copy(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(trained_run / "model", out / "model")
        return out

    return copy


def test_a_sticky_split_then_promotion_and_rollback_through_the_api_and_the_cli(
    trained_run, copy_of, start_server
):
    server = start_server(trained_run, "--variant", f"b={copy_of('b')}", "--split",
                          "main=50,b=50", "--sticky", "--token", TOKEN)
    first = {}
    for user in range(40):
        answer = _rank(server, user).json()
        first[user] = answer["variant"]
        assert answer["model_version"] and answer["request_id"]
    assert set(first.values()) == {"main", "b"}
    assert all(_rank(server, user).json()["variant"] == first[user] for user in range(40))
    shown = server.get("/v1/variants").json()
    assert sum(v["served"] for v in shown["variants"]) == 80
    assert shown["sticky"] and shown["weights"] == {"main": 50.0, "b": 50.0}
    assert 'streamrec_variant_in_rotation{variant="b"} 1.0' in server.get("/metrics").text

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "streamrec", "variants", *args, "--url", server.url,
             "--token", TOKEN], capture_output=True, text=True, timeout=60,
        )

    promoted = cli("promote", "b")
    assert promoted.returncode == 0, promoted.stderr
    assert {_rank(server, u).json()["variant"] for u in range(20)} == {"b"}
    assert "b" in cli("show").stdout
    rolled = cli("rollback")
    assert rolled.returncode == 0 and "main" in rolled.stdout
    assert server.get("/v1/variants").json()["weights"] == {"main": 50.0, "b": 50.0}
    assert {_rank(server, u).json()["variant"] for u in range(20)} == {
        first[u] for u in range(20)
    }
    unknown = cli("promote", "ghost")
    assert unknown.returncode == 2 and "no variant 'ghost'" in unknown.stderr
    nothing = cli("rollback")
    assert nothing.returncode == 2 and "nothing to roll back" in nothing.stderr
    no_token = httpx.post(server.url + "/v1/variants/promote", json={"variant": "b"})
    assert no_token.status_code == 401


def test_a_failing_variant_leaves_rotation_within_seconds_and_no_request_fails(
    trained_run, copy_of, start_server
):
    """A delta that poisons variant b (item weights so large that every score overflows; NaN
    rows themselves are refused when read): its scores are non-finite, so each call that meets
    it is answered by main instead and b is taken out; no request fails and none is answered
    with NaN."""
    b = copy_of("b")
    server = start_server(trained_run, "--variant", f"b={b}", "--split", "main=50,b=50")
    loaded = load_model(b)
    exporter = DeltaExporter(loaded.model, b / "deltas", loaded.manifest.model_version)
    items = loaded.model.dynamic_tables()["item_id"]
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        user = 0
        while not stop.is_set():
            r = _rank(server, user)
            statuses.append(r.status_code)
            assert r.status_code != 200 or all(np.isfinite(r.json()["scores"]["label"]))
            user += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(1.0)
        items.upsert(np.arange(1, 21), np.full((20, items.dim), 3e38, np.float32))
        exporter.export()
        poisoned = time.time()
        out_at = None
        while time.time() - poisoned < 15:
            shown = {v["name"]: v for v in server.get("/v1/variants").json()["variants"]}
            if not shown["b"]["in_rotation"]:
                out_at = time.time()
                break
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join()
    assert out_at is not None and out_at - poisoned < 5.0
    assert shown["b"]["out_reason"].startswith("inference failed: NonFiniteScores")
    assert statuses.count(200) == len(statuses) > 20
    assert {_rank(server, u).json()["variant"] for u in range(10)} == {"main"}


def test_a_shadow_scores_every_call_but_never_answers(trained_run, copy_of, start_server):
    server = start_server(trained_run, "--variant", f"s={copy_of('s')}", "--shadow", "s")
    assert {_rank(server, u).json()["variant"] for u in range(10)} == {"main"}
    deadline = time.time() + 10
    while time.time() < deadline:
        shown = server.get("/v1/variants").json()
        if shown["variants"][1]["shadow_scored"] == 10:
            break
        time.sleep(0.1)
    shadow = shown["variants"][1]
    assert shadow["role"] == "shadow" and shadow["served"] == 0 and shadow["shadow_scored"] == 10
    assert shadow["shadow_mean_abs_diff"] == 0.0  # the same model: the same scores
    assert shown["recent_shadow_scores"][-1]["same_top"] is True
    refused = server.post("/v1/variants/promote", json={"variant": "s"})
    assert refused.status_code == 403 and "--token" in refused.json()["error"]


def test_thompson_sampling_moves_traffic_to_the_variant_users_click(
    trained_run, copy_of, start_server, tmp_path
):
    actions = LocalLog(tmp_path / "actions")
    server = start_server(trained_run, "--variant", f"b={copy_of('b')}", "--policy", "thompson",
                          "--actions", str(tmp_path / "actions"))
    chosen = []
    client = httpx.Client(base_url=server.url, timeout=30)
    for i in range(100):
        body = {"context": {**CONTEXT, "user_id": i}, "candidates": CANDIDATES}
        answer = client.post("/v1/rank", json=body).json()
        chosen.append(answer["variant"])
        if answer["variant"] == "b" and i % 3:  # b's answers get clicked two times in three
            actions.append({"request_id": answer["request_id"], "item_id": 1,
                            "action": "click", "event_time": float(i)})
            actions.flush()
        if i % 25 == 24:
            time.sleep(0.3)  # let the reader catch up, as a real stream lags
    client.close()
    assert chosen[-40:].count("b") >= 32, chosen[-40:].count("b")
    time.sleep(0.5)
    shown = {v["name"]: v for v in server.get("/v1/variants").json()["variants"]}
    assert shown["b"]["clicks"] > 20 and shown["main"]["clicks"] == 0
    assert server.get("/v1/variants").json()["feedback"]["credited"] == shown["b"]["clicks"]
