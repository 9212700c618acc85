import logging

import numpy as np
import pytest

from processors.exceptions import ConfigError
from processors.index.base import SearchTuning
from processors.index.faiss_ivf import (
    AUTO_NLIST_CAP,
    IvfVectorIndex,
    ProductQuantization,
    auto_pq_m,
    nlist_for,
    training_size_needed,
)

DIM = 16


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def trained(vectors: np.ndarray, *, nlist: int = 0, pq: ProductQuantization | None = None) -> IvfVectorIndex:
    index = IvfVectorIndex(dim=DIM, metric="inner_product", nlist=nlist, nprobe=4, pq=pq, training=vectors)
    index.add(np.arange(len(vectors), dtype=np.int64), vectors)
    return index


class TestSizing:
    @pytest.mark.parametrize(("vectors", "wanted", "expected"), [
        (0, 0, 1), (50, 0, 1), (100, 0, 2), (5183, 0, 132), (10**9, 0, AUTO_NLIST_CAP), (10, 64, 64)])
    def test_nlist(self, vectors: int, wanted: int, expected: int) -> None:
        assert nlist_for(vectors, wanted) == expected

    @pytest.mark.parametrize(("dim", "expected"), [(384, 48), (768, 96), (16, 2), (8, 1), (100, 10), (7, 1)])
    def test_auto_pq_m_divides_dim(self, dim: int, expected: int) -> None:
        assert auto_pq_m(dim) == expected and dim % expected == 0

    def test_training_size_needed(self) -> None:
        assert training_size_needed(nlist=0, pq=None) == 1
        assert training_size_needed(nlist=64, pq=None) == 64
        assert training_size_needed(nlist=0, pq=ProductQuantization(m=2, bits=8)) == 256


class TestIvfVectorIndex:
    def test_too_few_vectors_to_train_is_a_clear_error(self) -> None:
        with pytest.raises(ConfigError, match="at least 64 vectors, the shard holds 10"):
            trained(unit_rows(10, seed=5), nlist=64)

    def test_short_training_warns_and_asks_for_a_rebuild_once_doubled(self, caplog: pytest.LogCaptureFixture) -> None:
        vectors = unit_rows(400, seed=5)
        with caplog.at_level(logging.WARNING):
            index = trained(vectors[:200], nlist=16)
        assert "recommends at least 624" in caplog.text
        index.add(np.arange(200, 399, dtype=np.int64), vectors[200:399])
        assert not index.needs_rebuild
        index.add(np.array([399], dtype=np.int64), vectors[399:])
        assert index.needs_rebuild

    def test_automatic_nlist_asks_for_a_rebuild_when_it_would_double(self) -> None:
        vectors = unit_rows(800, seed=6)
        index = trained(vectors[:200])
        assert index.nlist == 5 and not index.needs_rebuild
        index.add(np.arange(200, 800, dtype=np.int64), vectors[200:])
        assert index.needs_rebuild  # 800 vectors want 20 lists

    def test_remove_is_exact_and_nprobe_per_call(self) -> None:
        vectors = unit_rows(500, seed=7)
        index = trained(vectors, nlist=8)
        assert index.remove(np.array([0, 1, 9999], dtype=np.int64)) == 2 and index.size == 498
        _, ids = index.search(vectors[:3], 5, SearchTuning(nprobe=8))
        assert not {0, 1} & set(ids.ravel().tolist()) and ids[2, 0] == 2
        assert index.op_name == "faiss.ivf_flat_ip"

    def test_ivf_pq_codes_and_name(self) -> None:
        vectors = unit_rows(600, seed=8)
        index = trained(vectors, nlist=4, pq=ProductQuantization(m=8, bits=8))
        _, ids = index.search(vectors[:20], 10, SearchTuning(nprobe=4))
        assert np.mean([i in row for i, row in enumerate(ids.tolist())]) >= 0.9
        assert index.op_name == "faiss.ivf_pq_ip"
