"""The flat index's half-precision scan: a float16 copy of its vectors scanned first, the candidates then
scored exactly, and the answer proven exact or the full scan run.

Why: one query's flat scan is a pass over every float32 vector, bound by memory bandwidth (384-d, 50,000
vectors, one thread, this machine: 3.8-4.3 ms); over float16 (FAISS ``IndexScalarQuantizer`` ``QT_fp16``,
the query kept in float32) it reads half the bytes (1.6-1.9 ms with the exact re-scoring below). This is
Qdrant's quantization with rescoring and FAISS's ``IndexRefineFlat``, with one thing added: a bound on the
float16 error, so that an answer is returned only when it is provably the exact one.

The bound. Rounding a component to float16 moves it by at most u = 2^-11 of itself (2^-25 absolute
below the smallest normal float16), so the score of a stored vector x against a query q moves by at most
``u * sum|q_i x_i| + 2^-25 * sum|q_i|`` for an inner product, ``<= u * |q| |x| + ...`` by Cauchy-Schwarz,
and for a squared distance by at most ``2u * (|q| |x| + |x|^2) + ...``. Both paths also round in float32
while they sum, each within ``gamma_d * sum|terms|`` with ``gamma_d = (d + 4) 2^-24`` (Higham's bound on a
sum of d products, with room for FAISS's blocked sums), that is ``gamma_d |q| |x|`` for an inner product and
``gamma_d (|q| + |x|)^2`` for a squared distance: twice that, one per path. :func:`error_bound` adds them up,
with u doubled for margin, for the largest norm the live vectors have. Every vector outside the ``width``
candidates scored at most the last candidate's float16 score, so at most that plus the bound exactly;
when that is still below the exact k-th score (a distance: above), no vector outside the candidates can
enter or tie the top k, and the candidates' exact top k is the answer. Otherwise the caller scans in
float32 (``fallbacks`` counts how often); after a run of such searches (vectors whose scores lie closer
than the bound, or a few far larger than the rest) the scan is not tried for a while.

The exact scores come from FAISS's own flat kernel over the candidates' float32 vectors, the kernel the
full scan runs, so they are the full scan's to the bit (tested), and shards that scan in half and in full
precision merge alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faiss
import numpy as np

from processors.index.base import Metric

__all__ = ["FLOAT16_LIMIT", "HALF_SCAN_MIN_VECTORS", "HalfPrecisionScan", "error_bound"]

logger = logging.getLogger(__name__)

FLOAT16_LIMIT = 60_000.0
"""A component at or past this magnitude (float16 holds up to 65,504) turns the half scan off for good:
its float16 copy would overflow, and the bound would mean nothing."""

_BACKOFF_SEARCHES = 256
"""Searches answered by the float32 scan alone after a run of fallbacks, before the half scan is tried again."""

HALF_SCAN_MIN_VECTORS = 8_192
"""Below this many vectors a float32 scan takes under a millisecond: the two-step search is not worth it."""

_U = 2.0 ** -10
"""Twice float16's unit roundoff (its rounding moves a component by at most 2^-11 of itself)."""

_SUBNORMAL = 2.0 ** -24
"""Twice the largest absolute rounding of a float16 subnormal."""


def error_bound(query: np.ndarray, max_norm: float, metric: Metric) -> float:
    """How far a float16 score can be from the float32 one, for any stored vector of norm <= ``max_norm``.

    :param query: one query, shape (dim,), float32.
    :returns: the bound in score units (similarity or squared distance).
    """
    wide = query.astype(np.float64)
    q_norm, gamma = float(np.linalg.norm(wide)), (len(query) + 4) * 2.0 ** -24
    tiny = _SUBNORMAL * float(np.abs(wide).sum())
    if metric == "inner_product":
        return (_U + 2.0 * gamma) * q_norm * max_norm + tiny
    return 2.0 * _U * (q_norm * max_norm + max_norm * max_norm) + 2.0 * gamma * (q_norm + max_norm) ** 2 + 2.0 * tiny


class HalfPrecisionScan:
    """A float16 copy of a flat index's vectors under the same ids, and the exact search through it.

    :param dim: vector dimension.
    :param metric: the flat index's metric.
    """

    def __init__(self, *, dim: int, metric: Metric) -> None:
        self.dim = dim
        self.metric = metric
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "inner_product" else faiss.METRIC_L2
        self._index: faiss.Index | None = faiss.IndexIDMap(
            faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss_metric))
        self._faiss_metric = faiss_metric
        self._max_norm = 0.0
        self.fallbacks = 0
        """Searches the bound could not prove exact, answered by the float32 scan instead."""
        self._failing = 0.0
        """A moving share of recent searches that fell back."""
        self._resting = 0
        """Searches left before the half scan is tried again."""

    @property
    def active(self) -> bool:
        """False once a vector float16 cannot hold was added: the flat index scans in float32 only."""
        return self._index is not None

    def worth_trying(self) -> bool:
        """Whether the next search should try the half scan: not while resting after a run of fallbacks,
        where each try would cost a float16 scan on top of the float32 one."""
        if self._index is None:
            return False
        if self._resting:
            self._resting -= 1
            return False
        return True

    def _outcome(self, fell_back: bool) -> None:
        self._failing = 0.9 * self._failing + (0.1 if fell_back else 0.0)
        if fell_back:
            self.fallbacks += 1
            if self._failing > 0.5:
                self._resting, self._failing = _BACKOFF_SEARCHES, 0.0

    def renorm(self, live: np.ndarray) -> None:
        """The largest norm again, over the vectors still held (after a compaction removed some):
        one vector far larger than the rest, once gone, must not keep widening the bound."""
        self._max_norm = _max_norm(live) if len(live) else 0.0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Copy these vectors (float32, shape (n, dim)) in float16, under the flat index's ids."""
        if self._index is None or not len(ids):
            return
        if not _within_float16(vectors):
            logger.warning("a vector component is not finite or past float16's range: the flat index scans in "
                           "float32 only")
            self._index = None
            return
        self._max_norm = max(self._max_norm, _max_norm(vectors))
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        """Remove these ids from the copy (the flat index's compaction: its tombstones go here too)."""
        if self._index is not None and len(ids):
            self._index.remove_ids(ids.astype(np.int64))

    def search(self, query: np.ndarray, k: int, width: int, params: faiss.SearchParameters | None,
               full: faiss.Index) -> tuple[np.ndarray, np.ndarray] | None:
        """The exact top ``k`` of one query, or None when the bound cannot prove it (scan in float32 then).

        :param query: shape (1, dim), float32.
        :param width: float16 candidates to score exactly (> k); as many as the search may return means
            every allowed vector was a candidate, which is exact without the bound.
        :param params: the search's selector (allowed ids, tombstones), applied to the float16 scan.
        :param full: the float32 flat index (``IndexIDMap2``), whose vectors the candidates are scored on.
        :returns: (scores, ids), each shape (1, k), best first; past the candidates, ids -1 (as FAISS pads).
        """
        from processors.index.faiss_flat import faiss_search

        assert self._index is not None
        half_scores, half_ids = faiss_search(self._index, query, width, params)
        found = half_ids[0][half_ids[0] != -1]
        scores, ids = self._padded(k)
        if len(found):
            exact = faiss.IndexFlat(self.dim, self._faiss_metric)
            exact.add(full.reconstruct_batch(found))
            best, rows = faiss_search(exact, query, min(k, len(found)))
            scores[0, :best.shape[1]], ids[0, :best.shape[1]] = best[0], found[rows[0]]
        if len(found) < width:
            return scores, ids  # every vector the search may return was scored exactly
        cut, boundary = float(scores[0, k - 1]), float(half_scores[0, -1])
        bound = error_bound(query[0], self._max_norm, self.metric)
        proven = boundary + bound < cut if self.metric == "inner_product" else boundary - bound > cut
        self._outcome(fell_back=not proven)
        return (scores, ids) if proven else None

    def _padded(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A row of ``k`` empty places, as FAISS pads one: id -1, the worst float32 score."""
        worst = -np.finfo(np.float32).max if self.metric == "inner_product" else np.finfo(np.float32).max
        return np.full((1, k), worst, np.float32), np.full((1, k), -1, np.int64)


_BLOCK_ROWS = 4_096
"""Rows checked at a time: a float64 copy of a whole shard (100,000 384-d vectors: 307 MB, and as much
again for its squares) peaked a float16 shard process 380 MiB above a float32 one at each compaction
(``benchmarks/peers.py``, bulk re-upsert); a block is 12.6 MB."""


def _blocks(vectors: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(vectors), _BLOCK_ROWS):
        yield vectors[start:start + _BLOCK_ROWS]


def _within_float16(vectors: np.ndarray) -> bool:
    """Whether every component is finite and below ``FLOAT16_LIMIT`` in magnitude."""
    return all(np.isfinite(block).all() and float(np.abs(block).max()) < FLOAT16_LIMIT
               for block in _blocks(vectors) if block.size)


def _max_norm(vectors: np.ndarray) -> float:
    """The largest L2 norm among these rows, in float64, a block at a time (see ``_BLOCK_ROWS``)."""
    largest = 0.0
    for block in _blocks(vectors):
        wide = block.astype(np.float64)
        largest = max(largest, float(np.einsum("ij,ij->i", wide, wide).max(initial=0.0)))
    return float(np.sqrt(largest))
