from pathlib import Path

import numpy as np
import pytest

from processors.document import Direction, Document
from processors.exceptions import ConfigError, DimensionMismatchError
from processors.index.base import Change
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from streams.serde import DOCUMENT

DIM = 8


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def doc_with_chunks(doc_id: str, seeds: list[int]) -> Document:
    return Document(id=doc_id, text=doc_id, chunks=[
        Document(id=f"{doc_id}/{i}", parent_id=doc_id, text=f"{doc_id} chunk {i}", embedding=unit(s))
        for i, s in enumerate(seeds)])


def open_index(path: Path, metric: str = "inner_product") -> CompoundIndexer:
    index = CompoundIndexer(CompoundIndexerConfig(dim=DIM, metric=metric), path=path, codec=DOCUMENT)  # type: ignore[arg-type]
    index.warm_up()
    return index


class TestCompoundIndexer:
    def test_upsert_search_returns_chunk_with_root(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2])), Change("b", doc_with_chunks("b", [3]))],
                    checkpoint=b"c1")
        hits = index.search(embeddings=unit(2)[None], top_k=1)[0]
        assert hits[0].root.id == "a" and hits[0].node.id == "a/1"
        assert hits[0].score.direction is Direction.SIMILARITY and hits[0].score.value == pytest.approx(1.0)
        assert hits[0].root.chunks[0].embedding is None  # stored without embeddings

    def test_resent_id_replaces_all_chunks_and_delete_removes(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2, 3]))], checkpoint=b"1")
        result = index.apply(changes=[Change("a", doc_with_chunks("a", [4]))], checkpoint=b"2")
        assert result.vectors_removed == 3 and result.vectors_added == 1
        assert index.stats().vectors == 1
        assert index.search(embeddings=unit(1)[None], top_k=5)[0][0].node.id == "a/0"
        index.apply(changes=[Change("a", None)], checkpoint=b"3")
        assert index.stats().vectors == 0 and index.get("a") is None

    def test_last_change_of_an_id_wins_within_a_batch(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1])), Change("a", None),
                             Change("a", doc_with_chunks("a", [2, 3]))], checkpoint=b"x")
        assert index.stats().vectors == 2 and index.stats().documents == 1

    def test_replaying_the_same_changes_gives_the_same_index(self, tmp_path: Path) -> None:
        changes = [Change("a", doc_with_chunks("a", [1, 2])), Change("b", doc_with_chunks("b", [3]))]
        index = open_index(tmp_path)
        index.apply(changes=changes, checkpoint=b"1")
        before = [[(h.node.id, h.score.value) for h in hs] for hs in index.search(embeddings=unit(5)[None], top_k=3)]
        index.apply(changes=changes, checkpoint=b"1")
        after = [[(h.node.id, h.score.value) for h in hs] for hs in index.search(embeddings=unit(5)[None], top_k=3)]
        assert before == after and index.stats().vectors == 3

    def test_reopen_restores_vectors_and_checkpoint(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2]))], checkpoint=b"offset=41")
        index.close()
        index.close()  # idempotent
        reopened = open_index(tmp_path)
        assert reopened.checkpoint() == b"offset=41"
        assert reopened.search(embeddings=unit(2)[None], top_k=1)[0][0].node.id == "a/1"
        reopened.apply(changes=[Change("c", doc_with_chunks("c", [9]))], checkpoint=b"offset=42")
        assert reopened.stats().vectors == 3  # new vector ids do not collide with restored ones

    def test_wrong_dimension_is_rejected_and_nothing_written(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        bad = Document(id="x", chunks=[Document(id="x/0", embedding=np.ones(DIM + 1, dtype=np.float32))])
        with pytest.raises(DimensionMismatchError, match="9 values"):
            index.apply(changes=[Change("ok", doc_with_chunks("ok", [1])), Change("x", bad)], checkpoint=b"bad")
        assert index.checkpoint() is None and index.stats().vectors == 0

    def test_l2_metric_is_a_distance(self, tmp_path: Path) -> None:
        index = open_index(tmp_path, metric="l2")
        index.apply(changes=[Change("a", doc_with_chunks("a", [1, 2]))], checkpoint=b"1")
        hits = index.search(embeddings=unit(1)[None], top_k=2)[0]
        assert hits[0].score.direction is Direction.DISTANCE
        assert hits[0].node.id == "a/0" and hits[0].score.value < hits[1].score.value

    def test_reopening_with_another_dimension_fails(self, tmp_path: Path) -> None:
        open_index(tmp_path).close()
        other = CompoundIndexer(CompoundIndexerConfig(dim=DIM * 2), path=tmp_path, codec=DOCUMENT)
        with pytest.raises(ConfigError, match="rebuild"):
            other.warm_up()


class TestFieldRestrictedSearch:
    @pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
    def test_only_the_named_fields_vectors_answer(self, tmp_path: Path, index_type: str) -> None:
        index = open_index(tmp_path)
        docs = []
        for i in range(300):
            docs.append(Document(id=f"d{i}", chunks=[
                Document(id=f"d{i}/title", field_name="title", embedding=unit(2 * i)),
                Document(id=f"d{i}/summary", field_name="summary", embedding=unit(2 * i + 1))]))
        index.apply(changes=[Change(d.id, d) for d in docs], checkpoint=b"1")
        query = unit(2 * 7 + 1)[None]  # exactly d7's summary vector
        extra = {"nprobe": 1000} if index_type == "ivf" else {}
        titles = index.search(embeddings=query, top_k=5, fields=["title"], index_type=index_type, **extra)[0]
        assert titles and all(hit.node.field_name == "title" for hit in titles)
        summaries = index.search(embeddings=query, top_k=5, fields=["summary"], index_type=index_type, **extra)[0]
        assert summaries[0].node.id == "d7/summary"
        assert index.search(embeddings=query, top_k=5, fields=["author"])[0] == []

    def test_field_of_each_vector_survives_reopen_and_replacement(self, tmp_path: Path) -> None:
        index = open_index(tmp_path)
        doc = Document(id="a", chunks=[Document(id="a/t", field_name="title", embedding=unit(1))])
        index.apply(changes=[Change("a", doc)], checkpoint=b"1")
        index.close()
        index = open_index(tmp_path)
        assert index.search(embeddings=unit(1)[None], top_k=1, fields=["title"])[0][0].node.id == "a/t"
        moved = Document(id="a", chunks=[Document(id="a/s", field_name="summary", embedding=unit(1))])
        index.apply(changes=[Change("a", moved)], checkpoint=b"2")
        assert index.search(embeddings=unit(1)[None], top_k=1, fields=["title"])[0] == []
        assert index.search(embeddings=unit(1)[None], top_k=1, fields=["summary"])[0][0].node.id == "a/s"
