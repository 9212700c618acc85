"""Grouping and MMR diversity at the joiner, over the merged (or fused) candidates of every shard: the shard
count does not show, a near-duplicate gives way, the vectors never reach the client."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from processors.document import Direction, Document, Score
from processors.rankers.diversity import MMR_SCORE
from processors.rankers.fusion import DENSE_ARM, LEXICAL_ARM
from processors.rankers.grouping import GROUP_RANK
from streams.runtime.spec import Inbound
from streams.stages.join import Joiner
from streams.wire import headers as h
from streams.wire.codec import PARTIAL_RESULT, SEARCH_REPLY
from streams.wire.records import PartialResult, SearchReply


def candidate(doc_id: str, score: float, *, author: object = None, angle: float | None = None,
              arms: dict[str, Score] | None = None) -> Document:
    """A shard's match: its score, an ``author`` tag, and (for diversity) the vector at ``angle`` degrees."""
    vector = None if angle is None else np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))],
                                                 dtype=np.float32)
    return Document(id=doc_id, tags={} if author is None else {"author": author}, embedding=vector,
                    scores={"score": Score(score, "chunk2doc.max(faiss.flat_ip)", Direction.SIMILARITY), **(arms or {})})


def join(shards: list[list[Document]], parameters: dict) -> SearchReply:
    """The reply a joiner gives to these shards' parts (each shard's list as it sends it: best first, cut at
    the request's depth, as the shard would)."""
    deadline_ms = int(time.time() * 1000) + 60_000
    ids = list(range(len(shards)))
    parts = [PartialResult("r", -1, ids, "replies", deadline_ms, parameters, [Document(id="q0", text="q")])]
    parts += [PartialResult("r", shard, ids, "replies", deadline_ms, parameters,
                            [Document(id="q0", text="q", matches=matches)]) for shard, matches in enumerate(shards)]
    records = [Inbound("f.partials", 0, i, b"r", PARTIAL_RESULT.encode(part), {h.DEADLINE_MS: str(deadline_ms).encode()})
               for i, part in enumerate(parts)]
    (output,) = Joiner().process(records)
    assert output.value is not None
    return SEARCH_REPLY.decode(output.value)


def split(docs: list[Document], shards: int, depth: int) -> list[list[Document]]:
    """The corpus spread over shards, each shard sending its best ``depth``."""
    lists = [[d for i, d in enumerate(docs) if i % shards == shard] for shard in range(shards)]
    return [sorted(matches, key=lambda d: (-d.scores["score"].value, d.id))[:depth] for matches in lists]


def answer(reply: SearchReply) -> list[tuple[str, object, float | None]]:
    assert not reply.errors and not reply.partial, reply
    return [(m.id, m.tags.get("author"), m.scores[GROUP_RANK].value if GROUP_RANK in m.scores else None)
            for m in reply.docs[0].matches]


BOOKS = [candidate("ann-1", 0.95, author="ann"), candidate("bob-1", 0.93, author="bob"),
         candidate("ann-2", 0.91, author="ann"), candidate("ann-3", 0.90, author="ann"),
         candidate("cy-1", 0.80, author="cy"), candidate("bob-2", 0.70, author="bob"),
         candidate("anon", 0.99), candidate("flag", 0.98, author=True), candidate("dee-1", 0.60, author=7)]


class TestGrouping:
    @pytest.mark.parametrize("shards", [1, 3])
    def test_top_k_groups_each_with_its_best_documents_whatever_the_shards(self, shards: int) -> None:
        params = {"top_k": 3, "group_by": "author", "group_size": 2, "candidates": 20}
        reply = join(split(BOOKS, shards, 20), params)
        assert answer(reply) == [("ann-1", "ann", 1.0), ("ann-2", "ann", 1.0), ("bob-1", "bob", 2.0),
                                 ("bob-2", "bob", 2.0), ("cy-1", "cy", 3.0)]
        assert reply.warnings == []

    def test_an_integer_value_groups_and_documents_without_a_string_or_integer_are_left_out(self) -> None:
        reply = join([BOOKS], {"top_k": 10, "group_by": "author", "group_size": 1})
        assert [(doc_id, author) for doc_id, author, _ in answer(reply)] == [
            ("ann-1", "ann"), ("bob-1", "bob"), ("cy-1", "cy"), ("dee-1", 7)]

    def test_fewer_groups_than_top_k_while_a_shard_cut_its_list_says_more_may_exist(self) -> None:
        params = {"top_k": 3, "group_by": "author", "group_size": 2, "candidates": 4}  # depth: max(6, 4)
        reply = join(split(BOOKS, 1, 6), params)
        assert [author for _, author, _ in answer(reply)] == ["ann", "ann", "bob"]
        assert reply.warnings == [("join: grouping by 'author' filled 2 of top_k=3 groups for q0 from 6 candidates; "
                                   "a shard cut its list at 6 (top_k × group_size), so more may exist: raise candidates")]
        assert join(split(BOOKS, 1, 20), {**params, "top_k": 5}).warnings == []  # all sent: no more to find

    def test_a_join_stage_filter_runs_before_grouping_and_select_does_not_blind_it(self) -> None:
        params = {"top_k": 2, "group_by": "author", "candidates": 20, "query_language": [
            {"operator": "filter", "traversal_paths": ["m"], "parameters": {"conditions": {"id__neq": "ann-1"}}},
            {"operator": "select", "traversal_paths": ["m"], "parameters": {"fields": ["id"]}}]}
        reply = join([BOOKS], params)
        assert [(doc_id, author) for doc_id, author, _ in answer(reply)] == [("bob-1", "bob"), ("ann-2", "ann")]


# Relevance 1.0, 0.9, 0.8 for three near-duplicates (2 and 4 degrees apart), 0.5 for a different document.
NEAR_DUPLICATES = [candidate("a", 1.0, angle=0), candidate("b", 0.9, angle=2), candidate("c", 0.8, angle=4),
                   candidate("d", 0.5, angle=90)]


class TestDiversity:
    @pytest.mark.parametrize("shards", [1, 2])
    def test_a_near_duplicate_gives_way_to_a_different_document(self, shards: int) -> None:
        reply = join(split(NEAR_DUPLICATES, shards, 10), {"top_k": 2, "diversity": 0.5, "candidates": 10})
        assert [m.id for m in reply.docs[0].matches] == ["a", "d"]
        assert all(m.embedding is None for m in reply.docs[0].matches)  # the vectors stay between the stages
        assert reply.docs[0].matches[1].scores[MMR_SCORE].value == pytest.approx(0.0)
        plain = join(split(NEAR_DUPLICATES, shards, 2), {"top_k": 2})
        assert [m.id for m in plain.docs[0].matches] == ["a", "b"]

    def test_lambda_one_keeps_the_relevance_order(self) -> None:
        reply = join([NEAR_DUPLICATES], {"top_k": 3, "diversity": 1.0})
        assert [m.id for m in reply.docs[0].matches] == ["a", "b", "c"]

    def test_diversity_runs_after_fusion(self) -> None:
        """A lexical-only match brings its own vector: MMR compares it with the dense ones."""
        def arms(dense: float | None, lexical: float | None) -> dict[str, Score]:
            scores = {}
            if dense is not None:
                scores[DENSE_ARM] = Score(dense, "faiss.flat_ip", Direction.SIMILARITY)
            if lexical is not None:
                scores[LEXICAL_ARM] = Score(lexical, "bm25", Direction.SIMILARITY)
            return scores

        docs = [candidate("a", 0.9, angle=0, arms=arms(0.9, 5.0)), candidate("b", 0.8, angle=1, arms=arms(0.8, 4.0)),
                candidate("lex", 3.0, angle=90, arms=arms(None, 3.0))]
        params = {"top_k": 2, "retrieval": "hybrid", "fusion": "rrf", "candidates": 10}
        # rrf: a 2/61, b 2/62, lex 1/63 -> rel 1, 0.969, 0; second pick: b 0.484 - 0.5 cos 1° < lex 0 - 0.5 cos 90°
        assert [m.id for m in join([docs], params).docs[0].matches] == ["a", "b"]
        diverse = join([docs], {**params, "diversity": 0.5}).docs[0].matches
        assert [m.id for m in diverse] == ["a", "lex"] and diverse[0].scores["score"].op_name == "fusion.rrf"

    def test_diversity_then_grouping_orders_groups_by_the_mmr_order(self) -> None:
        docs = [candidate("a", 1.0, author="x", angle=0), candidate("b", 0.9, author="y", angle=1),
                candidate("c", 0.5, author="z", angle=90), candidate("a2", 0.8, author="x", angle=45)]
        reply = join([docs], {"top_k": 2, "group_by": "author", "diversity": 0.5, "candidates": 10})
        # MMR order a, c, a2, b: the groups x (a) and z (c); a2 is x's second best but group_size is 1
        assert answer(reply) == [("a", "x", 1.0), ("c", "z", 2.0)]
