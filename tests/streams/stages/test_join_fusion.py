"""The joiner fuses a hybrid search's arms over every shard's candidates, so the shard count does not change the reply."""

from __future__ import annotations

import random
import time

import pytest

from processors.document import Direction, Document, Score
from processors.query.parameters import FUSIONS
from processors.rankers.fusion import DENSE_ARM, LEXICAL_ARM
from streams.runtime.spec import Inbound
from streams.stages.join import Joiner
from streams.wire import headers as h
from streams.wire.codec import PARTIAL_RESULT, SEARCH_REPLY
from streams.wire.records import PartialResult, SearchReply

Corpus = dict[str, dict[str, Score]]
"""Document id -> its arm scores for the one query."""


def corpus(size: int, seed: int) -> Corpus:
    """Dense L2 distances and BM25 scores, rounded so that ties occur, some documents in one arm only."""
    rng = random.Random(seed)
    docs: Corpus = {}
    for i in range(size):
        scores = {}
        if i % 5 != 1:
            scores[DENSE_ARM] = Score(round(rng.uniform(0.2, 1.4), 1), "faiss.l2", Direction.DISTANCE)
        if i % 5 != 2:
            scores[LEXICAL_ARM] = Score(round(rng.uniform(0.0, 12.0), 1), "bm25", Direction.SIMILARITY)
        docs[f"doc-{i:03d}"] = scores
    return docs


def shard_matches(docs: Corpus, depth: int) -> list[Document]:
    """What a shard sends for a hybrid search: the union of its arms' top ``depth``, each document once with
    its arm scores (those of the arms whose top list it is in) and one of them as ``score``."""
    kept: dict[str, dict[str, Score]] = {}
    for arm in (DENSE_ARM, LEXICAL_ARM):
        ranked = sorted((s[arm].sort_key(), doc_id) for doc_id, s in docs.items() if arm in s)
        for _, doc_id in ranked[:depth]:
            kept.setdefault(doc_id, {})[arm] = docs[doc_id][arm]
    return [Document(id=doc_id, scores={**scores, "score": next(iter(scores.values()))})
            for doc_id, scores in kept.items()]


def search(shards: list[Corpus], parameters: dict) -> SearchReply:
    """The reply a joiner gives to the parts of ``shards`` (and the opening part), for one query."""
    deadline_ms = int(time.time() * 1000) + 60_000
    depth = max(parameters.get("top_k", 10), parameters.get("candidates", 100))
    ids = list(range(len(shards)))
    parts = [PartialResult("r", -1, ids, "replies", deadline_ms, parameters, [Document(id="q0", text="q")])]
    parts += [PartialResult("r", shard, ids, "replies", deadline_ms, parameters,
                            [Document(id="q0", text="q", matches=shard_matches(docs, depth))])
              for shard, docs in enumerate(shards)]
    records = [Inbound("f.partials", 0, i, b"r", PARTIAL_RESULT.encode(part), {h.DEADLINE_MS: str(deadline_ms).encode()})
               for i, part in enumerate(parts)]
    (output,) = Joiner().process(records)
    assert output.value is not None
    return SEARCH_REPLY.decode(output.value)


def answer(reply: SearchReply) -> list[tuple[str, list[tuple[str, float, str, str]]]]:
    """Each match's id and every score it carries."""
    return [(m.id, sorted((name, s.value, s.op_name, s.direction.value) for name, s in m.scores.items()))
            for m in reply.docs[0].matches]


def split(docs: Corpus, shards: int) -> list[Corpus]:
    return [{doc_id: s for i, (doc_id, s) in enumerate(docs.items()) if i % shards == shard} for shard in range(shards)]


class TestHybridJoin:
    @pytest.mark.parametrize("fusion", FUSIONS)
    def test_one_shard_or_four_give_the_same_fused_reply(self, fusion: str) -> None:
        docs = corpus(60, seed=3)
        parameters = {"top_k": 8, "retrieval": "hybrid", "fusion": fusion, "candidates": 12, "dense_weight": 0.4}
        one, four = search([docs], parameters), search(split(docs, 4), parameters)
        assert not one.errors and not four.errors
        assert len(one.docs[0].matches) == 8
        assert answer(four) == answer(one)
        assert {m.scores["score"].op_name for m in one.docs[0].matches} == {f"fusion.{fusion}"}

    def test_a_document_both_arms_like_beats_each_arms_winner_under_rrf(self) -> None:
        dense = Score(0.1, "faiss.l2", Direction.DISTANCE)
        shards = [{"dense-top": {DENSE_ARM: dense}},
                  {"lexical-top": {LEXICAL_ARM: Score(9.0, "bm25", Direction.SIMILARITY)}},
                  {"both": {DENSE_ARM: Score(0.2, "faiss.l2", Direction.DISTANCE),
                            LEXICAL_ARM: Score(8.0, "bm25", Direction.SIMILARITY)}}]
        reply = search(shards, {"top_k": 3, "retrieval": "hybrid", "fusion": "rrf"})
        assert [m.id for m in reply.docs[0].matches] == ["both", "dense-top", "lexical-top"]
        assert [m.scores["score"].value for m in reply.docs[0].matches] == pytest.approx([2 / 62, 1 / 61, 1 / 61])

    def test_a_document_two_shards_send_while_its_partition_moves_counts_once(self) -> None:
        docs = corpus(30, seed=5)
        parameters = {"top_k": 6, "retrieval": "hybrid", "fusion": "dbsf", "candidates": 10}
        shards = split(docs, 3)
        moving = dict(shards[0])
        shards[1].update(moving)  # shard 0's partition is answered by its old and its new owner
        assert answer(search(shards, parameters)) == answer(search(split(docs, 3), parameters))
