from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processors.document import Direction, Document
from processors.exceptions import ConfigError
from processors.index.base import Change
from processors.index.types import INDEX_TYPES
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from streams.wire.codec import STORED_DOCUMENT

DIM = 16
N = 2000
METRICS = ["inner_product", "l2"]
EXACT = {"ef_search": 1024, "nprobe": 4096}  # every list probed: HNSW and IVF-Flat give the exact top-k


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


VECTORS = unit_rows(N, seed=1)
QUERIES = unit_rows(50, seed=2)


def upserts(vectors: np.ndarray, start: int = 0) -> list[Change]:
    return [Change(f"d{start + i}", Document(id=f"d{start + i}", embedding=v)) for i, v in enumerate(vectors)]


def open_index(path: Path, **config: Any) -> CompoundIndexer:
    index = CompoundIndexer(CompoundIndexerConfig(dim=DIM, **config), path=path, codec=STORED_DOCUMENT)
    index.warm_up()
    return index


def top_ids(index: CompoundIndexer, queries: np.ndarray, k: int = 10, **choice: Any) -> list[list[str]]:
    return [[hit.node.id for hit in hits] for hits in index.search(embeddings=queries, top_k=k, **choice)]


def recall(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


@pytest.fixture(scope="module", params=METRICS)
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CompoundIndexer:
    """One shard of N vectors per metric with every index type built; tests here only read it."""
    index = open_index(tmp_path_factory.mktemp(request.param), metric=request.param, pq_m=8)
    index.apply(changes=upserts(VECTORS), checkpoint=b"1")
    return index


class TestSameVectorsEveryIndexType:
    @pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
    def test_with_full_effort_top10_equals_exact(self, filled: CompoundIndexer, index_type: str) -> None:
        exact = top_ids(filled, QUERIES, index_type="flat")
        assert top_ids(filled, QUERIES, index_type=index_type, **EXACT) == exact

    def test_defaults_are_close_to_exact(self, filled: CompoundIndexer) -> None:
        exact = top_ids(filled, QUERIES, index_type="flat")
        assert recall(top_ids(filled, QUERIES, index_type="hnsw"), exact) >= 0.95
        assert recall(top_ids(filled, QUERIES, index_type="ivf"), exact) >= 0.8

    def test_ivf_pq_returns_sensible_neighbours(self, filled: CompoundIndexer) -> None:
        exact = top_ids(filled, QUERIES, index_type="flat")
        pq_recall = recall(top_ids(filled, QUERIES, index_type="ivf_pq", **EXACT), exact)
        assert 0.7 <= pq_recall < 1.0  # compressed codes: close, not identical

    def test_nprobe_per_call_trades_recall(self, filled: CompoundIndexer) -> None:
        exact = top_ids(filled, QUERIES, index_type="flat")
        assert recall(top_ids(filled, QUERIES, index_type="ivf", nprobe=1), exact) < 0.9

    def test_op_name_and_direction_name_the_index_that_answered(self, filled: CompoundIndexer) -> None:
        tag = "ip" if filled.config.metric == "inner_product" else "l2"
        direction = Direction.SIMILARITY if tag == "ip" else Direction.DISTANCE
        expected = {"flat": f"faiss.flat_{tag}", "hnsw": f"faiss.hnsw_{tag}",
                    "ivf": f"faiss.ivf_flat_{tag}", "ivf_pq": f"faiss.ivf_pq_{tag}"}
        for index_type, op_name in expected.items():
            hits = filled.search(embeddings=QUERIES[:2], top_k=3, index_type=index_type)
            assert {(h.score.op_name, h.score.direction) for row in hits for h in row} == {(op_name, direction)}
            assert all(h.node.scores["score"].op_name == op_name for row in hits for h in row)

    def test_every_type_is_reported_built(self, filled: CompoundIndexer) -> None:
        for index_type in INDEX_TYPES:
            filled.build(index_type)
        assert filled.stats().index_types == INDEX_TYPES


@pytest.mark.parametrize("metric", METRICS)
class TestKeptInStep:
    def test_deletes_and_resent_ids_reach_every_built_type(self, tmp_path: Path, metric: str) -> None:
        index = open_index(tmp_path, metric=metric)
        index.apply(changes=upserts(VECTORS), checkpoint=b"1")
        assert all(index.build(name) for name in INDEX_TYPES)
        moved = unit_rows(5, seed=3)
        index.apply(changes=[Change(f"d{i}", None) for i in range(5)] + upserts(moved, start=5), checkpoint=b"2")
        for index_type in INDEX_TYPES:
            deleted = top_ids(index, VECTORS[:5], k=10, index_type=index_type, **EXACT)
            assert not {f"d{i}" for i in range(5)} & {doc for row in deleted for doc in row}, index_type
            old_places = top_ids(index, VECTORS[5:10], k=1, index_type=index_type, **EXACT)
            assert all(row[0] != f"d{5 + i}" for i, row in enumerate(old_places)), index_type
            new_places = top_ids(index, moved, k=10, index_type=index_type, **EXACT)
            assert all(f"d{5 + i}" in row for i, row in enumerate(new_places)), index_type
        assert index.stats().vectors == N - 5

    def test_type_built_after_ingest_follows_later_writes(self, tmp_path: Path, metric: str) -> None:
        index = open_index(tmp_path, metric=metric)
        index.apply(changes=upserts(VECTORS[:1000]), checkpoint=b"1")
        assert index.stats().index_types == ("flat",)
        top_ids(index, QUERIES, index_type="hnsw")  # built here, from what is stored
        index.apply(changes=upserts(VECTORS[1000:], start=1000), checkpoint=b"2")
        exact = top_ids(index, QUERIES, index_type="flat")
        assert top_ids(index, QUERIES, index_type="hnsw", ef_search=1024) == exact
        assert index.stats().index_types == ("flat", "hnsw")

    def test_hnsw_is_rebuilt_when_tombstones_pile_up(self, tmp_path: Path, metric: str) -> None:
        index = open_index(tmp_path, metric=metric, index_type="hnsw")
        index.apply(changes=upserts(VECTORS[:500]), checkpoint=b"1")
        for start in range(0, 200, 20):  # 40% of the documents, deleted in small batches
            index.apply(changes=[Change(f"d{i}", None) for i in range(start, start + 20)], checkpoint=b"2")
        exact = top_ids(index, QUERIES, index_type="flat")
        assert top_ids(index, QUERIES, ef_search=1024) == exact
        assert all(len(row) == 10 for row in exact)


class TestChoosingAType:
    def test_configured_default_is_built_at_warm_up_and_again_on_reopen(self, tmp_path: Path) -> None:
        index = open_index(tmp_path, index_type="hnsw")
        index.apply(changes=upserts(VECTORS[:300]), checkpoint=b"1")
        assert index.stats().index_types == ("flat", "hnsw")
        index.close()
        index.warm_up()  # the same object, reopened: nothing doubled
        assert index.stats().vectors == 300 and index.stats().index_types == ("flat", "hnsw")
        index.close()
        reopened = open_index(tmp_path, index_type="hnsw")
        assert reopened.stats().index_types == ("flat", "hnsw")
        hits = reopened.search(embeddings=VECTORS[7:8], top_k=1)[0]
        assert hits[0].node.id == "d7" and hits[0].score.op_name == "faiss.hnsw_ip"

    def test_switching_type_needs_no_rebuild_of_the_shard(self, tmp_path: Path) -> None:
        first = open_index(tmp_path)
        first.apply(changes=upserts(VECTORS[:300]), checkpoint=b"1")
        first.close()
        reopened = open_index(tmp_path, index_type="ivf", ivf_nprobe=64)
        assert reopened.checkpoint() == b"1"
        assert reopened.search(embeddings=VECTORS[3:4], top_k=1)[0][0].score.op_name == "faiss.ivf_flat_ip"

    def test_unknown_index_type_names_the_known_ones(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        with pytest.raises(ConfigError, match="flat, hnsw, ivf, ivf_pq"):
            index.search(embeddings=QUERIES, top_k=3, index_type="annoy")
        with pytest.raises(ConfigError, match="flat, hnsw, ivf, ivf_pq"):
            index.build("annoy")
        with pytest.raises(ConfigError, match="flat, hnsw, ivf, ivf_pq"):
            CompoundIndexerConfig(index_type="annoy")  # type: ignore[arg-type]

    @pytest.mark.parametrize("bad", [{"pq_m": 5}, {"pq_bits": 0}, {"hnsw_m": 0}, {"ivf_nprobe": 0}, {"ivf_nlist": -1}])
    def test_bad_parameters_are_rejected_in_the_config(self, bad: dict) -> None:
        with pytest.raises(ConfigError):
            CompoundIndexerConfig(dim=DIM, **bad)

    def test_bad_effort_per_call_is_rejected(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        with pytest.raises(ConfigError, match="ef_search"):
            index.search(embeddings=QUERIES, top_k=3, index_type="hnsw", ef_search=0)

    def test_empty_shard_answers_every_type_with_nothing(self, tmp_path: Path) -> None:
        index = open_index(tmp_path, index_type="hnsw")
        for index_type in INDEX_TYPES:
            assert index.search(embeddings=QUERIES[:2], top_k=5, index_type=index_type) == [[], []]


class TestTooFewVectorsToTrain:
    def test_flat_answers_until_ivf_can_train_then_the_default_is_built(self, tmp_path: Path) -> None:
        index = open_index(tmp_path, index_type="ivf", ivf_nlist=64)
        index.apply(changes=upserts(VECTORS[:40]), checkpoint=b"1")
        assert not index.build("ivf")
        assert index.search(embeddings=VECTORS[:1], top_k=1)[0][0].score.op_name == "faiss.flat_ip"
        assert index.stats().index_types == ("flat",)
        index.apply(changes=upserts(VECTORS[40:100], start=40), checkpoint=b"2")
        assert index.stats().index_types == ("flat", "ivf")  # built by the write, not at a search
        assert index.search(embeddings=VECTORS[:1], top_k=1)[0][0].score.op_name == "faiss.ivf_flat_ip"

    def test_ivf_pq_waits_for_one_vector_per_code(self, tmp_path: Path) -> None:
        index = open_index(tmp_path, pq_bits=8)
        index.apply(changes=upserts(VECTORS[:200]), checkpoint=b"1")
        assert not index.build("ivf_pq")
        index.apply(changes=upserts(VECTORS[200:300], start=200), checkpoint=b"2")
        assert index.build("ivf_pq")
        assert index.search(embeddings=VECTORS[:1], top_k=1, index_type="ivf_pq")[0][0].score.op_name == "faiss.ivf_pq_ip"
