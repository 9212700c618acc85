"""When, and in which order, a shard's memtables reach the disk.

A shard writes without RocksDB's write-ahead log (``store.py``), so what survives a crash is what was flushed.
Two rules keep that a state the shard can go on from:

- **The vectors' column family is never behind the rest.** RocksDB flushes both families together when a
  memtable fills (``atomic_flush``), but a flush asked for by hand covers one family (rocksdict has no call for
  several). So a flush here writes the vectors' family and waits for it, then the rest: a crash between the two
  leaves the vectors ahead, which ``store_recovery.reconcile`` puts right at the next open. The other way round,
  a checkpoint could reach the disk before vectors it counts as written, and they would be lost.
- **Nothing stays only in memory for long.** A write is flushed ``FLUSH_INTERVAL_S`` after it at the latest, so a
  slow trickle of documents is not held only in memory while the topic's retention could delete what a crash
  would need again.

Measured: waiting for the vectors' flush took 2-7 ms for 100 vectors and 20-31 ms for a full 16 MiB memtable
(9,000 384-d vectors), on the loop's thread, once per ``FLUSH_INTERVAL_S`` at most; the rest is not waited for.
"""

from __future__ import annotations

import time

from rocksdict import Rdict

__all__ = ["FLUSH_INTERVAL_S", "MemtableFlusher"]

FLUSH_INTERVAL_S = 5.0
"""The longest a write stays only in RocksDB's memtables: after a crash, at most this much of applied input is read
again from the topic. Kafka Streams flushes its stores at each commit, every 30 s by default."""


class MemtableFlusher:
    """Flushes one open shard's two column families, vectors first.

    :param vectors: the shard's RocksDB's column family of the vectors.
    :param db: the same RocksDB (its default column family: documents, checkpoint, ...).
    """

    def __init__(self, vectors: Rdict, db: Rdict) -> None:
        self._vectors = vectors  # first: an Rdict freed unclosed flushes its family, in this order
        self._db = db
        self._flushed_at = time.monotonic()
        """When the memtables were last flushed by hand (``time.monotonic``), or the store opened."""
        self._unflushed = False
        """A write may be only in the memtables."""

    def wrote(self) -> None:
        """Note a write; flushes it if the last flush is due (``flush_if_due``)."""
        self.noted()
        self.flush_if_due()

    def noted(self) -> None:
        """Note a write, leaving its flush to the next ``flush_if_due``: for a writer that has more to do once the
        write landed, which a failed flush would otherwise interrupt."""
        self._unflushed = True

    def flush(self) -> None:
        """Write both memtables to disk now and wait for them: what was written survives a crash from here on."""
        self._flush(wait=True)

    def flush_if_due(self, *, interval_s: float | None = None) -> bool:
        """Flush if a write may be only in memory and the last flush is ``interval_s`` old (``FLUSH_INTERVAL_S`` if
        None); only the vectors' flush is waited for. Cheap to call on every round of a loop. Returns whether no
        write is left only in memory now (a flush started counts)."""
        if self._unflushed and time.monotonic() - self._flushed_at >= (
                FLUSH_INTERVAL_S if interval_s is None else interval_s):
            self._flush(wait=False)
        return not self._unflushed

    def _flush(self, *, wait: bool) -> None:
        self._vectors.flush(wait=True)  # installed before the rest's memtable is even switched: never behind it
        self._db.flush(wait=wait)
        self._flushed_at, self._unflushed = time.monotonic(), False
