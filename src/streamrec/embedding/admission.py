"""Who gets a row: frequency admission through a count-min sketch, or probabilistic inclusion.

Long-tail ids seen once or twice cost memory and learn nothing (Monolith, Kraken). With
`admit_min_count=k`, an id is stored only once it has been seen k times; until then it reads the
table's default row (zeros) and gets no update. Counts of not-yet-admitted ids live in a
count-min sketch: `depth` rows of `width` uint16 counters (8·width bytes for depth 4), so memory
does not grow with the number of distinct ids.

False admission. A sketch counter over-counts by the other ids hashed onto it. With E events of
not-yet-admitted ids spread over `width` counters, an id truly seen c < k times is admitted only
if all `depth` of its counters carry ≥ k − c extra counts; by Markov's inequality per row and
independent rows, P(false admit) ≤ (E / (width · (k − c)))^depth. Example: 10M events, width
2^20, depth 4, k = 2, c = 1: (9.5)^4 ≫ 1 — the bound is vacuous, so size the sketch to the
traffic between evictions: E = 1M gives (0.95)^4 ≈ 0.8 at worst, E = 100k gives ≈ 1e-4.
`tests/embedding/test_admission.py` measures the rate.

With `admit_probability=p`, each occurrence of an unknown id admits it with probability p
(deterministic: the draw hashes the fid with a per-table counter), so an id seen c times gets in
with probability 1 − (1 − p)^c.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch

from streamrec.embedding.hashmap import mix64

SKETCH_DEPTH = 4
_SEEDS = np.array(
    [0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89],
    dtype=np.uint64,
)


def new_sketch(width: int) -> np.ndarray:
    """uint16 [SKETCH_DEPTH, width] counters; width is rounded up to a power of two."""
    width = 1 << max(4, (width - 1).bit_length())
    return np.zeros((SKETCH_DEPTH, width), np.uint16)


def sketch_state(sketch: np.ndarray) -> dict[str, torch.Tensor]:
    """The sketch as state-dict tensors. Dense (`sketch`) once a third of its counters are
    set; before that, only the set ones (`sketch_nonzero` int32 positions in the flattened
    sketch, `sketch_counts`, `sketch_shape`): 6 bytes a set counter against 2 bytes a counter —
    a table that saw 7,200 rows stores ~0.2 MB instead of 8 MB, in every checkpoint and model."""
    flat = sketch.reshape(-1)
    nonzero = np.flatnonzero(flat)
    if 3 * nonzero.size >= flat.size:
        return {"sketch": torch.from_numpy(sketch.view(np.int16).copy())}
    return {
        "sketch_nonzero": torch.from_numpy(nonzero.astype(np.int32)),
        "sketch_counts": torch.from_numpy(flat[nonzero].view(np.int16).copy()),
        "sketch_shape": torch.tensor(sketch.shape, dtype=torch.int64),
    }


def sketch_from_state(state: Any) -> np.ndarray:
    """The uint16 sketch `sketch_state` stored (either form; `state` a dict of tensors or a
    lazily read tensor file)."""
    if "sketch" in state.keys():
        return state["sketch"].numpy().view(np.uint16).copy()
    shape = tuple(int(x) for x in state["sketch_shape"].tolist())
    sketch = np.zeros(shape, np.uint16)
    positions = state["sketch_nonzero"].numpy().astype(np.int64)
    sketch.reshape(-1)[positions] = state["sketch_counts"].numpy().view(np.uint16)
    return sketch


@numba.njit(nogil=True, cache=True)
def sketch_add(sketch: np.ndarray, fid: np.int64, count: int) -> int:
    """Add `count` occurrences of fid; returns the new estimate (min over rows, saturating)."""
    mask = np.uint64(sketch.shape[1] - 1)
    est = 65535
    for d in range(sketch.shape[0]):
        j = mix64(np.uint64(fid) ^ _SEEDS[d]) & mask
        v = min(int(sketch[d, j]) + count, 65535)
        sketch[d, j] = v
        est = min(est, v)
    return est


@numba.njit(nogil=True, cache=True)
def admit_draw(fid: np.int64, counter: np.uint64, count: int, p: float) -> bool:
    """True with probability 1 − (1 − p)^count, deterministically from (fid, counter)."""
    u = (mix64(np.uint64(fid) ^ mix64(counter)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return u < 1.0 - (1.0 - p) ** count
