import itertools
import random

import numpy as np
import pytest

from processors.document import Direction, Document, Score
from processors.exceptions import ConfigError
from processors.index.base import Hit
from processors.rankers.chunk2doc import Chunk2DocRanker, Chunk2DocRankerConfig
from processors.rankers.merge import merge_matches


def hit(root_id: str, chunk: int, value: float, direction: Direction) -> Hit:
    score = Score(value, "op", direction)
    return Hit(root=Document(id=root_id), node=Document(id=f"{root_id}/{chunk}", scores={"score": score}), score=score)


SIM = Direction.SIMILARITY
DIST = Direction.DISTANCE


class TestChunk2DocRanker:
    @pytest.mark.parametrize(("aggregation", "expected"), [("max", 0.9), ("min", 0.1), ("mean", 0.5)])
    def test_aggregations(self, aggregation: str, expected: float) -> None:
        ranker = Chunk2DocRanker(Chunk2DocRankerConfig(aggregation=aggregation))  # type: ignore[arg-type]
        matches = ranker.run(hits=[[hit("a", 0, 0.1, SIM), hit("a", 1, 0.9, SIM), hit("a", 2, 0.5, SIM)]], top_k=5).matches
        assert matches[0][0].scores["score"].value == pytest.approx(expected)
        assert matches[0][0].scores["score"].op_name == f"chunk2doc.{aggregation}(op)"

    def test_similarity_sorts_descending_and_keeps_best_chunk_first(self) -> None:
        ranker = Chunk2DocRanker()
        hits = [hit("a", 0, 0.2, SIM), hit("b", 0, 0.8, SIM), hit("a", 1, 0.6, SIM)]
        matches = ranker.run(hits=[hits], top_k=5).matches[0]
        assert [m.id for m in matches] == ["b", "a"]
        assert [c.id for c in matches[1].chunks] == ["a/1", "a/0"]

    def test_distance_sorts_ascending(self) -> None:
        ranker = Chunk2DocRanker(Chunk2DocRankerConfig(aggregation="min"))
        hits = [hit("a", 0, 0.2, DIST), hit("b", 0, 0.8, DIST), hit("a", 1, 0.6, DIST)]
        matches = ranker.run(hits=[hits], top_k=5).matches[0]
        assert [m.id for m in matches] == ["a", "b"]
        assert matches[0].chunks[0].id == "a/0"

    def test_top_k_cuts_documents_not_chunks(self) -> None:
        hits = [hit("a", i, 0.9 - i / 100, SIM) for i in range(5)] + [hit("b", 0, 0.5, SIM)]
        matches = Chunk2DocRanker().run(hits=[hits], top_k=2).matches[0]
        assert [m.id for m in matches] == ["a", "b"]

    def test_a_match_carries_its_best_chunks_vector_and_the_chunks_none(self) -> None:
        def with_vector(h: Hit, value: float) -> Hit:
            return Hit(root=h.root, node=Document(id=h.node.id, scores=h.node.scores, embedding=np.full(2, value)),
                       score=h.score)

        hits = [with_vector(hit("a", 0, 0.2, SIM), 0.0), with_vector(hit("a", 1, 0.6, SIM), 1.0)]
        [match] = Chunk2DocRanker().run(hits=[hits], top_k=5).matches[0]
        assert match.embedding is not None and match.embedding.tolist() == [1.0, 1.0]
        assert [c.id for c in match.chunks] == ["a/1", "a/0"] and all(c.embedding is None for c in match.chunks)
        assert Chunk2DocRanker().run(hits=[[hit("b", 0, 0.5, SIM)]], top_k=1).matches[0][0].embedding is None

    def test_bad_aggregation(self) -> None:
        with pytest.raises(ConfigError, match="aggregation"):
            Chunk2DocRankerConfig(aggregation="median")  # type: ignore[arg-type]


class TestMerge:
    def test_merge_respects_direction_and_dedupes(self) -> None:
        def match(doc_id: str, value: float, direction: Direction) -> Document:
            return Document(id=doc_id, scores={"score": Score(value, "op", direction)})

        shard0 = [match("a", 0.9, SIM), match("c", 0.3, SIM)]
        shard1 = [match("b", 0.7, SIM), match("a", 0.8, SIM)]
        assert [m.id for m in merge_matches([shard0, shard1], 2)] == ["a", "b"]
        merged = merge_matches([[match("a", 0.9, DIST)], [match("b", 0.2, DIST)]], 5)
        assert [m.id for m in merged] == ["b", "a"]


class TestAggregationsAcrossDirections:
    def test_sum_and_inverse(self) -> None:
        hits = [hit("a", 0, 0.5, DIST), hit("a", 1, 1.5, DIST), hit("b", 0, 0.2, DIST)]
        summed = Chunk2DocRanker(Chunk2DocRankerConfig(aggregation="sum")).run(hits=[hits], top_k=5).matches[0]
        assert {m.id: m.scores["score"].value for m in summed} == {"a": 2.0, "b": 0.2}
        assert [m.id for m in summed] == ["b", "a"]  # a distance: smaller first
        inverse = Chunk2DocRanker(Chunk2DocRankerConfig(aggregation="inverse")).run(hits=[hits], top_k=5).matches[0]
        assert [m.id for m in inverse] == ["b", "a"]
        assert inverse[0].scores["score"].direction is SIM
        assert inverse[0].scores["score"].value == pytest.approx(1 / 1.2)

    def test_inverse_of_similarities_is_refused(self) -> None:
        ranker = Chunk2DocRanker(Chunk2DocRankerConfig(aggregation="inverse"))
        with pytest.raises(ConfigError, match="inverse"):
            ranker.run(hits=[[hit("a", 0, 0.5, SIM)]], top_k=1)


class TestEqualScores:
    """Equal scores order by document id, whatever order the hits or the shards' lists came in."""

    @pytest.mark.parametrize(("direction", "aggregation"), [(SIM, "max"), (DIST, "min")])
    def test_ranker_orders_ties_by_id_and_cuts_the_same_documents(self, direction: Direction, aggregation: str) -> None:
        ranker = Chunk2DocRanker(Chunk2DocRankerConfig(aggregation=aggregation))  # type: ignore[arg-type]
        better = 0.9 if direction is SIM else 0.1
        hits = [hit(doc_id, 0, 0.5, direction) for doc_id in ["d", "b", "e", "a", "c"]]
        hits.append(hit("z", 0, better, direction))
        answers = set()
        for seed in range(6):
            shuffled = list(hits)
            random.Random(seed).shuffle(shuffled)
            answers.add(tuple(m.id for m in ranker.run(hits=[shuffled], top_k=4).matches[0]))
        assert answers == {("z", "a", "b", "c")}

    def test_ranker_orders_tied_chunks_by_node_id(self) -> None:
        hits = [hit("a", chunk, 0.5, SIM) for chunk in (2, 0, 1)]
        assert [c.id for c in Chunk2DocRanker().run(hits=[hits], top_k=1).matches[0][0].chunks] == ["a/0", "a/1", "a/2"]

    @pytest.mark.parametrize("direction", [SIM, DIST])
    def test_merge_orders_ties_across_shards_by_id(self, direction: Direction) -> None:
        def match(doc_id: str) -> Document:
            return Document(id=doc_id, scores={"score": Score(0.5, "op", direction)})

        shards = [[match("d"), match("a")], [match("c")], [match("b"), match("e")]]
        answers = {tuple(m.id for m in merge_matches(order, 3)) for order in itertools.permutations(shards)}
        assert answers == {("a", "b", "c")}


class TestDeferredHits:
    """A shard's hits read their documents when asked (``Hit.deferred``): the ranker reads those it keeps only."""

    @staticmethod
    def _deferred(root_id: str, chunk: int, value: float, reads: list[str], *, gone: bool = False) -> Hit:
        eager = hit(root_id, chunk, value, SIM)

        def read() -> tuple[Document, Document] | None:
            reads.append(f"{root_id}/{chunk}")
            return None if gone else (eager.root, eager.node)

        return Hit.deferred(root_id, eager.score, read)

    def test_only_the_kept_documents_are_read_and_ranked_as_if_all_were(self) -> None:
        reads: list[str] = []
        values = {"a": [0.9, 0.1], "b": [0.5], "c": [0.7, 0.6], "d": [0.3], "e": [0.8]}
        deferred = [self._deferred(doc, i, v, reads) for doc, vs in values.items() for i, v in enumerate(vs)]
        eager = [hit(doc, i, v, SIM) for doc, vs in values.items() for i, v in enumerate(vs)]
        ranker = Chunk2DocRanker(Chunk2DocRankerConfig(aggregation="mean"))
        kept = ranker.run(hits=[deferred], top_k=2).matches[0]
        assert kept == ranker.run(hits=[eager], top_k=5).matches[0][:2]
        assert [m.id for m in kept] == ["e", "c"]
        assert sorted(reads) == ["c/0", "c/1", "e/0"]  # nothing of a, b or d

    def test_a_document_gone_from_the_store_is_passed_over_for_the_next(self) -> None:
        reads: list[str] = []
        hits = [self._deferred("a", 0, 0.9, reads, gone=True), self._deferred("b", 0, 0.8, reads),
                self._deferred("c", 0, 0.7, reads)]
        assert [m.id for m in Chunk2DocRanker().run(hits=[hits], top_k=2).matches[0]] == ["b", "c"]
        assert reads == ["a/0", "b/0", "c/0"]
        assert not hits[0].held
        with pytest.raises(LookupError, match="'a'"):
            _ = hits[0].root

    def test_a_hit_reads_its_document_once(self) -> None:
        reads: list[str] = []
        deferred = self._deferred("a", 0, 0.9, reads)
        assert deferred.doc_id == "a" and reads == []
        assert deferred.root.id == "a" and deferred.node.id == "a/0" and deferred.held
        assert reads == ["a/0"]
