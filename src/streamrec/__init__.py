"""streamrec: recommendation models with collisionless dynamic embedding tables."""

from streamrec.batch import Batch, JaggedIds
from streamrec.schema import DenseFeature, EmbeddingFeature, EncodingFeature, Label, Schema

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
