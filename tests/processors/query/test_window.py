"""The index stage's window: widened until top_k documents pass, bounded, never silently short."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from processors.document import Document
from processors.exceptions import ConfigError
from processors.index.base import Change
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from processors.query.operators import Operation
from processors.query.window import MAX_WINDOW_VECTORS, WindowedSearch, WindowedSearchConfig, WindowResult
from processors.rankers.chunk2doc import Chunk2DocRanker, Chunk2DocRankerConfig
from streams.wire.codec import STORED_DOCUMENT

DIM = 16
QUERY = np.eye(DIM, dtype=np.float32)[0]


def near(seed: int, distance: float) -> np.ndarray:
    """A unit vector about ``distance`` away from the query, deterministic per seed."""
    noise = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    noise[0] = 0
    vector = QUERY + distance * noise / np.linalg.norm(noise)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def tagged(doc_id: str, lang: str, vectors: list[np.ndarray]) -> Document:
    return Document(id=doc_id, text=doc_id, tags={"lang": lang}, chunks=[
        Document(id=f"{doc_id}/{i}", parent_id=doc_id, text=f"{doc_id} {i}", embedding=vector)
        for i, vector in enumerate(vectors)])


def only(lang: str) -> Operation:
    return Operation("filter", {"conditions": {"tags.lang": lang}}, traversal_paths=("m",))


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[CompoundIndexer]:
    """60 English documents close to the query, 2 German ones farther away."""
    index = CompoundIndexer(CompoundIndexerConfig(dim=DIM), path=tmp_path, codec=STORED_DOCUMENT)  # type: ignore[arg-type]
    index.warm_up()
    english = [Change(f"en{i:02}", tagged(f"en{i:02}", "en", [near(i, 0.1 + i / 1000)])) for i in range(60)]
    german = [Change(f"de{i}", tagged(f"de{i}", "de", [near(100 + i, 0.9)])) for i in range(2)]
    index.apply(changes=english + german, checkpoint=b"1")
    yield index
    index.close()


def search(index: CompoundIndexer, *, top_k: int = 3, operations: tuple[Operation, ...] = (),
           max_vectors: int = MAX_WINDOW_VECTORS, queries: int = 1) -> WindowResult:
    window = WindowedSearch(WindowedSearchConfig(max_vectors=max_vectors), ranker=Chunk2DocRanker())
    docs = [Document(id=f"q{i}", text="q", embedding=QUERY) for i in range(queries)]
    return window.run(index=index, queries=docs, top_k=top_k, chunk_oversample=5, operations=operations)


class TestWindowedSearch:
    def test_a_tag_filter_widens_until_the_shard_is_exhausted(self, shard: CompoundIndexer) -> None:
        # The first window (3 x 5 = 15 vectors) holds only English documents.
        first = shard.search(embeddings=QUERY[None], top_k=15)[0]
        assert {hit.root.tags["lang"] for hit in first} == {"en"}
        result = search(shard, operations=(only("de"),))
        assert [m.id for m in result.docs[0].matches] == ["de0", "de1"]  # equal scores: by id
        assert result.limited == () and result.vectors_read == 15 + 30 + 60 + 62

    def test_widening_stops_as_soon_as_top_k_pass(self, shard: CompoundIndexer) -> None:
        result = search(shard, top_k=1, operations=(only("de"),))
        assert [m.id for m in result.docs[0].matches] == ["de0"]
        assert result.vectors_read == 5 + 10 + 20 + 40 + 62  # 80 > 62: the last round reads the shard whole
        english = search(shard, operations=(only("en"),))
        assert len(english.docs[0].matches) == 3 and english.vectors_read == 15

    def test_the_passing_documents_are_the_best_of_the_whole_shard(self, shard: CompoundIndexer) -> None:
        widened = search(shard, top_k=1, operations=(only("de"),)).docs[0].matches
        exhaustive = search(shard, top_k=62).docs[0].matches
        assert [m.id for m in widened] == [next(m.id for m in exhaustive if m.tags["lang"] == "de")]
        assert widened[0].scores["score"] == next(m for m in exhaustive if m.id == widened[0].id).scores["score"]

    def test_the_limit_stops_widening_and_says_which_queries(self, shard: CompoundIndexer) -> None:
        result = search(shard, operations=(only("de"),), max_vectors=50, queries=2)
        # Round one reads 2 x 15; a second round of 2 x 30 would pass 50 vectors.
        assert result.limited == ("q0", "q1") and result.vectors_read == 30
        assert [doc.matches for doc in result.docs] == [[], []]

    def test_the_first_window_is_read_whatever_the_limit(self, shard: CompoundIndexer) -> None:
        result = search(shard, top_k=3, max_vectors=1)
        assert len(result.docs[0].matches) == 3 and result.limited == ()

    def test_no_filter_widens_for_documents_with_many_chunks(self, tmp_path: Path) -> None:
        index = CompoundIndexer(CompoundIndexerConfig(dim=DIM), path=tmp_path, codec=STORED_DOCUMENT)  # type: ignore[arg-type]
        index.warm_up()
        # "long" has 20 chunks nearer the query than any other document.
        changes = [Change("long", tagged("long", "en", [near(i, 0.05) for i in range(20)]))]
        changes += [Change(f"d{i}", tagged(f"d{i}", "en", [near(50 + i, 0.5)])) for i in range(5)]
        index.apply(changes=changes, checkpoint=b"1")
        matches = search(index, top_k=3).docs[0].matches
        assert len(matches) == 3 and matches[0].id == "long"
        index.close()

    def test_ties_at_the_cut_do_not_depend_on_insertion_order(self, tmp_path: Path) -> None:
        """21 documents share one vector, the German one last by id: each window keeps the
        first by id, so widening reaches it in the same rounds whatever the write order."""
        answers = []
        for order in (range(20), reversed(range(20))):
            index = CompoundIndexer(CompoundIndexerConfig(dim=DIM), path=tmp_path / str(len(answers)),
                                    codec=STORED_DOCUMENT)  # type: ignore[arg-type]
            index.warm_up()
            changes = [Change(f"en{i:02}", tagged(f"en{i:02}", "en", [near(0, 0.2)])) for i in order]
            changes += [Change("zz-de", tagged("zz-de", "de", [near(0, 0.2)]))]
            index.apply(changes=changes, checkpoint=b"1")
            result = search(index, top_k=2, operations=(only("de"),))
            answers.append(([m.id for m in result.docs[0].matches], result.vectors_read))
            index.close()
        assert answers[0] == answers[1] == (["zz-de"], 10 + 20 + 21)

    def test_a_bad_limit_is_refused(self) -> None:
        with pytest.raises(ConfigError):
            WindowedSearchConfig(max_vectors=0)

    def test_keep_chunks_and_scores_survive_the_operations(self, shard: CompoundIndexer) -> None:
        ranker = Chunk2DocRanker(Chunk2DocRankerConfig(keep_chunks=1))
        result = WindowedSearch(ranker=ranker).run(
            index=shard, queries=[Document(id="q0", embedding=QUERY)], top_k=3, chunk_oversample=1,
            operations=(only("de"),))
        assert all(len(m.chunks) == 1 and "score" in m.scores for m in result.docs[0].matches)
        assert result.docs[0].embedding is None


def test_without_operations_only_the_top_k_documents_are_read_of_the_window(shard: CompoundIndexer,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The window reads top_k × chunk_oversample vectors; their owners rank them, and only the documents kept are
    read from the store (``Hit.deferred``): the same answer as reading every one, at a fifth of the reads."""
    read: list[str] = []
    store_read = shard._store.document

    def counted(doc_id: str) -> Document | None:
        read.append(doc_id)
        return store_read(doc_id)

    monkeypatch.setattr(shard._store, "document", counted)
    result = search(shard, top_k=3)
    assert result.vectors_read == 15
    assert [m.id for m in result.docs[0].matches] == ["en00", "en01", "en02"]
    assert sorted(read) == ["en00", "en01", "en02"]
    read.clear()
    filtered = search(shard, top_k=3, operations=(only("en"),))  # a filter needs every document the window found
    assert [m.id for m in filtered.docs[0].matches] == ["en00", "en01", "en02"]
    assert len(read) == 15
