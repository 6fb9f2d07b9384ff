"""streamrec: recommendation models with collisionless dynamic embedding tables."""

from pathlib import Path

from streamrec.kernel_cache import refresh

refresh(Path(__file__).parent)  # before any numba kernel is compiled or loaded (see kernel_cache)

from streamrec.batch import Batch, JaggedIds  # noqa: E402
from streamrec.schema import (  # noqa: E402
    DenseFeature,
    EmbeddingFeature,
    EncodingFeature,
    Label,
    Schema,
)

__version__ = "0.1.0"
__all__ = [
    "Batch",
    "DenseFeature",
    "EmbeddingFeature",
    "EncodingFeature",
    "JaggedIds",
    "Label",
    "Schema",
    "__version__",
]
