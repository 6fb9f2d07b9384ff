"""streamrec: recommendation models with collisionless dynamic embedding tables."""

from importlib import import_module
from pathlib import Path

from streamrec.kernel_cache import refresh

refresh(Path(__file__).parent)  # before any numba kernel is compiled or loaded (see kernel_cache)

__version__ = "0.1.0"

# The public names load on first use (PEP 562): `streamrec data inspect` and other commands
# that never touch a tensor start without importing torch (~1 s).
_PUBLIC = {
    "Batch": "streamrec.batch",
    "JaggedIds": "streamrec.batch",
    "DenseFeature": "streamrec.schema",
    "EmbeddingFeature": "streamrec.schema",
    "EncodingFeature": "streamrec.schema",
    "Label": "streamrec.schema",
    "Schema": "streamrec.schema",
}
__all__ = [*sorted(_PUBLIC), "__version__"]


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'streamrec' has no attribute {name!r}")
