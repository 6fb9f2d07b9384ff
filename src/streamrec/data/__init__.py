"""Input data: file readers, MovieLens and synthetic datasets, the batch loader."""

from streamrec.data.errors import DataError, DeadLetter
from streamrec.data.formats import read_records
from streamrec.data.loader import BatchLoader

__all__ = ["BatchLoader", "DataError", "DeadLetter", "read_records"]
