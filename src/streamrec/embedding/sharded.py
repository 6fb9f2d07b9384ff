"""Row-wise sharded embedding tables over torch.distributed (gloo on CPU, NCCL on GPU).

`ShardedGroup` is the `RowLookup` (lookup.py) of a group of tables spread over the ranks;
`EmbeddingCollection.shard` swaps it in for the local `TableGroup`, so the collection — and
every model — runs unchanged.

Every rank holds a DynamicTable per table name, but stores only the ids it owns:
owner(fid) = mix64(fid) mod world_size. Per batch and group of tables (one dim), each rank

  1. de-duplicates each table's ids and sends every unique (table, id, count) to its owner —
     all tables of the group in one all-to-all (plus one for the sizes);
  2. owners resolve what they received — admitting new ids with the counts summed over all
     senders, exactly as one process seeing the whole global batch would — and send the rows
     back in a third all-to-all;
  3. in the optimizer step (after backward left the rows' gradients beside the group),
     gradients for those rows travel to the owners the same way (one all-to-all), are summed
     per id over the senders and applied by each table's row optimizer.

Gradients are divided by the world size, so with data-parallel dense training (DDP averages
dense gradients) N ranks each holding 1/N of a global batch take the same step as one process
holding all of it. The exchanges run on their own process group, so they never interleave with
DDP's all-reduces. Rows and gradients can travel as fp16 (half the bytes).

Hybrid mode (`staleness` s > 0, after Persia): step 3 is started asynchronously on a group of
its own and completed up to s steps later, so the next lookups and the dense step run while
gradients travel. A row read at step t then carries every gradient up to step t − s − 1 at
least; `flush()` completes whatever is in flight (before evaluation, eviction, checkpoints).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from streamrec.embedding.collection import EmbeddingCollection
from streamrec.embedding.dedup import dedup
from streamrec.embedding.hashmap import fid_hash
from streamrec.embedding.lookup import RowLookup
from streamrec.embedding.table import DynamicTable


@numba.njit(nogil=True, cache=True)
def _owners(fids: np.ndarray, world_size: int, out: np.ndarray) -> None:
    for i in range(fids.shape[0]):
        out[i] = fid_hash(fids[i]) % np.uint64(world_size)


def owner_of(fids: np.ndarray, world_size: int) -> np.ndarray:
    """int64 [n]: the rank that owns each fid — the tables' own fid hash, modulo the world."""
    fids = np.ascontiguousarray(fids, dtype=np.int64)
    out = np.empty(fids.shape[0], np.int64)
    _owners(fids, world_size, out)
    return out


def _start_exchange(
    tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int], group: object
) -> tuple[object, torch.Tensor]:
    """Start an all-to-all of `tensor`'s rows; → (work to wait on, the receive buffer)."""
    out = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
    work = dist.all_to_all_single(
        out, tensor.contiguous(), recv_counts, send_counts, group=group, async_op=True
    )
    return work, out


def _exchange(
    tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int], group: object
) -> torch.Tensor:
    work, out = _start_exchange(tensor, send_counts, recv_counts, group)
    work.wait()
    return out


@dataclass
class Routed:
    """What backward needs to send a lookup's gradients to the right owners and rows."""

    order: np.ndarray  # position in the sent payload → position in our unique list
    send: list[int]
    recv: list[int]
    owned: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per table: received idx, back, rows


class ShardedGroup(RowLookup):
    """Tables of one dim spread over the ranks of `group` (see the module docstring)."""

    def __init__(
        self,
        tables: Sequence[DynamicTable],
        group: object = None,
        exchange_dtype: torch.dtype = torch.float32,
        staleness: int = 0,
        gradient_group: object = None,
    ) -> None:
        self.tables = list(tables)
        self.dim = self.tables[0].dim
        self.group = group
        self.world = dist.get_world_size(group)
        self.exchange_dtype = exchange_dtype
        self.bytes_sent = 0
        self.staleness = staleness
        # Gradient exchanges in flight never share a group with the lookups' synchronous ones.
        self.gradient_group = gradient_group if gradient_group is not None else group
        self._in_flight: deque[tuple[object, torch.Tensor, Routed]] = deque()

    def lookup(
        self, fids: np.ndarray, segments: np.ndarray, now: float | None, insert: bool
    ) -> tuple[torch.Tensor, np.ndarray, Routed]:
        """`RowLookup.lookup` (lookup.py): input dist → owners' lookup → output dist."""
        tabs, uniq, counts, inverses = [], [], [], []
        base = 0
        for t in range(len(self.tables)):
            u, inv, c = dedup(fids[segments[t] : segments[t + 1]])
            tabs.append(np.full(len(u), t, np.int64))
            uniq.append(u)
            counts.append(c)
            inverses.append(inv + base)
            base += len(u)
        tabs_all, uniq_all, counts_all, inverse = (
            np.concatenate(x) for x in (tabs, uniq, counts, inverses)
        )
        owners = owner_of(uniq_all, self.world)
        order = np.argsort(owners, kind="stable")
        send = np.bincount(owners, minlength=self.world).astype(np.int64)
        recv_t = torch.empty(self.world, dtype=torch.int64)
        dist.all_to_all_single(recv_t, torch.from_numpy(send), group=self.group)
        send_l, recv_l = send.tolist(), recv_t.tolist()
        payload = torch.from_numpy(
            np.stack([tabs_all[order], uniq_all[order], counts_all[order]], axis=1)
        )
        got = _exchange(payload, send_l, recv_l, self.group).numpy()
        self.bytes_sent += payload.numel() * 8
        values = np.empty((len(got), self.dim), np.float32)
        owned = []
        for t, table in enumerate(self.tables):
            idx = np.flatnonzero(got[:, 0] == t)
            mine, back, _ = dedup(got[idx, 1])  # one id from several senders: resolve once
            summed = np.bincount(back, weights=got[idx, 2], minlength=len(mine)).astype(np.int64)
            rows = table.resolve(mine, summed, now, insert=insert)
            values[idx] = table.gather_rows(rows)[back]
            owned.append((idx, back, rows))
        out = torch.from_numpy(values).to(self.exchange_dtype)
        returned = _exchange(out, recv_l, send_l, self.group).float()
        self.bytes_sent += out.numel() * out.element_size()
        weights = torch.empty_like(returned)
        weights[torch.from_numpy(order)] = returned
        return weights, inverse, Routed(order, send_l, recv_l, owned)

    def apply_gradients(self, routed: Routed, grads: torch.Tensor) -> None:
        """grads [U, dim] for the unique ids of `lookup` (same order). In hybrid mode the
        exchange is only started here, and applied once more than `staleness` are in flight."""
        grads = grads.detach().cpu().float()
        outgoing = (grads[torch.from_numpy(routed.order)] / self.world).to(self.exchange_dtype)
        self.bytes_sent += outgoing.numel() * outgoing.element_size()
        if not self.staleness:
            incoming = _exchange(outgoing, routed.send, routed.recv, self.group)
            self._apply(incoming.float(), routed)
            return
        work, incoming = _start_exchange(outgoing, routed.send, routed.recv, self.gradient_group)
        self._in_flight.append((work, incoming, routed))
        while len(self._in_flight) > self.staleness:
            self._complete_oldest()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def flush(self) -> None:
        while self._in_flight:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        work, incoming, routed = self._in_flight.popleft()
        work.wait()
        self._apply(incoming.float(), routed)

    def _apply(self, incoming: torch.Tensor, routed: Routed) -> None:
        for table, (idx, back, rows) in zip(self.tables, routed.owned, strict=True):
            summed = torch.zeros(int(back.max()) + 1 if back.size else 0, self.dim)
            summed.index_add_(0, torch.from_numpy(back), incoming[torch.from_numpy(idx)])
            stored = rows >= 0
            table.apply_row_gradients(rows[stored], summed[torch.from_numpy(stored)])


class ShardedTable:
    """One logical table spread over the ranks (a group of one)."""

    def __init__(
        self,
        local: DynamicTable,
        group: object = None,
        exchange_dtype: torch.dtype = torch.float32,
        staleness: int = 0,
        gradient_group: object = None,
    ) -> None:
        self.local = local
        self._group = ShardedGroup([local], group, exchange_dtype, staleness, gradient_group)

    def flush(self) -> None:
        self._group.flush()

    @property
    def in_flight(self) -> int:
        """Gradient exchanges started but not yet applied (hybrid mode)."""
        return self._group.in_flight

    @property
    def bytes_sent(self) -> int:
        return self._group.bytes_sent

    def lookup(
        self, fids: np.ndarray, now: float | None, insert: bool
    ) -> tuple[torch.Tensor, np.ndarray, Routed]:
        """fids [n] → (rows of the unique ids [U, dim], inverse [n], a handle for backward)."""
        fids = np.ascontiguousarray(fids, dtype=np.int64)
        return self._group.lookup(fids, np.array([0, fids.shape[0]]), now, insert)

    def apply_gradients(self, handle: Routed, grads: torch.Tensor) -> None:
        """As every RowLookup's: the handle first, then grads [U, dim]."""
        self._group.apply_gradients(handle, grads)


def shard_tables(
    model: nn.Module,
    group: object = None,
    exchange_dtype: torch.dtype = torch.float32,
    staleness: int = 0,
    gradient_group: object = None,
) -> list[EmbeddingCollection]:
    """Spread the tables of every EmbeddingCollection inside `model` over the ranks of `group`
    (in place); each rank keeps the rows it owns. Returns the collections (to `flush`)."""
    collections = [m for m in model.modules() if isinstance(m, EmbeddingCollection)]
    for collection in collections:
        collection.replace_lookups(
            lambda tables: ShardedGroup(tables, group, exchange_dtype, staleness, gradient_group)
        )
    return collections
