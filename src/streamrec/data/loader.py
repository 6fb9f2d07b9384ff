"""BatchLoader: record batches → fixed-size encoded Batches, prepared on a background thread.

Reading, parsing and encoding (hashing, transforms) run one batch ahead of the consumer in a
prefetch thread — pyarrow and the numba hash release the GIL, so this overlaps with training.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing

import numpy as np
import pyarrow as pa

from streamrec.batch import Batch
from streamrec.schema import Schema

_DONE = object()


def rebatch(
    batches: Iterable[pa.RecordBatch], rows: int, drop_last: bool = False
) -> Iterator[pa.Table]:
    """Re-cut a stream of record batches into tables of exactly `rows` rows (last may be short)."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for b in batches:
        pending.append(b)
        have += b.num_rows
        while have >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending = rest.to_batches()
            have = rest.num_rows
    if have and not drop_last:
        yield pa.Table.from_batches(pending)


def shuffle_blocks(
    batches: Iterable[pa.RecordBatch], block_rows: int, seed: int
) -> Iterator[pa.RecordBatch]:
    """Rows in random order within consecutive blocks of `block_rows` rows (seeded, so a resumed
    epoch sees the same order). Bounded memory: one block. A block at least as large as the
    data is a full shuffle. Why: logs in time order come in bursts (one user rating many items
    at once), and SGD that sees a user's rows back to back over-fits them."""
    rng = np.random.default_rng(seed)
    for block in rebatch(batches, block_rows):
        yield from block.take(rng.permutation(block.num_rows)).to_batches()


class BatchLoader:
    """Iterate `Batch`es of `batch_size` rows from a factory of record-batch iterators.

    `source` is called once per pass (epoch), so a file is re-read each epoch in bounded memory.
    `prefetch` batches are prepared ahead on one background thread; an error there is re-raised
    in the consumer.
    """

    def __init__(
        self,
        source: Callable[[], Iterable[pa.RecordBatch]],
        schema: Schema,
        batch_size: int,
        prefetch: int = 2,
        drop_last: bool = False,
        with_labels: bool = True,
    ) -> None:
        self.source = source
        self.schema = schema
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.drop_last = drop_last
        self.with_labels = with_labels

    def _produce(self) -> Iterator[Batch]:
        for table in rebatch(self.source(), self.batch_size, self.drop_last):
            yield self.schema.encode(table, with_labels=self.with_labels)

    def __iter__(self) -> Iterator[Batch]:
        if self.prefetch <= 0:
            yield from self._produce()
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def work() -> None:
            # closing() ends the reader chain on this thread when the consumer stops early,
            # instead of leaving a suspended file reader to be finalised at interpreter exit
            try:
                with closing(self._produce()) as produced:
                    for batch in produced:
                        while not stop.is_set():
                            try:
                                q.put(batch, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        if stop.is_set():
                            return
                q.put(_DONE)
            except BaseException as e:  # handed to the consumer, raised there
                q.put(e)

        thread = threading.Thread(target=work, name="streamrec-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)
