"""Compute allocated by request value under a latency SLO (DCAF, Jiang et al. 2020).

Each POST /v1/recommend can be answered at one of a few levels — retrieve K1, pre-rank, rank
the best K2 — from the most work to the least. Over the requests i of a period, DCAF picks the
level j(i) that maximises Σ value_i · gain_j under a compute budget Σ cost_j ≤ C; its Lagrange
relaxation decides each request on its own:

    j(i) = argmax_j  value_i · gain_j − λ · cost_j

λ is the price of compute. Offline, `solve_lambda` finds by bisection the smallest λ whose
allocation of logged request values fits a budget. Online, a PI controller moves λ with load:
when recent latency passes its setpoint (a fraction of the SLO), λ rises and low-value requests
drop to cheaper levels first; when load falls, λ falls back. Work shrinks before the batcher's
queue limit ever sheds a request.

A request's value is the user's recent activity (an exponentially decayed request count:
an active user is worth more compute), or the value the caller declares in the request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamrec.config import ComputeAllocationConfig, ComputeLevelConfig


@dataclass(frozen=True)
class ComputeLevel:
    """One way to answer: retrieve `k1`, pre-rank them (if `preranked`), rank the best `k2`
    (0: no ranking). `gain` and `cost` are relative to the first (fullest) level."""

    k1: int
    k2: int
    gain: float
    cost: float
    preranked: bool = True

    @classmethod
    def from_config(cls, c: ComputeLevelConfig) -> ComputeLevel:
        return cls(c.k1, c.k2, c.gain, c.cost, c.preranked)

    @property
    def name(self) -> str:
        return f"k1={self.k1},k2={self.k2}" + ("" if self.preranked else ",no-prerank")


def choose_levels(values: np.ndarray, levels: Sequence[ComputeLevel], lam: float) -> np.ndarray:
    """The level index maximising value · gain − λ · cost, per value (ties: the more work).
    values: float [requests] → int64 [requests]."""
    gains = np.array([lv.gain for lv in levels])
    costs = np.array([lv.cost for lv in levels])
    worth = np.asarray(values, np.float64)[:, None] * gains[None, :] - lam * costs[None, :]
    return np.argmax(worth, axis=1)


def solve_lambda(
    values: np.ndarray, levels: Sequence[ComputeLevel], budget: float, iterations: int = 40
) -> float:
    """The smallest λ ≥ 0 whose allocation of `values` (logged request values, offline; the
    last second's, online) costs at most `budget` per request on average (in the levels' cost
    units). The mean cost falls as λ rises, so bisection finds it (to 2⁻⁴⁰ of its bracket). A
    budget below the cheapest level cannot be met: the λ that puts every request on it is
    returned."""
    costs = np.array([lv.cost for lv in levels])
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("no logged request values to solve λ on")
    budget = max(budget, float(costs.min()))

    def mean_cost(lam: float) -> float:  # (a hair of tolerance: a mean of equal floats drifts)
        return float(costs[choose_levels(values, levels, lam)].mean()) - 1e-9

    if mean_cost(0.0) <= budget:
        return 0.0
    high = 1.0
    while mean_cost(high) > budget and high < 1e12:
        high *= 2.0
    low = 0.0
    for _ in range(iterations):
        middle = (low + high) / 2
        if mean_cost(middle) > budget:
            low = middle
        else:
            high = middle
    return high


class UserActivity:
    """Each user's exponentially decayed request count (half-life `half_life_s`), for the
    `max_users` most recently seen users (least recently seen forgotten first; ~150 bytes
    each)."""

    def __init__(self, half_life_s: float = 3600.0, max_users: int = 200_000) -> None:
        self.rate = math.log(2) / half_life_s
        self.max_users = max_users
        self._counts: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def record(self, user: object, now: float | None = None) -> float:
        """Count one request of `user`; → their activity including it (≥ 1)."""
        now = time.monotonic() if now is None else now
        count, at = self._counts.pop(user, (0.0, now))
        count = count * math.exp(-self.rate * (now - at)) + 1.0
        self._counts[user] = (count, now)
        if len(self._counts) > self.max_users:
            self._counts.popitem(last=False)
        return count


def activity_value(activity: float) -> float:
    """A request's value from its user's activity: 1 for a first visit, growing with the log
    of the count (ten times the activity is not worth ten times the compute)."""
    return 1.0 + math.log(activity)


class CapacityController:
    """How much compute the server has, in requests per second at the fullest level (cost 1),
    corrected from latency. It starts at the declared capacity; each control step compares the
    recent tail latency with its setpoint (e = observed / setpoint − 1) and scales the estimate
    by exp(−gain · e · dt): down fast while over (gain = ki), up slowly while under (ki ×
    release). It learns only while the load is near what it thinks the capacity is (arrivals
    ≥ NEAR × capacity): at light load, slow answers are the work's own latency (a cold start,
    a heavy request), not queueing that less work would remove — and an estimate that moved
    then would wind up or collapse with nothing to correct it. Kept within 1/20 … 20× the
    declared value.

    Slow release keeps the loop out of a limit cycle: with symmetric gains the estimate swung
    between its extremes several times a second under a steady overload, and every swing up let
    a burst of full-work requests through — a latency spike each time."""

    NEAR = 0.7
    MAX_ERROR = 3.0  # a spike counts as at most 4× the setpoint: one slow answer is not a trend

    def __init__(self, capacity_qps: float, setpoint_s: float, ki: float, release: float) -> None:
        self.declared = capacity_qps
        self.capacity_qps = capacity_qps
        self.setpoint_s = setpoint_s
        self.ki, self.release = ki, release
        self.error = 0.0

    def update(self, observed_s: float, dt: float, arrival_qps: float) -> float:
        self.error = min(observed_s / self.setpoint_s - 1.0, self.MAX_ERROR)
        if arrival_qps < self.NEAR * self.capacity_qps:
            step = 0.0
        elif self.error > 0:
            step = -self.ki * self.error * dt
        else:
            step = -self.ki * self.release * self.error * dt
        low, high = self.declared / 20, self.declared * 20
        self.capacity_qps = min(max(self.capacity_qps * math.exp(step), low), high)
        return self.capacity_qps


class ComputeAllocator:
    """The server's DCAF state: the levels, users' activity, the recent requests (their values
    and latencies) and event-loop lag the controller reads, λ, and each level's count.

    Every TICK_S: the arrival rate r and the values of the last RATE_S of requests; the
    compute budget per request is capacity / r (in fullest-level requests); λ is the smallest
    price whose allocation of those values fits it (`solve_lambda`, the same bisection as
    offline) — the feed-forward part, which follows a load step within a second. The capacity
    estimate itself is corrected by `CapacityController` from the tail latency — the feedback
    part, which absorbs a wrong declared capacity or a machine that got slower."""

    TICK_S = 0.05  # the controller's period
    RATE_S = 0.25  # the arrivals (rate and values) that set the budget
    SURGE_S = 0.01  # the most often a surge re-solves λ between ticks
    WINDOW_S = 2.0  # the latencies whose tail is compared with the setpoint
    PERCENTILE = 99
    MIX_S = 10.0  # the recent level mix the status page shows

    def __init__(self, config: ComputeAllocationConfig, user_key: str = "user_id") -> None:
        self.config = config
        self.levels = [ComputeLevel.from_config(c) for c in config.levels]
        self.user_key = user_key
        self.activity = UserActivity(config.value_half_life_s)
        self.controller = CapacityController(
            config.capacity_qps, config.setpoint * config.slo_ms / 1000, config.ki, config.release
        )
        self.lam = 0.0
        self.arrival_qps = 0.0
        self.answered = np.zeros(len(self.levels), np.int64)
        self._recent: deque[tuple[float, float]] = deque()  # (finished at, latency s)
        self._arrivals: deque[tuple[float, int, float]] = deque()  # (at, level, value)
        self.loop_lag_s = 0.0
        self.observed_s = 0.0
        self.mean_s = 0.0  # mean latency of the last WINDOW_S
        self.in_flight = 0  # requests allocated and not yet answered
        self.cheapest = int(np.argmin([lv.cost for lv in self.levels]))
        self.saturated = False  # over capacity even with every request at the cheapest level
        self._solved_at = -math.inf
        self._task: asyncio.Task | None = None

    def allocate(self, user: dict, declared_value: float | None = None) -> tuple[int, float]:
        """(level index, value) for one request of `user` (its features)."""
        if declared_value is not None:
            value = declared_value
        else:
            key = user.get(self.user_key)
            value = activity_value(self.activity.record(key)) if key is not None else 1.0
        now = time.monotonic()
        self.in_flight += 1
        self._arrivals.append((now, -1, value))
        self._check_surge(now)
        if self.saturated:
            level = self.cheapest
        else:
            level = int(choose_levels(np.array([value]), self.levels, self.lam)[0])
        self.answered[level] += 1
        self._arrivals[-1] = (now, level, value)
        return level, value

    def observe(self, seconds: float) -> None:
        """One /v1/recommend's latency (also of one that failed), for the controller."""
        self.in_flight -= 1
        self._recent.append((time.monotonic(), seconds))

    def _check_surge(self, now: float) -> None:
        """Between ticks, a load step would get full work until the rate window fills — a burst
        of the most expensive requests, exactly when capacity is short. The requests in flight
        see it at once: by Little's law they number rate × latency, so in_flight / mean latency
        estimates the rate now. At more than twice the window's rate, λ is solved again for it
        (at most every SURGE_S)."""
        if self.in_flight < 3 or now - self._solved_at < self.SURGE_S or self.mean_s <= 0:
            return
        surge_qps = self.in_flight / self.mean_s
        if surge_qps > 2 * self.arrival_qps:
            self.arrival_qps = surge_qps
            self._solve(now)

    def tick(self, now: float, dt: float) -> None:
        """One control step: correct the capacity from the tail latency (p99 of the last
        WINDOW_S plus the event loop's lag: time requests wait before their handler even
        starts), then set λ from the arrivals of the last RATE_S."""
        while self._recent and self._recent[0][0] < now - self.WINDOW_S:
            self._recent.popleft()
        while self._arrivals and self._arrivals[0][0] < now - self.MIX_S:
            self._arrivals.popleft()
        tail = (
            float(np.percentile([s for _, s in self._recent], self.PERCENTILE))
            if self._recent else 0.0
        )
        self.observed_s = tail + self.loop_lag_s
        if self._recent:
            self.mean_s = float(np.mean([s for _, s in self._recent]))
        self.arrival_qps = sum(1 for t, _, _ in self._arrivals if t >= now - self.RATE_S)
        self.arrival_qps /= self.RATE_S
        self.controller.update(self.observed_s, dt, self.arrival_qps)
        self._solve(now)

    def _solve(self, now: float) -> None:
        """λ for the current arrival rate and capacity, over the last RATE_S of values."""
        self._solved_at = now
        values = np.array([v for t, _, v in self._arrivals if t >= now - self.RATE_S])
        self.saturated = False
        if values.size == 0 or self.arrival_qps <= 0:
            self.lam = 0.0
            return
        budget = self.controller.capacity_qps / self.arrival_qps
        # Beyond what even the cheapest level for all can fit, every request gets it (a new
        # request more valuable than the window's would otherwise still get more).
        self.saturated = budget <= self.levels[self.cheapest].cost
        binding = budget < self.levels[0].cost
        self.lam = solve_lambda(values, self.levels, budget) if binding else 0.0

    async def run(self) -> None:
        """The control loop (a task on the server's event loop). Sleeping TICK_S and seeing
        how late it wakes is the loop-lag measurement."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.TICK_S)
            now = time.monotonic()
            self.loop_lag_s = max(0.0, now - last - self.TICK_S)
            self.tick(now, now - last)
            last = now

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def describe(self) -> dict:
        total = int(self.answered.sum())
        recent = np.bincount([lv for _, lv, _ in self._arrivals], minlength=len(self.levels))
        recent_total = int(recent.sum())
        return {
            "slo_ms": self.config.slo_ms,
            "setpoint_ms": 1000 * self.controller.setpoint_s,
            "lambda": self.lam,
            "saturated": self.saturated,
            "arrival_qps": self.arrival_qps,
            "capacity_qps": self.controller.capacity_qps,
            "declared_capacity_qps": self.controller.declared,
            "observed_ms": 1000 * self.observed_s,
            "loop_lag_ms": 1000 * self.loop_lag_s,
            "error": self.controller.error,
            "levels": [
                {
                    "name": lv.name,
                    "k1": lv.k1,
                    "k2": lv.k2,
                    "preranked": lv.preranked,
                    "gain": lv.gain,
                    "cost": lv.cost,
                    "requests": int(n),
                    "share": (int(n) / total) if total else 0.0,
                    "recent_share": (int(m) / recent_total) if recent_total else 0.0,
                }
                for lv, n, m in zip(self.levels, self.answered, recent, strict=True)
            ],
        }
