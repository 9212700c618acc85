"""The flat index's half-precision scan answers what the float32 scan answers, ids and scores to the bit,
or hands the search back to it: checked against the float32 index on the same vectors, with ties,
selectors, tombstones, both metrics, clustered vectors (close scores) and vectors past float16's range."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from processors.index.base import SearchTuning
from processors.index.faiss_flat import FlatVectorIndex
from processors.index.half_scan import _BLOCK_ROWS, FLOAT16_LIMIT, HALF_SCAN_MIN_VECTORS, _max_norm, error_bound
from processors.index.hits import search_past_ties

COUNT = HALF_SCAN_MIN_VECTORS + 2_000


def pair(vectors: np.ndarray, metric: str) -> tuple[FlatVectorIndex, FlatVectorIndex]:
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 5  # ids that are not positions
    full, half = FlatVectorIndex(dim=vectors.shape[1], metric=metric), \
        FlatVectorIndex(dim=vectors.shape[1], metric=metric, scan="float16")
    for index in (full, half):
        index.add(ids, vectors)
    return full, half


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def assert_same(full: FlatVectorIndex, half: FlatVectorIndex, queries: np.ndarray, k: int,
                tuning: SearchTuning | None = None) -> None:
    """The same scores, and, as the shard searches (``search_past_ties``), the same top ``k`` ids with
    the whole run of any score tied at the cut (which of a run FAISS keeps depends on order)."""
    available = full.size if tuning is None else len(tuning.allowed)  # type: ignore[arg-type]
    for query in queries:
        expected, got = full.search(query[None], k, tuning), half.search(query[None], k, tuning)
        assert np.array_equal(expected[0], got[0]), "scores differ"
        answers = []
        for index in (full, half):
            scores, ids = search_past_ties(index, query[None], k, tuning or SearchTuning(), available)
            cut = scores[0][k - 1] if full.metric == "inner_product" else -scores[0][k - 1]
            signed = scores[0] if full.metric == "inner_product" else -scores[0]
            answers.append(sorted(zip(scores[0][signed >= cut].tolist(), ids[0][signed >= cut].tolist())))
        assert answers[0] == answers[1]


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
def test_random_vectors_are_answered_by_the_half_scan_exactly(metric: str) -> None:
    full, half = pair(unit(COUNT, 64, 1), metric)
    assert_same(full, half, unit(40, 64, 2), 11)
    assert half.half_scan_fallbacks == 0  # the bound proved every answer: the fast path ran


def test_clustered_vectors_with_close_scores_are_exact_proven_or_not() -> None:
    """Near-duplicates: scores closer than float16's error, so some answers cannot be proven and fall back."""
    rng = np.random.default_rng(4)
    centres = unit(20, 32, 3)
    vectors = centres[rng.integers(0, 20, COUNT)] + 1e-4 * rng.standard_normal((COUNT, 32)).astype(np.float32)
    full, half = pair(vectors.astype(np.float32), "inner_product")
    assert_same(full, half, centres[:10], 10)
    assert half.half_scan_fallbacks > 0


def test_ties_allowed_ids_and_tombstones_are_kept() -> None:
    vectors = unit(COUNT, 32, 6)
    vectors[100:140] = vectors[99]  # a run of 41 equal vectors
    full, half = pair(vectors, "inner_product")
    for index in (full, half):
        index.remove(np.arange(5, 5 + 3 * 60, 3))  # tombstones, under the compaction share
    allowed = SearchTuning(allowed=np.arange(5, 5 + 3 * COUNT, 6, dtype=np.int64))
    assert_same(full, half, np.vstack([vectors[99], unit(10, 32, 7)]), 50)
    assert_same(full, half, np.vstack([vectors[99], unit(10, 32, 8)]), 10, allowed)


def test_a_vector_past_float16s_range_turns_the_half_scan_off() -> None:
    vectors = unit(COUNT, 16, 9)
    full, half = pair(vectors, "inner_product")
    big = np.full((1, 16), FLOAT16_LIMIT, dtype=np.float32)
    for index in (full, half):
        index.add(np.array([10**9]), big)
    assert_same(full, half, unit(5, 16, 10), 5)
    assert half._half is not None and not half._half.active


def test_the_bound_covers_the_float16_error_it_claims_to() -> None:
    vectors = unit(2_000, 384, 11) * 3.0
    query = unit(1, 384, 12)[0] * 2.0
    for metric in ("inner_product", "l2"):
        exact = vectors @ query if metric == "inner_product" else ((vectors - query) ** 2).sum(1)
        halves = vectors.astype(np.float16).astype(np.float32)
        rounded = halves @ query if metric == "inner_product" else ((halves - query) ** 2).sum(1)
        bound = error_bound(query, 3.0, metric)
        assert np.abs(exact - rounded).max() < bound < 0.05 * np.abs(exact).max()


def test_the_flow_setting_builds_the_copy_and_refuses_other_values() -> None:
    from processors.exceptions import ConfigError
    from processors.index.config import CompoundIndexerConfig
    from processors.index.types import EXACT

    built = EXACT.build(CompoundIndexerConfig(dim=8, flat_scan="float16"), np.empty((0, 0), np.float32))
    assert isinstance(built, FlatVectorIndex) and built._half is not None
    assert EXACT.build(CompoundIndexerConfig(dim=8), np.empty((0, 0), np.float32))._half is None  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="flat_scan 'int8'; use one of float32, float16"):
        CompoundIndexerConfig(flat_scan="int8")  # type: ignore[arg-type]


def test_a_query_far_larger_than_the_vectors_is_still_exact_under_l2() -> None:
    """float32's own rounding in the sums, at |q|^2, outgrows float16's: the bound must cover it (a
    reviewer's case: 36 of 100 answers differed before it did)."""
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((9_000, 100)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    full, half = pair(vectors, "l2")
    queries = rng.standard_normal((100, 100)).astype(np.float32)
    queries *= (1e6 / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    assert_same(full, half, queries, 10)


def test_a_vector_that_is_not_finite_turns_the_half_scan_off() -> None:
    """A NaN would make the largest norm, and so the bound, meaningless (it is refused upstream)."""
    _, half = pair(unit(COUNT, 16, 14), "inner_product")
    bad = unit(1, 16, 15)
    bad[0, 3] = np.nan
    half.add(np.array([10**9]), bad)
    assert half._half is not None and not half._half.active


def test_after_a_run_of_fallbacks_the_half_scan_rests() -> None:
    rng = np.random.default_rng(4)
    centres = unit(20, 32, 3)
    vectors = (centres[rng.integers(0, 20, COUNT)] + 1e-4 * rng.standard_normal((COUNT, 32))).astype(np.float32)
    full, half = pair(vectors, "inner_product")
    queries = np.vstack([centres] * 5)
    assert_same(full, half, queries, 10)
    assert 0 < half.half_scan_fallbacks < len(queries) // 2  # not one float16 scan wasted per search


def test_a_large_vector_gone_by_compaction_no_longer_widens_the_bound() -> None:
    vectors = unit(COUNT, 64, 16)
    full, half = pair(vectors, "inner_product")
    for index in (full, half):
        index.add(np.array([10**9]), unit(1, 64, 17) * 1e3)
        index.remove(np.concatenate([[10**9], np.arange(5, 5 + 3 * 600, 3)]))  # past the compaction share
    assert half.tombstones == 0
    assert_same(full, half, unit(20, 64, 18), 10)
    assert half.half_scan_fallbacks == 0


def test_a_short_answer_is_padded_as_faiss_pads_it() -> None:
    full, half = pair(unit(COUNT, 16, 19), "inner_product")
    allowed = SearchTuning(allowed=np.concatenate([np.arange(5, 5 + 3 * 30, 3), np.arange(10**8, 10**8 + 200)]))
    query = unit(1, 16, 20)
    expected, got = full.search(query, 40, allowed), half.search(query, 40, allowed)
    assert got[0].shape == expected[0].shape == (1, 40)
    assert np.array_equal(expected[0], got[0]) and np.array_equal(np.sort(expected[1][0]), np.sort(got[1][0]))


def test_a_nan_past_the_first_block_still_turns_the_half_scan_off() -> None:
    """The range check goes a block of rows at a time: a NaN in a later block is still found."""
    half = FlatVectorIndex(dim=8, metric="inner_product", scan="float16")
    vectors = unit(3 * _BLOCK_ROWS, 8, 21)
    vectors[-1, 0] = np.nan
    half.add(np.arange(len(vectors), dtype=np.int64), vectors)
    assert half._half is not None and not half._half.active


def test_the_largest_norm_is_found_in_any_block_without_a_float64_copy_of_the_shard() -> None:
    """A compaction recomputes the largest norm over every vector held: a block at a time, so that it never
    holds a float64 copy of the shard (20,000 384-d vectors: 61 MB, and its squares as much again)."""
    vectors = unit(20_000, 384, 22)
    vectors[-3] *= 7.5  # the largest, in the last block
    expected = float(np.sqrt((vectors.astype(np.float64) ** 2).sum(axis=1).max()))
    tracemalloc.start()
    try:
        found = _max_norm(vectors)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == pytest.approx(expected, rel=1e-12)
    assert peak < 3 * _BLOCK_ROWS * 384 * 8  # two blocks in float64 at a time (the next made before the last goes)
