"""The flat index in float16 answers what the float32 flat index answers, ids and scores to the bit: checked
against it on the same vectors, with ties, selectors, tombstones, both metrics, clustered vectors (close
scores, where the first candidates cannot be proven and the range search widens them), short answers and
vectors past float16's range (the index turns to float32, read back from the store); ``auto`` turns to float16
when the shard grows past its size, and answers the same before and after."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from processors.index import faiss_flat
from processors.index.base import SearchTuning
from processors.index.faiss_flat import FlatVectorIndex
from processors.index.half_scan import _BLOCK_ROWS, FLOAT16_LIMIT, _row_norms, candidates_for, error_bound
from processors.index.hits import search_past_ties

COUNT = 10_000


class Stored:
    """The float32 vectors by id, as the shard's store holds them (``ShardStore.vectors_of``); it counts
    what it is asked for."""

    def __init__(self) -> None:
        self.by_id: dict[int, np.ndarray] = {}
        self.reads = 0

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        self.reads += len(ids)
        return np.stack([self.by_id[int(vid)] for vid in ids]).astype(np.float32)


def pair(vectors: np.ndarray, metric: str) -> tuple[FlatVectorIndex, FlatVectorIndex]:
    """A float32 and a float16 flat index holding the same vectors under ids that are not positions."""
    stored = Stored()
    full, half = FlatVectorIndex(dim=vectors.shape[1], metric=metric), \
        FlatVectorIndex(dim=vectors.shape[1], metric=metric, scan="float16", source=stored)
    add(full, half, np.arange(len(vectors), dtype=np.int64) * 3 + 5, vectors)
    return full, half


def add(full: FlatVectorIndex, half: FlatVectorIndex, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Store, then add to both (as a shard does: FAISS follows RocksDB)."""
    stored = half._source
    assert isinstance(stored, Stored)
    stored.by_id.update(zip(ids.tolist(), vectors.astype(np.float32)))
    for index in (full, half):
        index.add(ids, vectors)


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def assert_same(full: FlatVectorIndex, half: FlatVectorIndex, queries: np.ndarray, k: int,
                tuning: SearchTuning | None = None) -> None:
    """The same scores, and, as the shard searches (``search_past_ties``), the same top ``k`` ids with
    the whole run of any score tied at the cut (which of a run FAISS keeps depends on order)."""
    available = full.size if tuning is None else len(tuning.allowed)  # type: ignore[arg-type]
    expected, got = full.search(queries, k, tuning), half.search(queries, k, tuning)  # a batch: one by one
    assert np.array_equal(expected[0], got[0]), "scores differ"
    for query in queries:
        answers = []
        for index in (full, half):
            scores, ids = search_past_ties(index, query[None], k, tuning or SearchTuning(), available)
            cut = scores[0][k - 1] if full.metric == "inner_product" else -scores[0][k - 1]
            signed = scores[0] if full.metric == "inner_product" else -scores[0]
            answers.append(sorted(zip(scores[0][signed >= cut].tolist(), ids[0][signed >= cut].tolist())))
        assert answers[0] == answers[1]


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
def test_random_vectors_are_answered_exactly_from_the_first_candidates(metric: str) -> None:
    full, half = pair(unit(COUNT, 64, 1), metric)
    half._source.reads = 0  # type: ignore[union-attr]
    assert_same(full, half, unit(40, 64, 2), 11)
    assert half.half_scan_fallbacks == 0  # the bound proved every answer from the first candidates
    # each of 40 queries searched twice (k 11, then 12 past ties): candidates read, never the shard
    assert half._source.reads <= 2 * 40 * candidates_for(12)  # type: ignore[union-attr]


def test_clustered_vectors_with_close_scores_are_exact_proven_or_widened() -> None:
    """Near-duplicates: scores closer than float16's error, so some first candidates cannot be proven and
    the range search widens them."""
    rng = np.random.default_rng(4)
    centres = unit(20, 32, 3)
    vectors = centres[rng.integers(0, 20, COUNT)] + 1e-4 * rng.standard_normal((COUNT, 32)).astype(np.float32)
    full, half = pair(vectors.astype(np.float32), "inner_product")
    assert_same(full, half, np.vstack([centres[:10], unit(10, 32, 5)]), 10)
    assert half.half_scan_fallbacks > 0


@pytest.mark.parametrize("metric", ["inner_product", "l2"])
def test_exact_duplicates_past_the_candidates_are_all_found(metric: str) -> None:
    """More equal vectors than the first candidates hold: the range search finds every one of the run."""
    vectors = unit(COUNT, 32, 23)
    vectors[200:400] = vectors[199]  # a run of 201 equal vectors, past the 36 first candidates of k 10
    full, half = pair(vectors, metric)
    assert_same(full, half, np.vstack([vectors[199], unit(5, 32, 24)]), 10)
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


def test_a_small_index_is_exact_too() -> None:
    """Fewer vectors than the first candidates: every one is scored on its float32 vector."""
    full, half = pair(unit(30, 16, 25), "l2")
    assert_same(full, half, unit(5, 16, 26), 10)


@pytest.mark.parametrize("component", [FLOAT16_LIMIT, np.inf, np.nan])
def test_a_vector_float16_cannot_hold_turns_the_index_to_float32(component: float) -> None:
    """Past float16's range (or not finite, which the codec refuses upstream) the bound means nothing: the
    index holds float32 from then on, read back from the store, tombstones left out."""
    vectors = unit(COUNT, 16, 9)
    full, half = pair(vectors, "inner_product")
    for index in (full, half):
        index.remove(np.array([5, 8, 11]))
    big = unit(1, 16, 27)
    big[0, 2] = component
    add(full, half, np.array([10**9]), big)
    assert half.scan == "float32" and half.size == full.size == COUNT - 2
    if not np.isfinite(component):  # scores of NaN: compare the searches without it
        for index in (full, half):
            index.remove(np.array([10**9]))
    assert_same(full, half, unit(5, 16, 10), 5)
    assert np.array_equal(half.vectors(np.array([14, 17])), vectors[3:5])


def test_the_bound_covers_the_float16_error_it_claims_to() -> None:
    vectors = unit(2_000, 384, 11) * 3.0
    query = unit(1, 384, 12)[0] * 2.0
    for metric in ("inner_product", "l2"):
        exact = vectors @ query if metric == "inner_product" else ((vectors - query) ** 2).sum(1)
        halves = vectors.astype(np.float16).astype(np.float32)
        rounded = halves @ query if metric == "inner_product" else ((halves - query) ** 2).sum(1)
        bound = error_bound(query, 3.0, metric)
        assert np.abs(exact - rounded).max() < bound < 0.05 * np.abs(exact).max()


def test_the_flow_setting_builds_a_float16_index_and_refuses_other_values() -> None:
    from processors.exceptions import ConfigError
    from processors.index.config import CompoundIndexerConfig
    from processors.index.types import EXACT, IndexInputs

    def built(config: CompoundIndexerConfig) -> FlatVectorIndex:
        index = EXACT.build(IndexInputs(config, np.empty((0, 0), np.float32), source=Stored()))
        assert isinstance(index, FlatVectorIndex)
        return index

    assert built(CompoundIndexerConfig(dim=8, flat_scan="float16")).scan == "float16"
    assert built(CompoundIndexerConfig(dim=8)).scan == "float32"
    with pytest.raises(ConfigError, match="give a source"):
        FlatVectorIndex(dim=8, metric="inner_product", scan="float16")
    with pytest.raises(ConfigError, match="flat_scan 'int8'; use one of auto, float32, float16"):
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


def test_a_large_vector_gone_by_compaction_no_longer_widens_the_bound() -> None:
    vectors = unit(COUNT, 64, 16)
    full, half = pair(vectors, "inner_product")
    add(full, half, np.array([10**9]), unit(1, 64, 17) * 1e3)
    for index in (full, half):
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


def test_a_nan_past_the_first_block_is_still_found() -> None:
    """The range check goes a block of rows at a time: a NaN in a later block is still found."""
    vectors = unit(3 * _BLOCK_ROWS, 8, 21)
    vectors[-1, 0] = np.nan
    _, half = pair(unit(10, 8, 29), "inner_product")
    half.add(np.arange(10**6, 10**6 + len(vectors), dtype=np.int64), vectors)
    assert half.scan == "float32"


def test_the_norms_are_found_in_any_block_without_a_float64_copy_of_the_vectors() -> None:
    """The norms of a bulk load (a shard turning to float16) are computed a block at a time, so that it never
    holds a float64 copy of the shard (20,000 384-d vectors: 61 MB, and its squares as much again)."""
    vectors = unit(20_000, 384, 22)
    vectors[-3] *= 7.5  # the largest, in the last block
    expected = np.sqrt((vectors.astype(np.float64) ** 2).sum(axis=1))
    tracemalloc.start()
    try:
        found = _row_norms(vectors)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.allclose(found, expected, rtol=1e-12, atol=0) and int(found.argmax()) == len(vectors) - 3
    assert peak < 3 * _BLOCK_ROWS * 384 * 8 + found.nbytes  # two blocks in float64 at a time, and the norms


def test_the_bound_follows_the_rows_a_compaction_keeps_in_faiss_order() -> None:
    """The norms are kept by row, in FAISS's order (``remove_ids`` keeps the order of what stays): after
    compactions that drop the largest vectors one by one, the bound is the largest of those held."""
    vectors = unit(400, 16, 31)
    scales = np.linspace(1.0, 3.0, len(vectors)).astype(np.float32)
    rng = np.random.default_rng(32)
    order = rng.permutation(len(vectors))  # the largest anywhere among the rows
    vectors = vectors * scales[order][:, None]
    _, half = pair(vectors, "inner_product")
    held = np.ones(len(vectors), bool)
    for largest in np.argsort(-scales[order])[:5]:
        victims = iter(rng.permutation(np.flatnonzero(held & (np.arange(len(vectors)) != largest))))
        half.remove(np.array([5 + 3 * int(largest)]))  # pair's ids
        held[largest] = False
        while half.tombstones:  # until the compaction past COMPACT_FRACTION
            victim = next(victims)
            half.remove(np.array([5 + 3 * int(victim)]))
            held[victim] = False
        expected = float(np.sqrt((vectors[held].astype(np.float64) ** 2).sum(axis=1).max()))
        assert half._half is not None and half._half._max_norm == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("query_value", [0.0, 1e-45, 3e38])
def test_a_query_whose_scores_all_tie_at_zero_or_overflow_is_answered(query_value: float) -> None:
    """A helper's attack: a zero query has no bound, so a range radius equal to the cut dropped the k-th (FAISS
    keeps what lies strictly inside); products that underflow to 0 or overflow to inf did the same."""
    vectors = np.random.default_rng(30).uniform(0.2, 0.4, (40, 8)).astype(np.float32)
    full, half = pair(vectors, "inner_product")
    query = np.full((1, 8), query_value, np.float32)
    expected, got = full.search(query, 3), half.search(query, 3)
    assert np.array_equal(expected[0], got[0]) and (got[1] != -1).all()


def test_zero_vectors_and_a_zero_query_under_l2_are_answered() -> None:
    full, half = pair(np.zeros((40, 4), np.float32), "l2")
    expected, got = full.search(np.zeros((1, 4), np.float32), 2), half.search(np.zeros((1, 4), np.float32), 2)
    assert np.array_equal(expected[0], got[0]) and (got[1] != -1).all()


def test_components_below_float16s_normals_are_within_the_l2_bound() -> None:
    """A helper's attack: float16 rounds a subnormal component by up to 2^-25 absolutely, which moves a squared
    distance by 2^-24 |x_i| too, not only by the query's part."""
    step = 2.0 ** -24
    near = np.zeros((40, 8), np.float32)
    near[:, 0] = 1.6 * step  # exact 2.56 step^2, in float16 4 step^2
    best = np.full((1, 8), 0.51 * step, np.float32)  # exact 2.08 step^2 (the best), in float16 8 step^2
    full, half = pair(np.vstack([near, best]), "l2")
    for query in (np.zeros((1, 8), np.float32), np.full((1, 8), 1e-12, np.float32)):
        assert full.search(query, 1)[1][0, 0] == half.search(query, 1)[1][0, 0] == 5 + 3 * 40


def test_products_below_float32s_normals_are_within_the_inner_product_bound() -> None:
    """A helper's attack: float32 rounds a product below its normals by up to 2^-150 absolutely."""
    tiny = 2.0 ** -149
    near = np.full((40, 8), 2.0, np.float32)
    near[:, :3] = 2.5001  # exact 19 tiny, 16 tiny in float16
    best = np.full((1, 8), 2.5001, np.float32)  # exact 24 tiny (the best), 16 tiny in float16
    full, half = pair(np.vstack([near, best]), "inner_product")
    query = np.full((1, 8), tiny, np.float32)
    assert full.search(query, 1)[1][0, 0] == half.search(query, 1)[1][0, 0] == 5 + 3 * 40


def test_vectors_read_back_are_the_callers_to_change(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``ShardStore.vectors_of`` hands writeable rows, as a float32 index's copies are."""
    from processors.index.store import ShardStore
    from streams.wire.codec import STORED_DOCUMENT

    store = ShardStore(tmp_path, dim=4, metric="inner_product", codec=STORED_DOCUMENT)
    store.open()
    write = store.begin()
    write.put_vector(7, np.arange(4, dtype=np.float32), ("d", "", ""))
    store.commit(write, next_vid=8, checkpoint=b"c")
    rows = store.vectors_of(np.array([7]))
    rows[0, 0] = 9.0
    assert rows.flags.writeable and np.array_equal(store.vectors_of(np.array([7]))[0], np.arange(4))
    with pytest.raises(KeyError, match=r"vector ids \[8\]"):
        store.vectors_of(np.array([7, 8]))
    store.close()


def auto_pair(dim: int, *, past_rows: int, monkeypatch: pytest.MonkeyPatch) -> tuple[FlatVectorIndex, FlatVectorIndex]:
    """A float32 flat index and an ``auto`` one that turns to float16 once it would hold ``past_rows`` vectors."""
    monkeypatch.setattr(faiss_flat, "AUTO_FLOAT16_BYTES", past_rows * dim * 4)
    return (FlatVectorIndex(dim=dim, metric="inner_product"),
            FlatVectorIndex(dim=dim, metric="inner_product", scan="auto", source=Stored()))


def test_auto_turns_to_float16_as_the_shard_grows_and_answers_the_same_before_and_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    full, auto = auto_pair(32, past_rows=3_000, monkeypatch=monkeypatch)
    vectors, queries = unit(5_000, 32, 40), unit(30, 32, 41)
    ids = np.arange(len(vectors), dtype=np.int64) * 7 + 1
    add(full, auto, ids[:2_000], vectors[:2_000])
    for index in (full, auto):
        index.remove(ids[:40:2])  # tombstones (under the compaction share) the switch must not copy over
    assert auto.scan == "float32" and auto.tombstones == 20
    assert_same(full, auto, queries, 10)
    add(full, auto, ids[2_000:], vectors[2_000:])  # past the size: the held vectors are copied, then the batch
    assert auto.scan == "float16" and auto.tombstones == 0 and auto.size == full.size == 4_980
    assert_same(full, auto, queries, 10)
    for index in (full, auto):
        index.remove(ids[1_000:4_000])  # well below the size again: it stays float16, no flip back and forth
    assert auto.scan == "float16"
    assert_same(full, auto, queries, 10)


def test_auto_loading_a_large_shard_in_one_batch_never_holds_it_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard's bulk load at open is one batch: it goes to float16 before it is added, never into a float32 index
    first (which would hold the shard in both)."""
    full, auto = auto_pair(32, past_rows=1_000, monkeypatch=monkeypatch)
    first = auto._index  # the empty float32 index it opened with
    add(full, auto, np.arange(4_000, dtype=np.int64), unit(4_000, 32, 42))
    assert auto.scan == "float16" and first.ntotal == 0 and auto._index.ntotal == 4_000
    assert isinstance(faiss_flat.faiss.downcast_index(auto._index.index), faiss_flat.faiss.IndexScalarQuantizer)
    assert_same(full, auto, unit(20, 32, 43), 10)


@pytest.mark.parametrize("where", ["held", "coming"])
def test_auto_stays_float32_for_good_when_float16_cannot_hold_a_vector(where: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    full, auto = auto_pair(16, past_rows=1_500, monkeypatch=monkeypatch)
    vectors = unit(3_000, 16, 44)
    vectors[10 if where == "held" else 2_000, 3] = 2 * FLOAT16_LIMIT  # before the size is passed, or in the batch
    add(full, auto, np.arange(1_000, dtype=np.int64), vectors[:1_000])
    add(full, auto, np.arange(1_000, 3_000, dtype=np.int64), vectors[1_000:])
    assert auto.scan == "float32"
    full_after, auto_after = unit(600, 16, 45), np.arange(3_000, 3_600, dtype=np.int64)
    add(full, auto, auto_after, full_after)  # it does not try again
    assert auto.scan == "float32"
    assert_same(full, auto, unit(20, 16, 46), 10)


def test_auto_turned_to_float16_turns_to_float32_on_a_vector_float16_cannot_hold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    full, auto = auto_pair(16, past_rows=500, monkeypatch=monkeypatch)
    add(full, auto, np.arange(1_000, dtype=np.int64), unit(1_000, 16, 47))
    assert auto.scan == "float16"
    huge = unit(1, 16, 48) * 3 * FLOAT16_LIMIT
    add(full, auto, np.array([5_000]), huge)
    assert auto.scan == "float32"
    add(full, auto, np.arange(6_000, 7_000, dtype=np.int64), unit(1_000, 16, 49))  # never back to float16
    assert auto.scan == "float32"
    assert_same(full, auto, unit(20, 16, 50), 10)


def test_auto_is_the_flows_default() -> None:
    from processors.index.config import CompoundIndexerConfig

    assert CompoundIndexerConfig().flat_scan == "auto"
