"""Model versions served side by side (Clipper's model-selection layer).

A server can hold several ranking models — variants, each a model directory with its own
inference worker, prediction cache and delta watcher — and route every ranking call to one:

* by fixed weights (`--split main=90,new=10`): a random draw per request, or, with `sticky`,
  a hash of the user (the same user always sees the same variant while the weights hold);
* by a bandit (`--policy thompson`): Thompson sampling on each variant's click rate, clicks
  joined back from the action stream (`serving/feedback.py`), so traffic moves to the better
  variant by itself;
* shadows (`--shadow NAME`) score a copy of the request after it is answered: logged and
  compared with what was served, never returned.

A variant leaves rotation on its own when it fails: its worker died, its watcher reports it
degraded (a quarantined delta, a model that did not load — it serves stale rows), or an
inference on it raised or returned non-finite scores. The request that met the failure is
answered by another variant, so taking a variant out costs no failed request. It comes back
once its health checks pass for `recover_s`. Promotion and rollback are routing changes: the
promoted variant takes all traffic; the others stay loaded and fresh for the next rollback.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

from streamrec.config import ServingConfig
from streamrec.serving.batcher import DynamicBatcher
from streamrec.serving.cache import PredictionCache
from streamrec.serving.snapshot import Snapshot
from streamrec.serving.watcher import Watcher
from streamrec.store import find_deltas_dir

Policy = Literal["weights", "thompson"]


@dataclass
class Variant:
    name: str
    path: str
    batcher: DynamicBatcher
    cache: PredictionCache
    watcher: Watcher | None = None
    shadow: bool = False
    out_reason: str | None = None  # why it is out of rotation; None: in rotation
    out_since: float = 0.0
    last_failure: float = float("-inf")
    served: int = 0  # ranking calls answered
    failures: int = 0  # ranking calls that failed on it (each answered by another variant)
    clicks: int = 0  # answered requests that got a click (joined from the action stream)
    shadow_scored: int = 0
    shadow_abs_diff: float = 0.0  # Σ |shadow − served| over shadow-scored rows
    shadow_rows: int = 0

    @property
    def version(self) -> str:
        return self.batcher.snapshot.serving_version

    @property
    def in_rotation(self) -> bool:
        return self.out_reason is None and not self.shadow

    def health_problem(self) -> str | None:
        """Why this variant should not serve right now, or None."""
        if not self.batcher.alive:
            return "its inference worker stopped"
        if self.watcher is not None and (reasons := self.watcher.degraded_reasons()):
            return "degraded: " + "; ".join(reasons)
        return None


@dataclass
class VariantSet:
    """The variants and how traffic is split among them. `weights` hold for the variants in
    rotation (a variant out of rotation gets none; the rest share its part)."""

    variants: dict[str, Variant]
    weights: dict[str, float]
    policy: Policy = "weights"
    sticky: bool = False
    recover_s: float = 10.0
    seed: int = 0
    _previous_weights: list[tuple[dict[str, float], Policy]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    shadow_log: deque = field(default_factory=lambda: deque(maxlen=100))  # recent comparisons

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(self.variants)
        if unknown:
            raise ValueError(f"traffic split names unknown variants: {sorted(unknown)}")
        if any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
            raise ValueError("traffic weights must be ≥ 0 and not all 0")
        for name in self.weights:
            if self.variants[name].shadow:
                raise ValueError(f"variant {name!r} is a shadow: it takes no traffic")
        self._rng = np.random.default_rng(self.seed)

    @property
    def primary(self) -> Variant:
        return next(iter(self.variants.values()))

    def choose(self, key: object | None) -> Variant:
        """The variant for one request (`key`: the user, for sticky routing). Never fails:
        with every variant out of rotation, the first one serves."""
        live = [v for v in self.variants.values() if v.in_rotation]
        if not live:
            return self.primary
        if self.policy == "thompson":
            return self._thompson(live)
        weights = np.array([self.weights.get(v.name, 0.0) for v in live])
        if weights.sum() <= 0:  # the weighted variants are all out: share evenly
            weights = np.ones(len(live))
        cumulative = np.cumsum(weights / weights.sum())
        draw = _unit_hash(key) if self.sticky and key is not None else self._rng.random()
        return live[min(int(np.searchsorted(cumulative, draw, side="right")), len(live) - 1)]

    def _thompson(self, live: list[Variant]) -> Variant:
        """Each variant's click rate drawn from Beta(1 + clicks, 1 + served − clicks); the
        highest draw serves. A request counts as a trial when answered; a click arriving later
        turns it into a success (both variants' rates lag the same way)."""
        with self._lock:
            draws = [
                self._rng.beta(1 + v.clicks, 1 + max(v.served - v.clicks, 0)) for v in live
            ]
        return live[int(np.argmax(draws))]

    def others(self, failed: Variant) -> list[Variant]:
        """Variants to retry a call that failed on `failed`, in rotation first."""
        rest = [v for v in self.variants.values() if v is not failed and not v.shadow]
        return sorted(rest, key=lambda v: not v.in_rotation)

    def shadows(self) -> list[Variant]:
        return [v for v in self.variants.values() if v.shadow and v.out_reason is None]

    def take_out(self, variant: Variant, reason: str) -> None:
        now = time.monotonic()
        variant.last_failure = now
        if variant.out_reason is None:
            variant.out_since = now
        variant.out_reason = reason

    def check_health(self) -> None:
        """Out on a health problem; back in once healthy and quiet for `recover_s`."""
        now = time.monotonic()
        for v in self.variants.values():
            problem = v.health_problem()
            if problem is not None:
                self.take_out(v, problem)
            elif v.out_reason is not None and now - v.last_failure >= self.recover_s:
                v.out_reason = None

    def promote(self, name: str) -> dict[str, float]:
        """All traffic to `name` (fixed weights from now on); the old split is kept for
        `rollback`."""
        if name not in self.variants:
            raise KeyError(name)
        if self.variants[name].shadow:
            raise ValueError(f"variant {name!r} is a shadow; serve it before promoting it")
        with self._lock:
            self._previous_weights.append((dict(self.weights), self.policy))
            self.weights = {n: (1.0 if n == name else 0.0) for n in self.weights | {name: 1.0}}
            self.policy = "weights"
        return self.weights

    def rollback(self) -> dict[str, float]:
        """The split (and policy) before the last promotion."""
        with self._lock:
            if not self._previous_weights:
                raise LookupError("nothing to roll back: no promotion since the server started")
            self.weights, self.policy = self._previous_weights.pop()
        return self.weights

    def describe(self) -> dict:
        total = sum(v.served for v in self.variants.values()) or 1
        return {
            "policy": self.policy,
            "sticky": self.sticky,
            "weights": self.weights,
            "rollback_available": bool(self._previous_weights),
            "variants": [
                {
                    "name": v.name,
                    "path": v.path,
                    "version": v.version,
                    "role": "shadow" if v.shadow else "serving",
                    "in_rotation": v.in_rotation,
                    "out_reason": v.out_reason,
                    "served": v.served,
                    "share": v.served / total,
                    "failures": v.failures,
                    "clicks": v.clicks,
                    "click_rate": v.clicks / v.served if v.served else None,
                    "shadow_scored": v.shadow_scored,
                    "shadow_mean_abs_diff": (
                        v.shadow_abs_diff / v.shadow_rows if v.shadow_rows else None
                    ),
                }
                for v in self.variants.values()
            ],
        }


class PromoteBody(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/variants/promote: the variant to give all traffic."""

    variant: str


@dataclass
class VariantOptions:
    """`streamrec serve`'s variant flags: the other model directories by name, the traffic
    split, shadows, the policy, sticky routing, and the action stream the bandit learns from."""

    others: dict[str, Path] = field(default_factory=dict)
    main_name: str = "main"
    split: dict[str, float] | None = None  # default: all to main (thompson: all serving)
    shadows: tuple[str, ...] = ()
    policy: Policy = "weights"
    sticky: bool = False
    actions: str | None = None  # stream address of the action stream (clicks)
    reward_actions: tuple[str, ...] = ("click",)


def build_variants(
    options: VariantOptions,
    main: Variant,
    settings: ServingConfig,
    watch: bool,
) -> VariantSet:
    """Load the other variants beside `main` (each its own worker, cache and watcher) and the
    split. Every variant must read the same requests as main: same features, same kinds."""
    members = {main.name: main}
    expected = _request_contract(main.batcher.snapshot)
    for name, path in options.others.items():
        if name in members:
            raise ValueError(f"two variants are named {name!r}")
        snapshot = Snapshot.load(path).encode_rows(settings.row_precision)
        if (contract := _request_contract(snapshot)) != expected:
            raise ValueError(
                f"variant {name!r} ({path}) reads {contract}, {main.name!r} reads {expected}: "
                "variants must accept the same requests"
            )
        batcher = DynamicBatcher(
            snapshot,
            settings.max_batch_rows,
            settings.max_delay_ms,
            settings.max_queue_rows,
            None,
            settings.threads,
        )
        watcher = (
            Watcher(batcher, Path(path), find_deltas_dir(path), settings.poll_seconds,
                    row_precision=settings.row_precision)
            if watch
            else None
        )
        members[name] = Variant(
            name,
            str(snapshot.loaded.path),
            batcher,
            PredictionCache(settings.cache_bytes),
            watcher,
            shadow=name in options.shadows,
        )
    unknown = set(options.shadows) - set(members)
    if unknown or main.name in options.shadows:
        raise ValueError(f"--shadow names {sorted(unknown) or [main.name]}: shadow a --variant")
    serving = [n for n, v in members.items() if not v.shadow]
    if options.split is not None:
        weights = options.split
    elif options.policy == "thompson":
        weights = dict.fromkeys(serving, 1.0)
    else:
        weights = {main.name: 1.0}
    return VariantSet(members, weights, options.policy, options.sticky)


def _request_contract(snapshot: Snapshot) -> dict:
    return {
        "context": sorted(snapshot.context_features),
        "candidate": sorted(snapshot.candidate_features),
        "kinds": dict(sorted(snapshot.kinds.items())),
    }


def _unit_hash(key: object) -> float:
    """A stable number in [0, 1) per key (the same across processes and restarts)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def variant_options(
    specs: list[str],
    main_name: str = "main",
    split: str | None = None,
    shadows: tuple[str, ...] = (),
    policy: str = "weights",
    sticky: bool = False,
    actions: str | None = None,
    reward_actions: tuple[str, ...] = ("click",),
) -> VariantOptions | None:
    """`serve`'s variant flags as options; None when they ask for nothing beyond one model.
    `specs` are NAME=DIR. Raises ValueError naming the flag that is wrong."""
    if not (specs or shadows or split or policy != "weights"):
        return None
    if policy not in ("weights", "thompson"):
        raise ValueError(f"--policy is weights or thompson, not {policy!r}")
    if policy == "thompson" and actions is None:
        raise ValueError("--policy thompson learns from clicks: add --actions STREAM")
    others: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--variant wants NAME=DIR; got {spec!r}")
        others[name] = Path(path)
    weights = parse_split(split) if split else None
    return VariantOptions(
        others, main_name, weights, tuple(shadows), policy, sticky, actions, tuple(reward_actions)
    )


def parse_split(text: str) -> dict[str, float]:
    """"main=90,new=10" → {"main": 90.0, "new": 10.0}."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--split wants NAME=WEIGHT[,NAME=WEIGHT…]; got {part!r}")
    return weights
