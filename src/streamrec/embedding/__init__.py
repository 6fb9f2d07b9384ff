"""Dynamic embedding tables: hash map, chunked rows, admission, eviction, row optimizers."""

from streamrec.embedding.table import DynamicTable

__all__ = ["DynamicTable"]
