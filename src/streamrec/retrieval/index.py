"""Retriever: one interface over faiss indexes of item vectors (inner product).

index types: "flat" (exact), "ivf_flat", "ivf_pq", "hnsw", "sq8" (8-bit scalar quantisation).
Items are addressed by their int64 ids. `add` inserts or replaces items and `remove` deletes
them without a rebuild — new items from online training become retrievable at once. HNSW cannot
delete in place, so removed ids are kept as tombstones and filtered out of results (the search
asks for more to make up for them). An HNSW search that would walk most of its graph — a
/v1/recommend asks for 1,000 candidates, plus the user's seen items, from catalogs of a few
thousand — scans the vectors exactly instead (`exact_scan_is_cheaper`): faster there, and exact.
The index is saved in faiss's own binary format (no pickle) by `to_bytes` / `from_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

INDEX_TYPES = ("flat", "ivf_flat", "ivf_pq", "hnsw", "sq8")

SCAN_MACS_PER_VISIT = 4000
"""How many multiply-adds of an exact scan cost as much as one unit of HNSW's search width
(`efSearch`), single-threaded on this project's 2-core box, dim 32: a scan ran ~8 GMAC/s; a
graph walk ~1 µs per unit of width (0.44 ms at width 1,000 over 1,682 items, 0.85 ms over
20,000, 1.5 ms over 200,000). Set where the two cost about the same, a little on the graph's
side: measured, the scan is 0.02-0.35 ms where this picks it (11× faster over 1,682 items at
1,000 results, 2.5× over 200,000 at 1,700), and the graph wins where it is kept (0.05 vs 0.08
ms over 20,000 items at 100 results; 0.13 vs 0.81 over 200,000)."""


def exact_scan_is_cheaper(items: int, dim: int, width: int) -> bool:
    """Whether scanning `items` vectors of `dim` exactly costs less than an HNSW search of
    that `width` (efSearch, ≥ the results asked for)."""
    return items * dim <= SCAN_MACS_PER_VISIT * width


@dataclass
class IndexParams:
    """How the faiss index is built (`retrieval:` in the job config; stored in the manifest)."""

    index_type: str = "hnsw"
    nlist: int = 256  # IVF: number of clusters
    nprobe: int = 16  # IVF: clusters searched
    pq_m: int = 16  # IVF-PQ: sub-quantisers (must divide the dim)
    hnsw_m: int = 32  # HNSW: links per node
    ef_construction: int = 80
    ef_search: int = 128

    @classmethod
    def from_manifest(cls, saved: dict) -> IndexParams:
        """Models saved before the field was named `index_type` call it `kind`."""
        saved = dict(saved)
        if "kind" in saved:
            saved["index_type"] = saved.pop("kind")
        return cls(**saved)


class Retriever:
    def __init__(self, dim: int, params: IndexParams | None = None) -> None:
        self.params = params or IndexParams()
        if self.params.index_type not in INDEX_TYPES:
            raise ValueError(
                f"index type must be one of {INDEX_TYPES}, got {self.params.index_type!r}"
            )
        self.dim = dim
        self.index = self._new_index()
        self._tombstones: set[int] = set()
        self._labels: np.ndarray | None = None  # HNSW: the id of each stored vector

    def _new_index(self) -> faiss.Index:
        p, d, ip = self.params, self.dim, faiss.METRIC_INNER_PRODUCT
        if p.index_type == "flat":
            inner = faiss.IndexFlatIP(d)
        elif p.index_type == "ivf_flat":
            inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, p.nlist, ip)
            inner.nprobe = p.nprobe
        elif p.index_type == "ivf_pq":
            inner = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, p.nlist, p.pq_m, 8, ip)
            inner.nprobe = p.nprobe
        elif p.index_type == "hnsw":
            inner = faiss.IndexHNSWFlat(d, p.hnsw_m, ip)
            inner.hnsw.efConstruction = p.ef_construction
            inner.hnsw.efSearch = p.ef_search
        else:
            inner = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, ip)
        self._inner = inner
        return faiss.IndexIDMap2(inner)

    @property
    def size(self) -> int:
        return int(self.index.ntotal) - len(self._tombstones)

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """(Re)build from scratch: train (IVF / PQ / SQ) on the vectors, then add them."""
        self.index = self._new_index()
        self._tombstones.clear()
        self._labels = None
        x = np.ascontiguousarray(vectors, np.float32)
        if not self._inner.is_trained:
            if self.params.index_type.startswith("ivf"):
                self._inner.nlist = min(self.params.nlist, max(1, len(x) // 39))
                self._inner.nprobe = min(self.params.nprobe, self._inner.nlist)
            self._inner.train(x)
        self.index.add_with_ids(x, np.ascontiguousarray(ids, np.int64))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert items, replacing any that are already indexed."""
        ids = np.ascontiguousarray(ids, np.int64)
        if self.params.index_type != "hnsw":
            self.index.remove_ids(ids)
        # HNSW keeps a replaced item's old node too; `search` keeps each id's best hit once.
        self._tombstones.difference_update(ids.tolist())
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids)
        self._labels = None

    def remove(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, np.int64)
        if self.params.index_type == "hnsw":
            present = [i for i in ids.tolist() if self._has(i)]
            self._tombstones.update(present)
        else:
            self.index.remove_ids(ids)

    def _has(self, item: int) -> bool:
        try:
            self.index.reconstruct(int(item))
            return True
        except RuntimeError:
            return False

    def search(
        self, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids [Q, k] (−1 where fewer exist) and scores [Q, k] per query; `exclude`
        removes ids per query (e.g. items the user has seen)."""
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        extra = len(self._tombstones) + (
            max((len(e) for e in exclude), default=0) if exclude else 0
        )
        total = int(self.index.ntotal)
        fetch = min(k + extra, max(total, 1))
        if self.params.index_type != "hnsw":
            scores, ids = self.index.search(q, fetch)
        elif exact_scan_is_cheaper(total, self.dim, max(self.params.ef_search, fetch)):
            scores, ids = self._scan(q, fetch)
        else:  # HNSW returns at most efSearch results
            self._inner.hnsw.efSearch = max(self.params.ef_search, fetch)
            scores, ids = self.index.search(q, fetch)
        out_ids = np.full((len(q), k), -1, np.int64)
        out_scores = np.full((len(q), k), -np.inf, np.float32)
        for row in range(len(q)):
            skip = self._tombstones | (exclude[row] if exclude else set())
            at = first_kept(ids[row], skip, k)
            out_ids[row, : len(at)] = ids[row][at]
            out_scores[row, : len(at)] = scores[row][at]
        return out_ids, out_scores

    def _scan(self, q: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """An HNSW index's exact top-`fetch` (scores, ids) [Q, fetch]: every stored vector
        scanned (the graph's own flat storage, replaced items' old vectors included, as the
        graph walk would meet them)."""
        if self._labels is None or len(self._labels) != self.index.ntotal:
            self._labels = faiss.vector_to_array(self.index.id_map)
        scores, positions = faiss.downcast_index(self._inner.storage).search(q, fetch)
        return scores, np.where(positions >= 0, self._labels[positions.clip(0)], -1)

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @property
    def tombstones(self) -> list[int]:
        """Ids removed but still in the faiss index (filtered out of results), sorted: what
        `from_bytes` needs beside the index bytes to restore the same retriever."""
        return sorted(self._tombstones)

    @classmethod
    def from_bytes(
        cls, data: bytes, dim: int, params: IndexParams, tombstones: list[int] | None = None
    ) -> Retriever:
        r = cls(dim, params)
        r.index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
        r._inner = faiss.downcast_index(r.index.index)
        if params.index_type == "hnsw":
            r._inner.hnsw.efSearch = params.ef_search
        elif params.index_type.startswith("ivf"):
            r._inner.nprobe = params.nprobe
        r._tombstones = set(tombstones or [])
        return r


def recall_against_exact(
    retriever: Retriever, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int
) -> float:
    """Fraction of the exact top-k that the retriever returns (averaged over queries)."""
    exact = Retriever(retriever.dim, IndexParams(index_type="flat"))
    exact.build(ids, vectors)
    truth, _ = exact.search(queries, k)
    got, _ = retriever.search(queries, k)
    hits = [
        len(set(t[t >= 0]) & set(g[g >= 0])) / max(1, (t >= 0).sum())
        for t, g in zip(truth, got, strict=True)
    ]
    return float(np.mean(hits))


def first_kept(found: np.ndarray, skip: set[int], k: int) -> np.ndarray:
    """Positions in `found` (int64 [n], a search's ids, best first; −1: none) of the first k
    ids that are real, not in `skip` and not met before — in order. Vectorised: a request's
    search returns ~1,000 ids, and a loop over them was ~10% of a /v1/recommend's CPU."""
    keep = found >= 0
    if skip:
        keep &= ~np.isin(found, np.fromiter(skip, np.int64, len(skip)))
    at = np.flatnonzero(keep)
    _, first = np.unique(found[at], return_index=True)  # each id where it is first met
    if len(first) < len(at):
        at = at[np.sort(first)]
    return at[:k]
