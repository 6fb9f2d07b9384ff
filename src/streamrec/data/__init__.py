"""Input data: file readers, MovieLens and synthetic datasets, the batch loader."""

from importlib import import_module

# Loaded on first use (PEP 562), so reading and inspecting files needs no torch import.
_PUBLIC = {
    "BatchLoader": "streamrec.data.loader",
    "DataError": "streamrec.data.errors",
    "DeadLetter": "streamrec.data.errors",
    "read_records": "streamrec.data.formats",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'streamrec.data' has no attribute {name!r}")
