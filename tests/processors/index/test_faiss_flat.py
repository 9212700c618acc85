import threading

import faiss
import numpy as np
import pytest

from processors.index.base import SearchTuning
from processors.index.faiss_flat import COMPACT_FRACTION, FlatVectorIndex, _omp_threads, faiss_search


def test_a_single_query_runs_on_one_thread_and_the_setting_is_restored() -> None:
    faiss.omp_set_num_threads(2)
    seen: list[int] = []
    with _omp_threads(1):
        seen.append(faiss.omp_get_max_threads())
    with _omp_threads(None):
        seen.append(faiss.omp_get_max_threads())
    assert seen == [1, 2] and faiss.omp_get_max_threads() == 2


def test_the_setting_is_per_calling_thread() -> None:
    """The query path of a stage may search while its index path (another thread) builds an index."""
    faiss.omp_set_num_threads(2)
    inside, outside = threading.Event(), threading.Event()
    other: list[int] = []

    def search_thread() -> None:
        with _omp_threads(1):
            inside.set()
            outside.wait(10)

    worker = threading.Thread(target=search_thread)
    worker.start()
    assert inside.wait(10)
    other.append(faiss.omp_get_max_threads())
    outside.set()
    worker.join()
    assert other == [2]


def test_single_and_batched_queries_find_the_same_neighbours() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    index = FlatVectorIndex(dim=16, metric="l2")
    index.add(np.arange(500), vectors)
    _, batched = index.search(queries, 7)
    singles = np.vstack([faiss_search(index._index, query[None], 7)[1] for query in queries])
    exact = np.argsort(((queries[:, None, :] - vectors[None]) ** 2).sum(-1), axis=1)[:, :7]
    assert (batched == singles).all() and (singles == exact).all()


class TestTombstones:
    """Removed ids stay in FAISS as tombstones until they are ``COMPACT_FRACTION`` of it: searches skip
    them, counts leave them out, and past the share they leave in one ``remove_ids``."""

    def filled(self, count: int = 1000) -> tuple[FlatVectorIndex, np.ndarray]:
        vectors = np.random.default_rng(5).standard_normal((count, 16)).astype(np.float32)
        index = FlatVectorIndex(dim=16, metric="l2")
        index.add(np.arange(10, 10 + count), vectors)
        return index, vectors

    def test_a_removed_vector_is_never_found_even_by_itself(self) -> None:
        index, vectors = self.filled()
        gone = np.arange(10, 40)
        assert index.remove(gone) == 30
        assert index.tombstones == 30 and index._index.ntotal == 1000  # still in FAISS
        _, ids = index.search(vectors[:30], 5)  # each query is a removed vector
        assert not set(ids.ravel().tolist()) & set(gone.tolist()) and (ids >= 0).all()
        live = vectors[30:]
        exact = 40 + np.argsort(((vectors[:30, None, :] - live[None]) ** 2).sum(-1), axis=1)[:, :5]
        assert (ids == exact).all() and index.size == 970

    def test_past_the_share_they_leave_faiss_in_one_pass(self) -> None:
        index, _ = self.filled()
        index.remove(np.arange(10, 10 + int(1000 * COMPACT_FRACTION)))
        assert index.tombstones == 50 and index._index.ntotal == 1000
        index.remove(np.array([500]))
        assert index.tombstones == 0 and index._index.ntotal == index.size == 949

    def test_remove_counts_only_live_ids_once(self) -> None:
        index, _ = self.filled()
        assert index.remove(np.array([10, 10, 11, 5, 99_999, -1])) == 2
        assert index.remove(np.array([10])) == 0 and index.size == 998

    def test_an_id_is_not_added_twice(self) -> None:
        index, vectors = self.filled()
        index.remove(np.array([10]))
        for again in (10, 11):
            with pytest.raises(ValueError, match="never reused"):
                index.add(np.array([again]), vectors[:1])

    def test_allowed_ids_and_tombstones_together(self) -> None:
        index, vectors = self.filled()
        index.remove(np.array([10, 11]))
        _, ids = index.search(vectors[:1], 10, SearchTuning(allowed=np.array([10, 11, 12, 13])))
        assert ids.tolist() == [[12, 13, -1, -1]]  # padded, as when the removed ids had left FAISS
        assert index.search(vectors[:1], 3, SearchTuning(allowed=np.array([10])))[1].tolist() == [[-1]]
