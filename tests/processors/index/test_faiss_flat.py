import threading

import faiss
import numpy as np

from processors.index.faiss_flat import FlatVectorIndex, _omp_threads, faiss_search


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
