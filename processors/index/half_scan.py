"""The flat index in half precision: float16 vectors in memory, scanned for candidates, which are then scored
exactly on their float32 vectors read from the shard's store; the answer is the float32 scan's, proven so.

Why: one query's flat scan is a pass over every stored vector, bound by memory bandwidth, and a float32 copy
of every vector is most of a shard's memory (100,000 384-d vectors: 154 MB). In float16 (FAISS
``IndexScalarQuantizer`` ``QT_fp16``, the query kept in float32) the scan reads half the bytes and the shard
holds half the memory; the float32 vectors, which RocksDB holds anyway (``store.py``, ``v/<vector id>``),
are read for the few candidates only. This is Qdrant's quantization with rescoring (``always_ram``
quantized vectors, originals on disk) and FAISS's ``IndexRefine``, with one thing added: a bound on the
float16 error, so that every answer is provably the float32 scan's.

The bound. Rounding a component to float16 moves it by at most u = 2^-11 of itself (2^-25 absolute
below the smallest normal float16), so the score of a stored vector x against a query q moves by at most
``u * sum|q_i x_i| + 2^-25 * sum|q_i|`` for an inner product, ``<= u * |q| |x| + ...`` by Cauchy-Schwarz,
and for a squared distance by at most ``2u * (|q| |x| + |x|^2) + ...``. Both paths also round in float32
while they sum, each within ``gamma_d * sum|terms|`` with ``gamma_d = (d + 4) 2^-24`` (Higham's bound on a
sum of d products, with room for FAISS's blocked sums), that is ``gamma_d |q| |x|`` for an inner product and
``gamma_d (|q| + |x|)^2`` for a squared distance: twice that, one per path. :func:`error_bound` adds them up,
with u doubled for margin, for the largest norm the live vectors have.

The search. The float16 scan's best ``2k + 16`` are scored exactly (FAISS's own flat kernel over their
float32 vectors, the kernel a float32 scan runs, so the scores are a float32 shard's to the bit). Every
vector outside them scored at most the last candidate's float16 score, so at most that plus the bound
exactly; when that is still below the exact k-th score (a distance: above), no vector outside can enter or
tie the top k: the answer is proven. Otherwise (``fallbacks`` counts how often: vectors whose scores lie
closer than the bound, near-duplicates) a range search in float16 collects every vector within twice the
bound of the exact k-th score, which holds every vector that can be in the top k, and those are scored
exactly: slower (a second scan, more reads), never wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import faiss
import numpy as np

from processors.index.base import Metric

__all__ = ["FLOAT16_LIMIT", "HalfPrecisionScan", "VectorSource", "candidates_for", "error_bound"]

logger = logging.getLogger(__name__)

VectorSource = Callable[[np.ndarray], np.ndarray]
"""The stored float32 vectors of these ids (int64, shape (n,)), one row each, shape (n, dim): the shard's
store (``ShardStore.vectors_of``). Every id asked for is held."""

FLOAT16_LIMIT = 60_000.0
"""A component at or past this magnitude (float16 holds up to 65,504) cannot be held in float16: the flat
index then holds float32 vectors for good (``FlatVectorIndex``)."""

_U = 2.0 ** -10
"""Twice float16's unit roundoff (its rounding moves a component by at most 2^-11 of itself)."""

_SUBNORMAL = 2.0 ** -24
"""Twice the largest absolute rounding of a float16 subnormal."""

_FLOAT32_SUBNORMAL_STEP = 2.0 ** -149
"""float32's smallest step: a product or sum below its normals is rounded by up to half of it, absolutely,
whatever its size; each of a path's ~4d operations may (a helper's attack: products of ~1e-44 ranked wrong)."""

_BLOCK_ROWS = 4_096
"""Rows checked at a time: a float64 copy of a whole shard (100,000 384-d vectors: 307 MB, and as much
again for its squares) once peaked a float16 shard process 380 MiB above a float32 one at each compaction
(``benchmarks/peers.py``, bulk re-upsert); a block is 12.6 MB."""


def candidates_for(k: int) -> int:
    """How many float16 candidates a search for ``k`` scores exactly first: each is a read from RocksDB
    (~2.5 us), so fewer than the ``4k + 16`` a copy in memory could afford. Random 384-d unit vectors need
    far fewer for the proof (about 0.5 vectors score within the bound of the 10th best of 100,000, 110 of
    the 1,000th); vectors closer than that fall back to the range search whatever the width."""
    return 2 * k + 16


def error_bound(query: np.ndarray, max_norm: float, metric: Metric) -> float:
    """How far a float16 score can be from the float32 one, for any stored vector of norm <= ``max_norm``.

    :param query: one query, shape (dim,), float32.
    :returns: the bound in score units (similarity or squared distance).
    """
    wide = query.astype(np.float64)
    dim = len(query)
    q_norm, gamma = float(np.linalg.norm(wide)), (dim + 4) * 2.0 ** -24
    tiny = _SUBNORMAL * float(np.abs(wide).sum())
    underflow = 2.0 * 4.0 * dim * _FLOAT32_SUBNORMAL_STEP
    if metric == "inner_product":
        return (_U + 2.0 * gamma) * q_norm * max_norm + tiny + underflow
    # A stored component rounded by up to 2^-25 absolute (below float16's normals) moves (x_i - q_i)^2 by
    # up to 2^-24 |x_i - q_i| + 2^-50: the |q| part is ``tiny``, the |x| part at most 2^-24 sqrt(d) |x|.
    stored_tiny = _SUBNORMAL * (dim ** 0.5 * max_norm + dim * _SUBNORMAL)
    return (2.0 * _U * (q_norm * max_norm + max_norm * max_norm) + 2.0 * gamma * (q_norm + max_norm) ** 2
            + 2.0 * (tiny + stored_tiny) + underflow)


class HalfPrecisionScan:
    """The float16 index of a flat index, and the exact search through it.

    :param dim: vector dimension.
    :param metric: the flat index's metric.
    """

    def __init__(self, *, dim: int, metric: Metric) -> None:
        self.dim = dim
        self.metric = metric
        from processors.index.faiss_flat import faiss_metric  # the module that imports this one

        self._faiss_metric = faiss_metric(metric)
        self._max_norm = 0.0
        self._norms = _RowNorms()
        self.fallbacks = 0
        """Searches the bound could not prove from the first candidates, answered by the range search."""

    def new_index(self) -> faiss.Index:
        """An empty float16 index under our ids (``IndexIDMap``: the vectors are never read back from it)."""
        return faiss.IndexIDMap(faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16,
                                                           self._faiss_metric))

    @staticmethod
    def holds(vectors: np.ndarray) -> bool:
        """Whether float16 holds these vectors within the bound: every component finite and below
        ``FLOAT16_LIMIT`` in magnitude."""
        return all(np.isfinite(block).all() and float(np.abs(block).max()) < FLOAT16_LIMIT
                   for block in _blocks(vectors) if block.size)

    def added(self, vectors: np.ndarray) -> None:
        """Note vectors (float32, shape (n, dim)) added to the float16 index, in the order of its rows: the
        bound follows their norms, each kept until its row leaves (:meth:`kept`)."""
        norms = _row_norms(vectors)
        self._max_norm = max(self._max_norm, float(norms.max(initial=0.0)))
        self._norms.extend(norms)

    def kept(self, rows: np.ndarray) -> None:
        """A compaction kept these rows (bool, one per row held before it, in order: FAISS's ``remove_ids``
        keeps the order of what stays) and dropped the rest: the largest norm again, over the vectors still
        held, so that one far larger than the rest, once gone, no longer widens the bound. From the norms noted
        as each was added (float64, of the float32 vector): reading the shard's float16 codes back for them took
        154 ms at each compaction of 300,000 384-d vectors, a fifth of an index stage re-upserting them."""
        self._norms.keep(rows)
        self._max_norm = self._norms.max()

    def search(self, index: faiss.Index, query: np.ndarray, k: int, params: faiss.SearchParameters | None,
               source: VectorSource) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``k`` of one query: the float32 scan's scores and ids.

        :param index: the float16 index (:meth:`new_index`).
        :param query: shape (1, dim), float32.
        :param params: the search's selector (allowed ids, tombstones).
        :param source: the float32 vectors of candidates, by id.
        :returns: (scores, ids), each shape (1, k), best first; past what the search may return, ids -1
            (as FAISS pads).
        """
        from processors.index.faiss_flat import faiss_search, one_thread

        width = candidates_for(k)
        half_scores, half_ids = faiss_search(index, query, width, params)
        found = half_ids[0][half_ids[0] != -1]
        scores, ids = self._exact_top(query, k, found, source)
        if len(found) < width:
            return scores, ids  # every vector the search may return was scored exactly
        cut, boundary = float(scores[0, k - 1]), float(half_scores[0, -1])
        bound = error_bound(query[0], self._max_norm, self.metric)
        if boundary + bound < cut if self.metric == "inner_product" else boundary - bound > cut:
            return scores, ids
        self.fallbacks += 1
        if not np.isfinite(cut):  # scores past float32's range (or a query of them): every vector a candidate
            _, everything = faiss_search(index, query, int(index.ntotal), params)
            return self._exact_top(query, k, everything[0][everything[0] != -1], source)
        with one_thread():
            _, _, within = index.range_search(query, self._radius(cut, bound), params=params)
        return self._exact_top(query, k, within, source)

    def _radius(self, cut: float, bound: float) -> float:
        """Twice the bound past the exact k-th score, and one float32 step more: FAISS keeps what lies strictly
        inside the radius, in float32, so a radius equal to the cut (a zero query: no bound) would drop the
        k-th itself."""
        if self.metric == "inner_product":
            return float(np.nextafter(np.float32(cut - 2.0 * bound), np.float32(-np.inf)))
        return float(np.nextafter(np.float32(cut + 2.0 * bound), np.float32(np.inf)))

    def _exact_top(self, query: np.ndarray, k: int, candidates: np.ndarray,
                   source: VectorSource) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` of the candidates by their float32 vectors, padded as FAISS pads a short answer."""
        from processors.index.faiss_flat import faiss_search

        worst = -np.finfo(np.float32).max if self.metric == "inner_product" else np.finfo(np.float32).max
        scores, ids = np.full((1, k), worst, np.float32), np.full((1, k), -1, np.int64)
        if len(candidates):
            exact = faiss.IndexFlat(self.dim, self._faiss_metric)
            exact.add(np.ascontiguousarray(source(candidates), dtype=np.float32))
            best, rows = faiss_search(exact, query, min(k, len(candidates)))
            scores[0, :best.shape[1]], ids[0, :best.shape[1]] = best[0], candidates[rows[0]]
        return scores, ids


def _blocks(vectors: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(vectors), _BLOCK_ROWS):
        yield vectors[start:start + _BLOCK_ROWS]


def _row_norms(vectors: np.ndarray) -> np.ndarray:
    """The L2 norm of each row, in float64, a block at a time (see ``_BLOCK_ROWS``); shape (n,)."""
    norms = np.empty(len(vectors), np.float64)
    for start, block in zip(range(0, len(vectors), _BLOCK_ROWS), _blocks(vectors), strict=True):
        wide = block.astype(np.float64)
        norms[start:start + len(block)] = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    return norms


class _RowNorms:
    """One float64 per row of the float16 index, in its order: appended in amortised O(1), kept by a mask."""

    def __init__(self) -> None:
        self._values = np.empty(1024, np.float64)
        self._count = 0

    def extend(self, norms: np.ndarray) -> None:
        needed = self._count + len(norms)
        if needed > len(self._values):
            grown = np.empty(max(needed, 2 * len(self._values)), np.float64)
            grown[:self._count] = self._values[:self._count]
            self._values = grown
        self._values[self._count:needed] = norms
        self._count = needed

    def keep(self, rows: np.ndarray) -> None:
        """:raises ValueError: if ``rows`` is not one flag per row held."""
        if len(rows) != self._count:
            raise ValueError(f"{len(rows)} rows kept or dropped, {self._count} held")
        kept = self._values[:self._count][rows]
        self._values[:len(kept)] = kept
        self._count = len(kept)

    def max(self) -> float:
        return float(self._values[:self._count].max(initial=0.0))
