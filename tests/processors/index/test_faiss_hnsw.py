import numpy as np
import pytest

from processors.index.base import SearchTuning
from processors.index.faiss_hnsw import REBUILD_FRACTION, HnswVectorIndex

DIM = 16


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def filled(count: int = 500, metric: str = "inner_product") -> tuple[HnswVectorIndex, np.ndarray]:
    index = HnswVectorIndex(dim=DIM, metric=metric, m=16, ef_construction=100, ef_search=16)  # type: ignore[arg-type]
    vectors = unit_rows(count, seed=4)
    index.add(np.arange(100, 100 + count, dtype=np.int64), vectors)
    return index, vectors


class TestHnswVectorIndex:
    @pytest.mark.parametrize("metric", ["inner_product", "l2"])
    def test_removed_ids_never_come_back_and_rows_stay_full(self, metric: str) -> None:
        index, vectors = filled(metric=metric)
        gone = np.arange(100, 100 + int(500 * REBUILD_FRACTION), dtype=np.int64)
        assert index.remove(gone) == len(gone)
        _, ids = index.search(vectors[:100], 10)  # the removed vectors themselves as queries
        assert not set(ids.ravel().tolist()) & set(gone.tolist())
        assert (ids >= 0).all()
        assert index.size == 500 - len(gone) and not index.needs_rebuild

    def test_asks_for_a_rebuild_past_the_tombstone_share(self) -> None:
        index, _ = filled()
        index.remove(np.arange(100, 200, dtype=np.int64))
        assert not index.needs_rebuild
        index.remove(np.arange(200, 202, dtype=np.int64))
        assert index.needs_rebuild

    def test_remove_counts_only_live_ids(self) -> None:
        index, _ = filled()
        assert index.remove(np.array([100, 101, 99_999], dtype=np.int64)) == 2
        assert index.remove(np.array([100], dtype=np.int64)) == 0

    def test_a_removed_id_is_not_reused(self) -> None:
        index, vectors = filled()
        index.remove(np.array([100], dtype=np.int64))
        with pytest.raises(ValueError, match="never reused"):
            index.add(np.array([100], dtype=np.int64), vectors[:1])

    def test_ef_search_per_call_and_short_rows_padded(self) -> None:
        index, vectors = filled(count=5)
        scores, ids = index.search(vectors[:1], 8, SearchTuning(ef_search=64))
        assert ids[0, 0] == 100 and ids[0, 0] != -1 and (ids[0, 5:] == -1).all()
        assert scores[0, 0] == pytest.approx(1.0) and index.op_name == "faiss.hnsw_ip"
