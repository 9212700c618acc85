"""Exact vector search with FAISS, ids mapped to our own int64 vector ids."""

from __future__ import annotations

import logging
from typing import Literal

import faiss
import numpy as np

from processors.document import Direction
from processors.exceptions import ConfigError

__all__ = ["Metric", "FlatVectorIndex"]

logger = logging.getLogger(__name__)

Metric = Literal["inner_product", "l2"]


class FlatVectorIndex:
    """A flat (exact) FAISS index with id mapping; on a GPU when faiss-gpu sees one.

    It is derived state: the shard index rebuilds it from RocksDB, so it is never saved here.
    """

    def __init__(self, *, dim: int, metric: Metric) -> None:
        if metric not in ("inner_product", "l2"):
            raise ConfigError(f"vector index: metric {metric!r}; use inner_product or l2")
        self.dim = dim
        self.metric = metric
        flat = faiss.IndexFlatIP(dim) if metric == "inner_product" else faiss.IndexFlatL2(dim)
        self._index = faiss.IndexIDMap2(_maybe_on_gpu(flat))

    @property
    def op_name(self) -> str:
        return f"faiss.flat_{'ip' if self.metric == 'inner_product' else 'l2'}"

    @property
    def direction(self) -> Direction:
        return Direction.SIMILARITY if self.metric == "inner_product" else Direction.DISTANCE

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if not len(ids):
            return 0
        return int(self._index.remove_ids(ids.astype(np.int64)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids) of shape (queries, k'); k' = min(k, size), ids -1 pad nothing."""
        k = min(k, self.size)
        if k == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        return self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _maybe_on_gpu(index: faiss.Index) -> faiss.Index:
    """Move the index to GPU 0 when this faiss build has GPU support and sees a device."""
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        logger.info("faiss: using GPU 0")
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index
