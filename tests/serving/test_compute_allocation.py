"""DCAF: the per-request choice, λ by bisection, users' activity, the controller, and the
server's /v1/recommend under it."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streamrec.config import ComputeAllocationConfig, ComputeLevelConfig
from streamrec.serving.app import create_app
from streamrec.serving.compute_allocation import (
    CapacityController,
    ComputeAllocator,
    ComputeLevel,
    UserActivity,
    activity_value,
    choose_levels,
    solve_lambda,
)
from streamrec.serving.options import ServerOptions

LEVELS = [
    ComputeLevel(1000, 100, 1.0, 1.0),
    ComputeLevel(500, 50, 0.6, 0.7),
    ComputeLevel(300, 0, 0.4, 0.45),
    ComputeLevel(100, 0, 0.1, 0.2, preranked=False),
]
values_st = st.lists(st.floats(0.0, 50.0), min_size=1, max_size=200)


def test_no_price_means_the_most_gain_and_a_high_price_the_least_cost():
    values = np.array([0.5, 1.05, 3.0])
    assert choose_levels(values, LEVELS, 0.0).tolist() == [0, 0, 0]
    assert choose_levels(values, LEVELS, 1e6).tolist() == [3, 3, 3]
    # In between, the more valuable request gets the more work.
    assert choose_levels(values, LEVELS, 1.2).tolist() == [3, 2, 0]


@settings(max_examples=60, deadline=None)
@given(values_st, st.floats(0.0, 20.0), st.floats(0.0, 20.0))
def test_work_never_grows_with_the_price_nor_shrinks_with_the_value(values, lam1, lam2):
    costs = np.array([lv.cost for lv in LEVELS])
    low, high = sorted((lam1, lam2))
    values = np.array(values)
    assert np.all(costs[choose_levels(values, LEVELS, high)]
                  <= costs[choose_levels(values, LEVELS, low)])
    order = np.argsort(values)
    chosen = costs[choose_levels(values[order], LEVELS, low)]
    assert np.all(np.diff(chosen) >= 0)


@settings(max_examples=60, deadline=None)
@given(values_st, st.floats(0.2, 1.0))
def test_bisection_finds_the_smallest_price_within_the_budget(values, budget):
    values = np.array(values)
    costs = np.array([lv.cost for lv in LEVELS])
    lam = solve_lambda(values, LEVELS, budget)

    def mean_cost(x: float) -> float:
        return costs[choose_levels(values, LEVELS, x)].mean()

    assert mean_cost(lam) <= budget + 1e-12
    if lam > 0:  # any cheaper price spends more than the budget
        assert mean_cost(lam * (1 - 1e-6) - 1e-9) > budget


def test_bisection_needs_logged_values():
    with pytest.raises(ValueError, match="no logged request values"):
        solve_lambda(np.array([]), LEVELS, 0.5)


def test_activity_halves_every_half_life_and_forgets_the_least_recent_user():
    activity = UserActivity(half_life_s=10.0, max_users=2)
    assert activity.record("a", now=0.0) == 1.0
    assert activity.record("a", now=10.0) == pytest.approx(1.5)
    activity.record("b", now=10.0)
    activity.record("c", now=10.0)  # "a" is the least recently seen of three
    assert activity.record("a", now=10.0) == 1.0
    assert activity_value(1.0) == 1.0 and activity_value(np.e) == pytest.approx(2.0)


def test_capacity_shrinks_fast_over_the_setpoint_grows_slowly_and_learns_only_near_it():
    c = CapacityController(capacity_qps=100.0, setpoint_s=0.040, ki=0.5, release=0.2)
    c.update(observed_s=0.200, dt=1.0, arrival_qps=10.0)  # light load: its own latency
    assert c.capacity_qps == 100.0
    c.update(observed_s=0.080, dt=1.0, arrival_qps=90.0)  # near capacity, 2× the setpoint
    assert c.capacity_qps == pytest.approx(100 * np.exp(-0.5))
    shrunk = c.capacity_qps
    c.update(observed_s=0.020, dt=1.0, arrival_qps=90.0)  # half the setpoint: back up slowly
    assert c.capacity_qps == pytest.approx(shrunk * np.exp(0.5 * 0.2 * 0.5))
    c.update(observed_s=10.0, dt=100.0, arrival_qps=90.0)  # a spike counts as 4× at most
    assert c.error == 3.0 and c.capacity_qps == 5.0  # and never below 1/20 of the declared


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _allocator(monkeypatch, **config) -> tuple[ComputeAllocator, _Clock]:
    clock = _Clock()
    monkeypatch.setattr("streamrec.serving.compute_allocation.time.monotonic", clock)
    allocator = ComputeAllocator(ComputeAllocationConfig(enabled=True, **config))
    allocator.levels, allocator.cheapest = LEVELS, 3
    return allocator, clock


def test_when_arrivals_exceed_capacity_the_valuable_requests_keep_the_work(monkeypatch):
    allocator, clock = _allocator(monkeypatch, capacity_qps=48.0)
    assert allocator.allocate({"user_id": 1}, declared_value=0.0)[0] == 0  # idle: λ = 0
    allocator.observe(0.01)
    for i in range(20):  # 80 requests/s for a quarter second, half of them worth 5
        clock.now += 0.0125
        allocator.allocate({}, declared_value=5.0 if i % 2 else 0.0)
        allocator.observe(0.01)
    allocator.tick(clock.now, 0.05)
    assert allocator.arrival_qps == pytest.approx(80.0)
    assert allocator.lam > 0  # 48 of 80 at full cost do not fit: the price rises
    assert allocator.allocate({}, declared_value=5.0)[0] == 0
    assert allocator.allocate({}, declared_value=0.0)[0] == 3
    clock.now += 1.0  # quiet again
    allocator.tick(clock.now, 0.05)
    assert allocator.lam == 0.0 and allocator.allocate({}, declared_value=0.0)[0] == 0


def test_a_surge_between_ticks_raises_the_price_before_the_next_tick(monkeypatch):
    allocator, clock = _allocator(monkeypatch, capacity_qps=10.0)
    for _ in range(20):  # a calm second: 5 requests/s of 20 ms
        clock.now += 0.2
        allocator.allocate({}, declared_value=1.0)
        allocator.observe(0.02)
    allocator.tick(clock.now, 0.05)
    assert allocator.lam == 0.0 and allocator.mean_s == pytest.approx(0.02)
    levels = []
    for _ in range(10):  # ten arrive within 20 ms, none answered yet
        clock.now += 0.002
        levels.append(allocator.allocate({}, declared_value=1.0)[0])
    assert levels[0] == 0 and levels[-1] == 3  # 10 in flight / 20 ms = 500/s ≫ capacity
    assert allocator.in_flight == 10 and allocator.saturated  # 10 / 500 < the cheapest cost
    assert allocator.allocate({}, declared_value=1e6)[0] == 3  # even the most valuable


def test_a_returning_user_is_worth_more():
    allocator = ComputeAllocator(ComputeAllocationConfig(enabled=True))
    assert allocator.allocate({"user_id": 7})[1] == 1.0
    for _ in range(20):
        _, value = allocator.allocate({"user_id": 7})
    assert value > 3.0
    assert allocator.allocate({"no_id": 1})[1] == 1.0
    assert allocator.answered.sum() == 22


def test_levels_are_checked_when_the_config_is_read():
    with pytest.raises(ValidationError, match="cannot exceed"):
        ComputeLevelConfig(k1=50, k2=100, gain=1.0, cost=1.0)
    with pytest.raises(ValidationError):
        ComputeAllocationConfig(levels=[])
    cheap_first = [{"k1": 100, "k2": 0, "gain": 0.1, "cost": 0.2},
                   {"k1": 1000, "k2": 100, "gain": 1.0, "cost": 1.0}]
    with pytest.raises(ValidationError, match="from the most work to the least"):
        ComputeAllocationConfig(levels=cheap_first)
    with pytest.raises(ValidationError, match="same k1, k2"):
        ComputeAllocationConfig(levels=[cheap_first[1], cheap_first[1]])


# ---- through HTTP: `streamrec serve --allocation FILE` ----

USER = {"user_id": 5, "age": 33, "gender": "F", "occupation": "other"}
FULL, CHEAP = "k1=200,k2=50", "k1=20,k2=0,no-prerank"


def _allocation_file(tmp_path, **fields) -> str:
    levels = [
        {"k1": 200, "k2": 50, "gain": 1.0, "cost": 1.0},
        {"k1": 20, "k2": 0, "gain": 0.1, "cost": 0.1, "preranked": False},
    ]
    path = tmp_path / "allocation.json"
    path.write_text(json.dumps({"levels": levels, **fields}))
    return str(path)


def _serve(start_server, trained_run, retriever_run, preranker_run, allocation: str):
    return start_server(trained_run, "--retriever", str(retriever_run), "--preranker",
                        str(preranker_run), "--allocation", allocation)


def test_work_shrinks_while_arrivals_exceed_capacity_and_grows_back_after(
    tmp_path, trained_run, retriever_run, preranker_run, start_server
):
    # A server that can afford 0.01 full cascades a second: any traffic is overload.
    tiny = _allocation_file(tmp_path, capacity_qps=0.01)
    server = _serve(start_server, trained_run, retriever_run, preranker_run, tiny)
    body = {"user": USER, "k": 10, "debug": True, "request_id": "r-1"}
    idle = server.post("/v1/recommend", json={**body, "value": 5.0}).json()
    assert idle["level"] == FULL and idle["scored_by"] == "ranking"  # no arrivals yet: λ = 0
    assert idle["request_id"] == "r-1"
    debug = idle["debug"]
    assert (debug["retrieved"], debug["preranked"], debug["ranked"]) == (200, 50, 50)
    assert debug["allocation"] == {"value": 5.0, "lambda": 0.0}
    levels = []
    for _ in range(20):
        answer = server.post("/v1/recommend", json={**body, "request_id": None}).json()
        levels.append(answer["level"])
    assert levels[-1] == CHEAP
    assert answer["scored_by"] == "retrieval"  # no pre-ranker, no ranker
    assert (answer["debug"]["retrieved"], answer["debug"]["ranked"]) == (20, 0)
    assert set(answer["debug"]["seconds"]) == {"retrieval"}
    assert set(answer["versions"]) == {"retrieval", "ranking"}
    items, scores = answer["items"], answer["scores"]
    assert len(items) == 10 == len(set(items)) and scores == sorted(scores, reverse=True)
    status = server.get("/v1/status").json()["compute_allocation"]
    assert status["lambda"] > 0 and status["saturated"]
    assert status["levels"][0]["requests"] >= 1 and status["levels"][1]["requests"] >= 1
    metrics = server.get("/metrics").text
    assert f'streamrec_allocation_requests_total{{level="{FULL}"}}' in metrics
    assert f'streamrec_allocation_requests_total{{level="{CHEAP}"}}' in metrics
    time.sleep(1.0)  # no arrivals in the rate window: the price falls to 0
    assert server.get("/v1/status").json()["compute_allocation"]["lambda"] == 0.0
    again = server.post("/v1/recommend", json={"user": USER, "k": 10}).json()
    assert again["level"] == FULL
    negative = server.post("/v1/recommend", json={**body, "value": -1})
    assert negative.status_code == 422 and "value" in negative.json()["error"]


def test_bad_allocation_settings_are_refused_at_start(tmp_path, trained_run, retriever_run):
    def serve(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "streamrec", "serve", str(trained_run), *extra],
            capture_output=True, text=True, timeout=120,
        )

    with pytest.raises(ValueError, match="add --retriever"):
        create_app(
            ServerOptions(model_dir=trained_run, serving={"compute_allocation": {"enabled": True}})
        )
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("levels:\n  - {k1: 10, k2: 20, gain: 1, cost: 1}\n")
    refused = serve("--retriever", str(retriever_run), "--allocation", str(wrong))
    assert refused.returncode == 2 and "cannot exceed" in refused.stderr
    wrong.write_text("- just a list\n")
    refused = serve("--retriever", str(retriever_run), "--allocation", str(wrong))
    assert refused.returncode == 2 and f"{wrong}: expected a mapping" in refused.stderr
