"""Exact vector search with FAISS, ids mapped to our own int64 vector ids.

It also holds what every FAISS index here shares (``FaissVectorIndex``): the metric, the
op name, and adding and removing by our ids where FAISS keeps them itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from processors.document import Direction
from processors.exceptions import ConfigError
from processors.index.base import Metric, SearchTuning

__all__ = ["FaissVectorIndex", "FlatVectorIndex", "faiss_metric", "faiss_search"]

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
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        return int(self._index.remove_ids(ids.astype(np.int64)))

    def search(
        self, queries: np.ndarray, k: int, tuning: SearchTuning | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids) of shape (queries, k'); k' = min(k, size), ids -1 pad nothing.

        :param tuning: only ``allowed`` applies here; a subclass with an effort knob reads it too.
        """
        selector = tuning.selector() if tuning else None
        k = min(k, self.size if selector is None else len(tuning.allowed))  # type: ignore[union-attr, arg-type]
        if k == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        return faiss_search(self._index, queries, k, params)


class FlatVectorIndex(FaissVectorIndex):
    """A flat (exact) FAISS index with id mapping; on a GPU when faiss-gpu sees one."""

    def __init__(self, *, dim: int, metric: Metric) -> None:
        flat = faiss.IndexFlat(dim, faiss_metric(metric))
        super().__init__(dim=dim, metric=metric, kind="flat", index=faiss.IndexIDMap2(_maybe_on_gpu(flat)))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these ids, exactly (a flat index keeps them as added), one row each: an
        in-memory copy, cheaper than reading RocksDB. Every id must be present."""
        if not len(ids):
            return np.empty((0, self.dim), np.float32)
        return self._index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))


def _maybe_on_gpu(index: faiss.Index) -> faiss.Index:
    """Move the index to GPU 0 when this faiss build has GPU support and sees a device."""
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        logger.info("faiss: using GPU 0")
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index
