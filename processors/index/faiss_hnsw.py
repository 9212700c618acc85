"""Approximate vector search on a FAISS HNSW graph, ids mapped to our own int64 vector ids.

FAISS cannot take a node out of an HNSW graph, so a removed id stays in the graph as a
tombstone: it still routes searches but a selector keeps it out of every result, so top-k
stays full without over-fetching. Past ``REBUILD_FRACTION`` tombstones the index asks to be
rebuilt from the stored vectors (``needs_rebuild``).
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from processors.index.base import Metric, SearchTuning
from processors.index.faiss_flat import FaissVectorIndex, faiss_metric, faiss_search

__all__ = ["REBUILD_FRACTION", "HnswVectorIndex"]

logger = logging.getLogger(__name__)

REBUILD_FRACTION = 0.2
"""Share of the graph that may be tombstones before it should be rebuilt."""


class HnswVectorIndex(FaissVectorIndex):
    """An HNSW graph over full vectors (IndexHNSWFlat); CPU only.

    :param m: neighbours per node; more is more exact, larger and slower to build.
    :param ef_construction: candidate list size while inserting; more builds a better graph.
    :param ef_search: candidate list size per query unless a call overrides it.
    """

    def __init__(self, *, dim: int, metric: Metric, m: int, ef_construction: int, ef_search: int) -> None:
        graph = faiss.IndexHNSWFlat(dim, m, faiss_metric(metric))
        graph.hnsw.efConstruction = ef_construction
        graph.hnsw.efSearch = ef_search
        super().__init__(dim=dim, metric=metric, kind="hnsw", index=faiss.IndexIDMap2(graph))
        self.ef_search = ef_search
        self._live: set[int] = set()
        self._removed: set[int] = set()
        self._skip_removed: tuple[faiss.IDSelector, faiss.IDSelector] | None = None

    @property
    def size(self) -> int:
        """Live vectors: tombstones excluded."""
        return len(self._live)

    @property
    def needs_rebuild(self) -> bool:
        """True once tombstones exceed ``REBUILD_FRACTION`` of the graph."""
        return len(self._removed) > REBUILD_FRACTION * int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert vectors into the graph.

        :raises ValueError: if an id was removed before: a tombstone would hide it.
        """
        if not len(ids):
            return
        fresh = ids.astype(np.int64).tolist()
        if not self._removed.isdisjoint(fresh):
            raise ValueError("HNSW index: vector ids are never reused, but a removed id was added again")
        super().add(ids, vectors)
        self._live.update(fresh)

    def remove(self, ids: np.ndarray) -> int:
        """Tombstone the ids that are live; returns how many were."""
        present = self._live.intersection(ids.astype(np.int64).tolist())
        if present:
            self._live -= present
            self._removed |= present
            self._skip_removed = None
        return len(present)

    def search(
        self, queries: np.ndarray, k: int, tuning: SearchTuning | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of shape (queries, k), best first; ids -1 pad rows short of k.

        :param tuning: ``ef_search`` overrides the configured candidate list size.
        """
        ef = (tuning.ef_search if tuning else None) or self.ef_search
        params = faiss.SearchParametersHNSW()
        allowed = tuning.selector() if tuning else None
        live = self.size if allowed is None else len(tuning.allowed)  # type: ignore[union-attr, arg-type]
        if self._removed or allowed is not None:
            # The walk steps over the vectors left out, and with fewer wanted ones left it misses more of
            # them: widen the candidate list by the square root of the share left out. On 100,000 vectors
            # with a filter allowing 5 %, recall@10 was 0.998 at ef 128, 1.0 at ef × √20 (1.2 ms), and
            # 1.0 at ef × 20 (7.6 ms): the square root buys the recall for a sixth of the time.
            ef = math.ceil(ef * math.sqrt(int(self._index.ntotal) / max(1, live)))
            selector = self._selector(allowed)  # referenced while FAISS searches
            params.sel = selector
        params.efSearch = max(ef, k)
        return faiss_search(self._index, queries, k, params)

    def _not_removed(self) -> faiss.IDSelector | None:
        """Every id but the tombstones; None when there are none."""
        if not self._removed:
            return None
        if self._skip_removed is None:
            removed = faiss.IDSelectorBatch(np.fromiter(self._removed, dtype=np.int64, count=len(self._removed)))
            # Keep the inner selector referenced: the outer one only points at it.
            self._skip_removed = (removed, faiss.IDSelectorNot(removed))
        return self._skip_removed[1]
