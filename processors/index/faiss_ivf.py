"""Approximate vector search on a FAISS inverted file (IVF-Flat or IVF-PQ), trained on stored vectors.

The coarse quantizer (``nlist`` k-means centroids) and, for IVF-PQ, the product quantizer are
trained once, on the vectors the shard holds when the index is built; later vectors are only
assigned to lists. Removal is exact (``remove_ids`` through a hash-table direct map).

Training needs at least one vector per centroid (FAISS refuses fewer) and FAISS recommends
39 per centroid: between the two it trains and logs a warning. An index trained on too few
vectors, or whose automatic ``nlist`` has outgrown the data, asks to be rebuilt
(``needs_rebuild``) once the shard has doubled since training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np

from processors.exceptions import ConfigError
from processors.index.base import Metric, SearchTuning
from processors.index.faiss_flat import FaissVectorIndex, faiss_metric, faiss_search

__all__ = [
    "AUTO_NLIST_CAP",
    "POINTS_PER_CENTROID",
    "ProductQuantization",
    "IvfVectorIndex",
    "auto_pq_m",
    "nlist_for",
    "training_size_needed",
]

logger = logging.getLogger(__name__)

AUTO_NLIST_CAP = 4096
"""Largest automatic ``nlist``: k-means cost grows with nlist squared."""

POINTS_PER_CENTROID = 39
"""FAISS's recommended minimum of training vectors per centroid."""


@dataclass(frozen=True, slots=True)
class ProductQuantization:
    """How IVF-PQ compresses each vector: ``m`` sub-vectors of ``bits`` bits each.

    :param m: sub-quantizers; must divide the dimension.
    :param bits: bits per sub-vector code; 8 is the usual and fastest.
    """

    m: int
    bits: int

    @property
    def centroids(self) -> int:
        return 2**self.bits


def nlist_for(vectors: int, wanted: int) -> int:
    """The number of IVF lists for ``vectors`` training vectors.

    :param wanted: the configured ``nlist``; 0 means automatic: 4*sqrt(n), but at most n/39
        so every list trains on enough vectors, between 1 and ``AUTO_NLIST_CAP``.
    """
    if wanted > 0:
        return wanted
    return max(1, min(int(4 * math.sqrt(vectors)), vectors // POINTS_PER_CENTROID, AUTO_NLIST_CAP))


def auto_pq_m(dim: int) -> int:
    """The largest number of sub-quantizers that divides ``dim`` with 8+ dimensions each (48 for 384)."""
    return max((m for m in range(1, dim // 8 + 1) if dim % m == 0), default=1)


def training_size_needed(*, nlist: int, pq: ProductQuantization | None) -> int:
    """The fewest vectors an IVF index trains on: one per centroid, coarse and PQ (FAISS's hard limit).

    :param nlist: the configured ``nlist``; 0 (automatic) adapts to any count.
    """
    return max(1, nlist, pq.centroids if pq else 0)


class IvfVectorIndex(FaissVectorIndex):
    """An inverted file over full vectors (IVF-Flat) or PQ codes (IVF-PQ); CPU only.

    :param nlist: the configured list count; 0 picks one from the training size (``nlist_for``).
    :param nprobe: lists scanned per query unless a call overrides it.
    :param pq: product quantization for IVF-PQ; None keeps full vectors (IVF-Flat).
    :param training: the vectors to train on, normally every vector the shard holds.
    :raises ConfigError: if there are fewer training vectors than ``training_size_needed``.
    """

    def __init__(
        self,
        *,
        dim: int,
        metric: Metric,
        nlist: int,
        nprobe: int,
        pq: ProductQuantization | None,
        training: np.ndarray,
    ) -> None:
        trained_on = len(training)
        needed = training_size_needed(nlist=nlist, pq=pq)
        kind = "IVF-PQ" if pq else "IVF"
        if trained_on < needed:
            raise ConfigError(f"{kind} index: training needs at least {needed} vectors, the shard holds {trained_on}")
        lists = nlist_for(trained_on, nlist)
        recommended = POINTS_PER_CENTROID * max(lists, pq.centroids if pq else 0)
        if trained_on < recommended:
            logger.warning(
                "%s trains on %d vectors; FAISS recommends at least %d (rebuilt when the shard doubles)",
                kind, trained_on, recommended,
            )
        quantizer = faiss.IndexFlat(dim, faiss_metric(metric))
        if pq:
            index = faiss.IndexIVFPQ(quantizer, dim, lists, pq.m, pq.bits, faiss_metric(metric))
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss_metric(metric))
        index.train(np.ascontiguousarray(training, dtype=np.float32))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids without scanning every list
        index.nprobe = min(nprobe, lists)
        super().__init__(dim=dim, metric=metric, kind="ivf_pq" if pq else "ivf_flat", index=index)
        self.nlist = lists
        self.nprobe = nprobe
        self.trained_on = trained_on
        self._wanted_nlist = nlist
        self._recommended = recommended
        self._quantizer = quantizer  # the IVF index only points at it

    @property
    def needs_rebuild(self) -> bool:
        """True once the shard doubled since training and training was short or ``nlist`` would double."""
        if self.size < 2 * self.trained_on:
            return False
        short = self.trained_on < self._recommended
        return short or nlist_for(self.size, self._wanted_nlist) >= 2 * self.nlist

    def search(
        self, queries: np.ndarray, k: int, tuning: SearchTuning | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of shape (queries, k), best first; ids -1 pad rows short of k.

        :param tuning: ``nprobe`` overrides the configured lists per query (capped at ``nlist``).
        """
        nprobe = (tuning.nprobe if tuning else None) or self.nprobe
        allowed = tuning.selector() if tuning else None
        if allowed is not None:
            # The lists scanned hold the allowed vectors only in the share the filter allows: scan more of them,
            # by the square root of the share left out, as HNSW widens its candidate list.
            share = len(tuning.allowed) / max(1, self.size)  # type: ignore[union-attr, arg-type]
            nprobe = math.ceil(nprobe / math.sqrt(max(share, 1e-9)))
        params = faiss.SearchParametersIVF(nprobe=min(nprobe, self.nlist))
        if allowed is not None:
            params.sel = allowed
        return faiss_search(self._index, queries, k, params)
