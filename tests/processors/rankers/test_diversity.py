"""MMR with hand-computed cases: near-duplicates give way to a different document."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from processors.document import Direction, Document, Score
from processors.rankers.diversity import MMR_SCORE, diversify, mmr

COS = 0.99
"""The cosine between the near-duplicates a and b (and a and c: 0.98)."""


def unit(cosine: float) -> np.ndarray:
    """A 2-d unit vector at this cosine from (1, 0)."""
    return np.array([cosine, math.sqrt(1 - cosine**2)])


def match(doc_id: str, score: float, vector: np.ndarray | None, direction: Direction = Direction.SIMILARITY) -> Document:
    return Document(id=doc_id, embedding=vector, scores={"score": Score(score, "test", direction)})


# Three near-duplicates (a, b, c) and one different document (d), relevance 1.0, 0.9, 0.8, 0.5:
# min-max rel a=1, b=0.8, c=0.6, d=0; cos(a,b)=0.99, cos(a,c)=0.98, cos(a,d)=0, cos(b,d)=sqrt(1-0.99²).
NEAR_DUPLICATES = [match("a", 1.0, unit(1.0)), match("b", 0.9, unit(COS)), match("c", 0.8, unit(0.98)),
                   match("d", 0.5, np.array([0.0, 1.0]))]


class TestMMR:
    def test_half_lambda_picks_the_different_document_second(self) -> None:
        picked = diversify(NEAR_DUPLICATES, diversity=0.5)
        assert [m.id for m in picked] == ["a", "d", "b", "c"]
        # a: 0.5*1 - 0 (nothing picked yet); d: 0.5*0 - 0.5*cos(d,a)=0; b: 0.5*0.8 - 0.5*cos(b,a)=0.99;
        # c: 0.5*0.6 - 0.5*cos(c,b), its nearest picked one
        cos_cb = 0.98 * COS + math.sqrt(1 - 0.98**2) * math.sqrt(1 - COS**2)
        assert [m.scores[MMR_SCORE].value for m in picked] == pytest.approx([0.5, 0.0, 0.4 - 0.495, 0.3 - 0.5 * cos_cb])
        assert picked[0].scores["score"].value == 1.0  # the relevance score is kept

    def test_lambda_one_is_the_relevance_order_and_top_k_cuts(self) -> None:
        assert [m.id for m in diversify(NEAR_DUPLICATES, diversity=1.0, picks=3)] == ["a", "b", "c"]

    def test_lambda_zero_picks_the_most_relevant_first_then_the_least_similar(self) -> None:
        # first pick: all objectives 0, the tie goes to relevance; then d (cos 0 to a), then the one least
        # similar to both a and d: c (max(0.98, 0.199) < b's max(0.99, 0.141))
        assert [m.id for m in diversify(NEAR_DUPLICATES, diversity=0.0)] == ["a", "d", "c", "b"]

    def test_distances_are_flipped(self) -> None:
        flipped = [match(m.id, 2.0 - m.scores["score"].value, m.embedding, Direction.DISTANCE) for m in NEAR_DUPLICATES]
        assert [m.id for m in diversify(flipped, diversity=0.5)] == ["a", "d", "b", "c"]

    def test_equal_objectives_go_to_relevance_then_id_whatever_the_input_order(self) -> None:
        same = np.array([1.0, 0.0])
        docs = [match(doc_id, 1.0, same) for doc_id in ("e", "b", "d", "a", "c")] + [match("z", 2.0, same)]
        for seed in range(5):
            shuffled = random.Random(seed).sample(docs, len(docs))
            assert [m.id for m in diversify(shuffled, diversity=0.3)] == ["z", "a", "b", "c", "d", "e"]

    def test_a_candidate_without_a_vector_is_similar_to_nothing(self) -> None:
        docs = [match("a", 1.0, unit(1.0)), match("b", 0.9, unit(COS)), match("x", 0.6, None)]
        # rel a=1, b=0.75, x=0; second pick: b 0.375 - 0.495 < x 0 - 0
        assert [m.id for m in diversify(docs, diversity=0.5)] == ["a", "x", "b"]

    def test_vectors_of_any_norm_compare_by_cosine(self) -> None:
        scaled = [match(m.id, m.scores["score"].value, 7.5 * m.embedding) for m in NEAR_DUPLICATES]
        assert [m.id for m in diversify(scaled, diversity=0.5)] == ["a", "d", "b", "c"]

    def test_sources_give_scores_and_vectors_the_matches_lost(self) -> None:
        bare = [Document(id=m.id) for m in NEAR_DUPLICATES]
        picked = diversify(bare, diversity=0.5, sources=NEAR_DUPLICATES)
        assert [m.id for m in picked] == ["a", "d", "b", "c"] and picked[0].embedding is None

    def test_the_pure_function_gives_indices_and_objectives(self) -> None:
        order = mmr([3.0, 3.0], [np.array([1.0, 0.0]), np.array([-1.0, 0.0])], ["q", "p"], diversity=0.5, picks=5)
        # both rel 1: p first by id; then q: 0.5 - 0.5 * cos = 0.5 + 0.5 (opposite vectors: cosine -1)
        assert order == [(1, 0.5), (0, 1.0)]
        assert mmr([], [], [], diversity=0.5) == []
