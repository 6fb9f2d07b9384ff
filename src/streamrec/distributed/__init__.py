"""Scale-out on torch.distributed: row-wise sharded tables (see sharded.py)."""

from streamrec.distributed.sharded import ShardedTable, owner_of

__all__ = ["ShardedTable", "owner_of"]
