"""Row-wise sharded embedding tables over torch.distributed (gloo on CPU, NCCL on GPU).

Every rank holds a DynamicTable per table name, but stores only the ids it owns:
owner(fid) = mix64(fid) mod world_size. Per batch and table, each rank

  1. de-duplicates its ids, and sends each unique id (with its occurrence count) to its owner
     with one all-to-all;
  2. owners resolve what they received — admitting new ids with the counts summed over all
     senders, exactly as one process seeing the whole global batch would — and send the rows
     back with a second all-to-all;
  3. in backward, gradients for those rows travel to the owners the same way, are summed per id
     over the senders and applied by the table's row optimizer.

Gradients are divided by the world size, so with data-parallel dense training (DDP averages
dense gradients) N ranks each holding 1/N of a global batch take the same step as one process
holding all of it. The exchanges run on their own process group, so they never interleave with
DDP's all-reduces.
"""

from __future__ import annotations

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


def _exchange(
    tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int], group
) -> torch.Tensor:  # noqa: ANN001
    out = tensor.new_empty((sum(recv_counts), *tensor.shape[1:]))
    dist.all_to_all_single(out, tensor.contiguous(), recv_counts, send_counts, group=group)
    return out


class ShardedTable:
    """One logical table spread over the ranks of `group` (see the module docstring)."""

    def __init__(
        self,
        local: DynamicTable,
        group=None,  # noqa: ANN001
        exchange_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.local = local
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.exchange_dtype = exchange_dtype  # float16 halves the bytes of rows and grads
        self.bytes_sent = 0

    def _route(self, unique: np.ndarray, counts: np.ndarray):  # noqa: ANN202
        owners = owner_of(unique, self.world)
        order = np.argsort(owners, kind="stable")
        send = np.bincount(owners, minlength=self.world).astype(np.int64)
        recv = torch.empty(self.world, dtype=torch.int64)
        dist.all_to_all_single(recv, torch.from_numpy(send), group=self.group)
        send_l, recv_l = send.tolist(), recv.tolist()
        payload = torch.from_numpy(np.stack([unique[order], counts[order]], axis=1))
        received = _exchange(payload, send_l, recv_l, self.group)
        self.bytes_sent += payload.numel() * 8
        return order, send_l, recv_l, received[:, 0].numpy(), received[:, 1].numpy()

    def lookup(self, fids: np.ndarray, now: float | None, insert: bool):  # noqa: ANN201
        """fids [n] → (rows of the unique ids [U, dim], inverse [n], a handle for backward)."""
        unique, inverse, counts = dedup(fids)
        order, send, recv, their_fids, their_counts = self._route(unique, counts)
        # Ids from several senders meet here: resolve them once with their summed counts.
        mine, back, _ = dedup(their_fids)
        summed = np.bincount(back, weights=their_counts, minlength=len(mine)).astype(np.int64)
        rows = self.local.resolve(mine, summed, now, insert=insert)
        values = torch.from_numpy(self.local.gather_rows(rows)[back])
        returned = _exchange(values.to(self.exchange_dtype), recv, send, self.group).float()
        self.bytes_sent += (
            values.numel() * values.new_empty((), dtype=self.exchange_dtype).element_size()
        )
        weights = torch.empty_like(returned)
        weights[torch.from_numpy(order)] = returned
        return weights, inverse, (order, send, recv, mine, back, rows)

    def apply_gradients(self, grads: torch.Tensor, handle) -> None:  # noqa: ANN001
        """grads [U, dim] for the unique ids of `lookup` (same order)."""
        order, send, recv, mine, back, rows = handle
        outgoing = (grads[torch.from_numpy(order)] / self.world).to(self.exchange_dtype)
        incoming = _exchange(outgoing, send, recv, self.group).float()
        self.bytes_sent += outgoing.numel() * outgoing.element_size()
        summed = torch.zeros(len(mine), incoming.shape[1])
        summed.index_add_(0, torch.from_numpy(back), incoming)
        stored = rows >= 0
        self.local.apply_row_gradients(rows[stored], summed[torch.from_numpy(stored)])
