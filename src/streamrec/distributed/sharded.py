"""Row-wise sharded embedding tables over torch.distributed (gloo on CPU, NCCL on GPU).

Every rank holds a DynamicTable per table name, but stores only the ids it owns:
owner(fid) = mix64(fid) mod world_size. Per batch and group of tables (one dim), each rank

  1. de-duplicates each table's ids and sends every unique (table, id, count) to its owner —
     all tables of the group in one all-to-all (plus one for the sizes);
  2. owners resolve what they received — admitting new ids with the counts summed over all
     senders, exactly as one process seeing the whole global batch would — and send the rows
     back in a third all-to-all;
  3. in backward, gradients for those rows travel to the owners the same way (one all-to-all),
     are summed per id over the senders and applied by each table's row optimizer.

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

import numpy as np
import torch
import torch.distributed as dist

from streamrec.embedding.dedup import dedup
from streamrec.embedding.table import DynamicTable

_MIX = np.uint64(0x9E3779B97F4A7C15)


def owner_of(fids: np.ndarray, world_size: int) -> np.ndarray:
    """Rank that owns each fid: a 64-bit mix of the fid, modulo the world size."""
    x = fids.astype(np.uint64) + _MIX
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x % np.uint64(world_size)).astype(np.int64)


def _start_exchange(
    tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int], group
) -> tuple[object, torch.Tensor]:  # noqa: ANN001
    """Start an all-to-all of `tensor`'s rows; → (work to wait on, the receive buffer)."""
    out = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
    work = dist.all_to_all_single(
        out, tensor.contiguous(), recv_counts, send_counts, group=group, async_op=True
    )
    return work, out


def _exchange(
    tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int], group
) -> torch.Tensor:  # noqa: ANN001
    work, out = _start_exchange(tensor, send_counts, recv_counts, group)
    work.wait()
    return out


@dataclass
class _Routed:
    """What backward needs to send a lookup's gradients to the right owners and rows."""

    order: np.ndarray  # position in the sent payload → position in our unique list
    send: list[int]
    recv: list[int]
    owned: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per table: received idx, back, rows


class ShardedGroup:
    """Tables of one dim spread over the ranks of `group` (see the module docstring)."""

    def __init__(
        self,
        tables: Sequence[DynamicTable],
        group=None,  # noqa: ANN001
        exchange_dtype: torch.dtype = torch.float32,
        staleness: int = 0,
        gradient_group=None,  # noqa: ANN001
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
        self._in_flight: deque[tuple[object, torch.Tensor, _Routed]] = deque()

    def lookup(
        self, fids: Sequence[np.ndarray], now: float | None, insert: bool
    ) -> tuple[torch.Tensor, list[np.ndarray], _Routed]:
        """Per table fids → (rows of every table's unique ids, stacked table after table
        [U, dim]; per table the inverse into that stack; a handle for backward)."""
        tabs, uniq, counts, inverses = [], [], [], []
        base = 0
        for t, f in enumerate(fids):
            u, inv, c = dedup(f)
            tabs.append(np.full(len(u), t, np.int64))
            uniq.append(u)
            counts.append(c)
            inverses.append(inv + base)
            base += len(u)
        tabs_all, uniq_all, counts_all = (
            np.concatenate(x) if x else np.empty(0, np.int64) for x in (tabs, uniq, counts)
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
        return weights, inverses, _Routed(order, send_l, recv_l, owned)

    def apply_gradients(self, grads: torch.Tensor, routed: _Routed) -> None:
        """grads [U, dim] for the unique ids of `lookup` (same order). In hybrid mode the
        exchange is only started here, and applied once more than `staleness` are in flight."""
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

    def _apply(self, incoming: torch.Tensor, routed: _Routed) -> None:
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
        group=None,  # noqa: ANN001
        exchange_dtype: torch.dtype = torch.float32,
        staleness: int = 0,
        gradient_group=None,  # noqa: ANN001
    ) -> None:
        self.local = local
        self._group = ShardedGroup([local], group, exchange_dtype, staleness, gradient_group)

    def flush(self) -> None:
        self._group.flush()

    @property
    def bytes_sent(self) -> int:
        return self._group.bytes_sent

    def lookup(self, fids: np.ndarray, now: float | None, insert: bool):  # noqa: ANN201
        """fids [n] → (rows of the unique ids [U, dim], inverse [n], a handle for backward)."""
        weights, inverses, routed = self._group.lookup([fids], now, insert)
        return weights, inverses[0], routed

    def apply_gradients(self, grads: torch.Tensor, handle: _Routed) -> None:
        self._group.apply_gradients(grads, handle)
