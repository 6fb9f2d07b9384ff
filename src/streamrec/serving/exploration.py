"""Exploration from uncertainty: a share of a list's slots goes to items the ranker knows little
about, chosen by Thompson sampling on its per-prediction uncertainty.

Why: a ranker that only shows what it already rates highly never learns about the items it
rates low from too little evidence — the feedback loop confirms its first guesses. The linear
models give a count-based standard deviation of each logit (`RankingModel.uncertainty`; BOPR's
predictive variance, He et al. 2014 §3): small for ids seen thousands of times, ~1 per unseen id.

How: of k slots, ⌊share·k⌋ — plus one more with probability equal to the remainder, so the
share holds on average for any k — are explore slots; the others take the best items by score,
as without exploration. Each explore slot takes, among the items not yet chosen, the one with
the highest sampled logit logit(p) + σ·z, z ~ N(0, 1) per item: an item with a high score or a
wide σ is likely to win, one known to be poor is not. Explore slots are the list's last ones:
the exploration's cost (the clicks the exploited items there would have had) falls on the
positions users examine least.
"""

from __future__ import annotations

import numpy as np


def explore_slots(k: int, share: float, rng: np.random.Generator) -> int:
    """How many of k slots explore: share·k on average (randomised rounding)."""
    expected = share * k
    whole = int(np.floor(expected))
    return min(k, whole + int(rng.random() < expected - whole))


def choose(
    probabilities: np.ndarray,
    sigma: np.ndarray,
    k: int,
    share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """(the indices shown, in order, at most k; how many of the last ones were explored).
    probabilities float [n]: the ranker's first task; sigma float [n]: its logit's standard
    deviation per item."""
    order = np.argsort(-probabilities, kind="stable")
    shown = min(k, order.size)
    explored = min(explore_slots(shown, share, rng), order.size)
    if explored == 0:
        return order[:shown], 0
    exploit = order[: shown - explored]
    rest = order[shown - explored :]
    p = np.clip(probabilities[rest].astype(np.float64), 1e-7, 1 - 1e-7)
    sampled = np.log(p / (1 - p)) + sigma[rest] * rng.standard_normal(rest.size)
    picked = rest[np.argsort(-sampled, kind="stable")[:explored]]
    return np.concatenate([exploit, picked]), explored
