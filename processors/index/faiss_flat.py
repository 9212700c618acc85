"""Exact vector search with FAISS, ids mapped to our own int64 vector ids.

It also holds what every FAISS index here shares (``FaissVectorIndex``): the metric, the
op name, and adding and removing by our ids where FAISS keeps them itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from processors.document import Direction
from processors.exceptions import ConfigError
from processors.index.base import FlatScan, Metric, SearchTuning
from processors.index.half_scan import HalfPrecisionScan, VectorSource
from processors.index.huge_pages import CodesWatch

__all__ = ["AUTO_FLOAT16_BYTES", "COMPACT_FRACTION", "FaissVectorIndex", "FlatVectorIndex", "faiss_metric", "faiss_search", "one_thread",
           "write_threads"]

logger = logging.getLogger(__name__)


def faiss_metric(metric: Metric) -> int:
    """The FAISS metric constant for ours; the one check every FAISS index makes.

    :raises ConfigError: for any other metric.
    """
    if metric not in ("inner_product", "l2"):
        raise ConfigError(f"vector index: metric {metric!r}; use inner_product or l2")
    return faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2


def faiss_search(index: faiss.Index, queries: np.ndarray, k: int,
                 params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``index.search``, one OpenMP thread for a single query.

    FAISS splits a batch of queries over its threads, which pays; a single query split over 2
    threads took longer than on one (flat, 384-d, 100,000 vectors, 2 cores: 15.1 ms on 2 threads,
    8.4 ms on 1; 4 queries: 15.6 ms on 2, 32.9 ms on 1), and with shards sharing a host each one's
    threads contend with the others'. Searches are what a query path runs one at a time.

    :returns: (scores, ids), each (len(queries), k).
    """
    with _omp_threads(1 if len(queries) == 1 else None):
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)


def one_thread() -> contextlib.AbstractContextManager[None]:
    """FAISS on one OpenMP thread in this calling thread, for a single query's work (see :func:`faiss_search`)."""
    return _omp_threads(1)


PARALLEL_WRITE_ROWS = 16_384
"""Vectors an add or removal must hold to run on FAISS's OpenMP threads; fewer run on the calling thread alone.
A live write is a stage batch (32-256 vectors), and after each parallel region (a float16 index encodes its
adds in one) libgomp's idle threads spin for a while (``GOMP_SPINCOUNT``) on the core the broker and the other
stages need: the index stage's handler took 59.9 us of CPU a record with two threads and 45.0 with one, in the
same 37-40 us of wall time (200,000 pre-embedded records in batches of 256). A replay's single build keeps them."""


def write_threads(rows: int) -> contextlib.AbstractContextManager[None]:
    """FAISS's OpenMP threads for a write of ``rows`` vectors in this calling thread: one below
    ``PARALLEL_WRITE_ROWS``, else as configured."""
    return _omp_threads(1 if rows < PARALLEL_WRITE_ROWS else None)


@contextmanager
def _omp_threads(count: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads for this calling thread (an OpenMP setting is per thread); None leaves them."""
    before = faiss.omp_get_max_threads()
    if count is None or count == before:
        yield
        return
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class FaissVectorIndex:
    """A FAISS index that keeps our int64 ids itself; subclasses choose the structure, and the search
    when it has an effort knob.

    It is derived state: the shard index rebuilds it from RocksDB, so it is never saved here.

    :param kind: the structure's name in ``op_name`` (``faiss.<kind>_<ip|l2>``).
    :param index: the FAISS index, already supporting ``add_with_ids`` and ``remove_ids``.
    """

    def __init__(self, *, dim: int, metric: Metric, kind: str, index: faiss.Index) -> None:
        self.dim = dim
        self.metric = metric
        self.kind = kind
        self._index = index

    @property
    def op_name(self) -> str:
        return f"faiss.{self.kind}_{'ip' if self.metric == 'inner_product' else 'l2'}"

    @property
    def direction(self) -> Direction:
        return Direction.SIMILARITY if self.metric == "inner_product" else Direction.DISTANCE

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    @property
    def needs_rebuild(self) -> bool:
        """False unless a subclass knows better: removal is exact here."""
        return False

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add on one OpenMP thread below ``PARALLEL_WRITE_ROWS`` vectors (:func:`write_threads`)."""
        if len(ids):
            with write_threads(len(ids)):
                self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        with write_threads(len(ids)):
            return int(self._index.remove_ids(ids.astype(np.int64)))

    def search(
        self, queries: np.ndarray, k: int, tuning: SearchTuning | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids) of shape (queries, k'); k' = min(k, size), ids -1 pad nothing.

        :param tuning: only ``allowed`` applies here; a subclass with an effort knob reads it too.
        """
        k, params, _held = self._plan(k, tuning)
        if k == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        return faiss_search(self._index, queries, k, params)

    def _plan(self, k: int, tuning: SearchTuning | None) -> tuple[int, faiss.SearchParameters | None, tuple[object, ...]]:
        """``k`` cut to what the search may return, and the FAISS parameters selecting the request's allowed ids
        but the tombstones; with the selectors themselves, which FAISS only points at: hold them while it searches."""
        allowed = tuning.selector() if tuning else None
        k = min(k, self.size if allowed is None else len(tuning.allowed))  # type: ignore[union-attr, arg-type]
        selector = self._selector(allowed)
        return k, faiss.SearchParameters(sel=selector) if selector is not None else None, (allowed, selector)

    def _not_removed(self) -> faiss.IDSelector | None:
        """A selector of every id but those removed and still held (tombstones); None when there are none."""
        return None

    def _selector(self, allowed: faiss.IDSelector | None) -> faiss.IDSelector | None:
        """The ids a search may return: ``allowed`` (all if None) but the tombstones (``_not_removed``)."""
        not_removed = self._not_removed()
        if not_removed is None or allowed is None:
            return allowed if not_removed is None else not_removed
        return faiss.IDSelectorAnd(allowed, not_removed)


AUTO_FLOAT16_BYTES = 24 << 20
"""``flat_scan: auto`` turns a flat index to float16 once its vectors would take 24 MiB in float32 (16,384 384-d
vectors): a scan reads half the bytes, and each search pays a RocksDB read per candidate (2k + 16) and a bound.
The turn sits where the two cost the same: the index stage's answer to one query's top 10 of one 384-d shard
(``benchmarks/shard_search.py --shards 1``, 500 queries, p50, 2026-12-07): 10,000 vectors 1.05 ms in float32
against 1.24-1.29 in float16; 12,000 1.26-1.45 against 1.42-1.55; 16,000 1.72-1.80 against 1.76-1.85; 20,000
2.19 against 1.78; 40,000 4.22 against 3.28. At 100,000 (2026-12-05/06) k = 100 took 10.8 against 10.6 ms, and
k = 1,000 11.2 against 23.0. Until 2026-12-07 it was 64 MiB (43,690 vectors): a process of several shards then
held each in float32 up to that size: with ``fix_mmap_threshold`` (``streams/runtime/heap.py``), 2 shards of 50,000
peaked 173 MiB above the process's start in-process against 206 at 64 MiB (the README's "A process of several
shards")."""
_COPY_ROWS = 16_384
"""Rows copied at a time when an index turns to float16 (``auto``) or back to float32: the copy in flight stays
small."""

COMPACT_FRACTION = 0.05
"""Share of a flat index that may be tombstones before they leave it in one ``remove_ids``. That call
rewrites the whole index and its id map however few ids go (384-d: 10 ms at 50,000 vectors, 19 ms at
100,000), so removing at every write made each batch of upserts cost a pass over the shard (a batch of
256 upserts into 300,000 vectors: 79 ms, now 13 ms). A search meanwhile skips the tombstones with a bitmap
selector (one query, 100,000 vectors, one thread, best of 5: 8.6 ms without, 8.9 ms with 5,000 tombstones)."""


class FlatVectorIndex(FaissVectorIndex):
    """A flat (exact) FAISS index with id mapping; on a GPU when faiss-gpu sees one.

    Removed ids are tombstones until they are ``COMPACT_FRACTION`` of the index, then removed together;
    searches never return a tombstone. On a GPU (no selectors there) every removal is done at once.

    :param scan: ``float32`` holds and scans the vectors as stored; ``float16`` holds them in half precision
        (half the memory) and scores each search's candidates exactly on their float32 vectors from
        ``source``, so answers are the float32 scan's (``processors/index/half_scan.py``). Not on a GPU.
        ``auto``: float32 until the vectors held would take ``AUTO_FLOAT16_BYTES`` in float32, then float16
        (float32 throughout without a ``source``, on a GPU, or once a vector float16 cannot hold was held or
        came, before or after the turn).
    :param source: the stored float32 vectors by id (the shard's store): needed by ``float16``.
    :raises ConfigError: for ``float16`` without a source.
    """

    def __init__(self, *, dim: int, metric: Metric, scan: FlatScan = "float32",
                 source: VectorSource | None = None) -> None:
        on_gpu = _gpu_present()
        half = scan == "float16" and not on_gpu
        if half and source is None:
            raise ConfigError("flat_scan float16 scores candidates on the stored float32 vectors: give a source")
        if scan == "float16" and not half:
            logger.info("flat_scan float16 is not used on a GPU: the flat index holds float32 vectors there")
        self._half = HalfPrecisionScan(dim=dim, metric=metric) if half else None
        self._auto = scan == "auto" and not on_gpu and source is not None
        """Still float32, to turn to float16 when it grows past ``AUTO_FLOAT16_BYTES``."""
        self._source = source
        super().__init__(dim=dim, metric=metric, kind="flat",
                         index=self._half.new_index() if self._half is not None else _float32_index(dim, metric))
        self._compact_fraction = 0.0 if on_gpu else COMPACT_FRACTION
        self._present = _Bits()
        """Vector ids the FAISS index holds, tombstones included."""
        self._dead = _Bits()
        """Tombstones: removed, still in the FAISS index. Ids are never reused, so both sets are bits by id."""
        self._pending: list[np.ndarray] = []
        """The tombstones' ids, for the pass that removes them."""
        self._dead_count = 0
        self._skip_dead: tuple[faiss.IDSelector, faiss.IDSelector] | None = None
        self._codes = CodesWatch()
        """Asks for the vectors in huge pages as they grow, where the process collapses them (``huge_pages.py``)."""

    @property
    def size(self) -> int:
        """Live vectors: tombstones excluded."""
        return int(self._index.ntotal) - self._dead_count

    @property
    def tombstones(self) -> int:
        """Removed vectors the FAISS index still holds (searches skip them)."""
        return self._dead_count

    @property
    def scan(self) -> FlatScan:
        """What the index holds and scans now: ``float16`` turns to ``float32`` for good on a vector float16
        cannot hold."""
        return "float16" if self._half is not None else "float32"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """:raises ValueError: if an id was added before (vector ids are never reused)."""
        if not len(ids):
            return
        ids = ids.astype(np.int64)
        if self._present.any(ids) or self._dead.any(ids):
            raise ValueError("flat index: vector ids are never reused, but an id was added again")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._auto and (int(self._index.ntotal) + len(ids)) * self.dim * 4 >= AUTO_FLOAT16_BYTES:
            self._to_float16(vectors)  # before the batch (a bulk load is never held twice); it checks the batch
        elif self._half is not None and not self._half.holds(vectors):
            self._to_float32()
        super().add(ids, vectors)
        self._codes.follow(self._index)
        self._present.set(ids)
        if self._half is not None:
            self._half.added(vectors)

    def _to_float16(self, coming: np.ndarray) -> None:
        """``auto``: hold float16 vectors from now on, the float32 ones held so far copied over a block of rows
        at a time (tombstones dropped first). Stays float32 for good if float16 cannot hold a vector of the batch
        ``coming`` or one held now (one removed before, even a tombstone not yet compacted, is not held)."""
        self._auto = False
        half = HalfPrecisionScan(dim=self.dim, metric=self.metric)
        index = self._float16_copy(half) if half.holds(coming) else None  # the batch first: no copy in vain
        if index is None:
            logger.info("flat_scan auto: a vector float16 cannot hold, the flat index stays float32")
            return
        self._index, self._half = index, half
        logger.info("flat_scan auto: the flat index holds float16 vectors from now on",
                    extra={"vectors": int(index.ntotal), "dim": self.dim})

    def _float16_copy(self, half: HalfPrecisionScan) -> faiss.Index | None:
        """The vectors held, tombstones dropped, in a new float16 index, a block of rows at a time; None if
        float16 cannot hold one of them."""
        if self._dead_count:
            self._compact()
        index = half.new_index()
        held = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        for start in range(0, len(held), _COPY_ROWS):
            vectors = self._index.index.reconstruct_n(start, min(_COPY_ROWS, len(held) - start))
            if not half.holds(vectors):
                return None
            index.add_with_ids(vectors, held[start:start + len(vectors)])
            half.added(vectors)
        return index

    def _to_float32(self) -> None:
        """Hold float32 vectors from now on, read back from the source: a vector float16 cannot hold came
        (a component not finite or past ``FLOAT16_LIMIT``), and its float16 copy would overflow the bound."""
        logger.warning("a vector component is not finite or past float16's range: the flat index holds float32 "
                       "vectors from now on (flat_scan float16 off for this shard until it reopens)")
        if self._dead_count:
            self._compact()
        assert self._source is not None
        held = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        self._index = _float32_index(self.dim, self.metric)
        self._half = None
        for start in range(0, len(held), _COPY_ROWS):  # a block at a time: no second copy of the shard in flight
            block = held[start:start + _COPY_ROWS]
            self._index.add_with_ids(np.ascontiguousarray(self._source(block), dtype=np.float32), block)

    def remove(self, ids: np.ndarray) -> int:
        """Tombstone the live ids among ``ids`` (compacting past ``COMPACT_FRACTION``); returns how many were."""
        if not len(ids):  # every write of new documents only: 12 us of numpy on nothing
            return 0
        ids = np.unique(ids.astype(np.int64))
        live = ids[self._present.test(ids) & ~self._dead.test(ids)]
        if not len(live):
            return 0
        if self._dead.set(live):  # its bits moved: the selector pointed at the old ones
            self._skip_dead = None
        self._pending.append(live)
        self._dead_count += len(live)
        if self._dead_count > self._compact_fraction * int(self._index.ntotal):
            self._compact()
        return len(live)

    def _compact(self) -> None:
        """Remove every tombstone from FAISS in one pass; the ids stay known, so they are never taken again."""
        gone = np.concatenate(self._pending)
        rows = ~self._dead.test(faiss.vector_to_array(self._index.id_map)) if self._half is not None else None
        self._index.remove_ids(gone)
        if self._half is not None:
            self._half.kept(rows)
        self._present.clear(gone)
        self._pending.clear()
        self._dead_count = 0

    @property
    def half_scan_fallbacks(self) -> int:
        """Searches in float16 whose first candidates the bound could not prove (0 in float32)."""
        return self._half.fallbacks if self._half is not None else 0

    def search(
        self, queries: np.ndarray, k: int, tuning: SearchTuning | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`FaissVectorIndex.search`; in float16 each query's answer is the float32 scan's, proven."""
        half = self._half
        if half is None:
            return super().search(queries, k, tuning)
        k, params, _held = self._plan(k, tuning)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if k == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        assert self._source is not None
        answers = [half.search(self._index, queries[row:row + 1], k, params, self._source)
                   for row in range(len(queries))]
        return np.vstack([scores for scores, _ in answers]), np.vstack([ids for _, ids in answers])

    def _not_removed(self) -> faiss.IDSelector | None:
        """Every id but the tombstones: a bitmap, one bit test per vector scanned. FAISS points at the bits,
        which stay where they are until they grow: a shard's searches and writes run in one thread (the
        stage loop's), never side by side, or a write that grew them could free them under a search."""
        if not self._dead_count:
            return None
        if self._skip_dead is None:
            dead = faiss.IDSelectorBitmap(len(self._dead.bits), faiss.swig_ptr(self._dead.bits))
            self._skip_dead = (dead, faiss.IDSelectorNot(dead))
        return self._skip_dead[1]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these ids, exactly (as added), one row each: from memory in float32 (cheaper
        than reading RocksDB), from the source in float16. Every id must be present."""
        if not len(ids):
            return np.empty((0, self.dim), np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self._half is not None:
            assert self._source is not None
            return self._source(ids)
        return self._index.reconstruct_batch(ids)


class _Bits:
    """A set of non-negative int64 ids as bits (little-endian within a byte, as ``IDSelectorBitmap`` reads
    them): an eighth of a byte per id up to the largest."""

    def __init__(self) -> None:
        self.bits = np.zeros(0, dtype=np.uint8)
        self._high = 0
        """One past the largest id ever set: ids from there on are members of none (a shard's new vector ids
        grow, so an add asks only this of most batches)."""

    def test(self, ids: np.ndarray) -> np.ndarray:
        """Membership of each id (negative or beyond the bits: not a member)."""
        inside = (ids >= 0) & (ids < 8 * len(self.bits))
        found = np.zeros(len(ids), dtype=np.bool_)
        at = ids[inside]
        found[inside] = (self.bits[at >> 3] >> (at & 7).astype(np.uint8)) & 1 == 1
        return found

    def any(self, ids: np.ndarray) -> bool:
        if not len(ids) or int(ids.min()) >= self._high:
            return False
        return bool(self.test(ids).any())

    def set(self, ids: np.ndarray) -> bool:
        """Add non-negative ids; True if the bits were reallocated to hold them."""
        grown = False
        highest = int(ids.max())
        self._high = max(self._high, highest + 1)
        needed = (highest >> 3) + 1
        if needed > len(self.bits):
            self.bits = np.concatenate([self.bits, np.zeros(max(needed, 2 * len(self.bits), 1024) - len(self.bits),
                                                            np.uint8)])
            grown = True
        np.bitwise_or.at(self.bits, ids >> 3, (1 << (ids & 7)).astype(np.uint8))
        return grown

    def clear(self, ids: np.ndarray) -> None:
        np.bitwise_and.at(self.bits, ids >> 3, ~(1 << (ids & 7)).astype(np.uint8))


def _float32_index(dim: int, metric: Metric) -> faiss.IndexIDMap2:
    """An empty exact index of float32 vectors with id mapping, on a GPU when there is one."""
    return faiss.IndexIDMap2(_maybe_on_gpu(faiss.IndexFlat(dim, faiss_metric(metric))))


def _gpu_present() -> bool:
    """This faiss build has GPU support and sees a device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _maybe_on_gpu(index: faiss.Index) -> faiss.Index:
    """Move the index to GPU 0 when there is one (``_gpu_present``)."""
    if _gpu_present():
        logger.info("faiss: using GPU 0")
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index
