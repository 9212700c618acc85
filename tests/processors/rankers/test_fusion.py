"""Fusion of a hybrid search's dense and lexical lists, on small hand-computed cases."""

import math
import random

import pytest

from processors.document import Direction, Document, Score
from processors.exceptions import ConfigError
from processors.query.parameters import FUSIONS, SearchParameters
from processors.rankers.fusion import (
    _FUSERS,
    DENSE_ARM,
    LEXICAL_ARM,
    FusionConfig,
    arm_lists,
    fuse,
    merge_candidates,
    rank_name,
)

SIM = Direction.SIMILARITY
DIST = Direction.DISTANCE


def candidate(doc_id: str, dense: float | None = None, lexical: float | None = None,
              dense_direction: Direction = SIM) -> Document:
    """A match as a shard sends it: its arm scores, and a ``score`` that is one of them (to be replaced)."""
    scores = {}
    if dense is not None:
        scores[DENSE_ARM] = Score(dense, "faiss", dense_direction)
    if lexical is not None:
        scores[LEXICAL_ARM] = Score(lexical, "bm25", SIM)
    scores["score"] = next(iter(scores.values()))
    return Document(id=doc_id, scores=scores)


def fused(candidates: list[Document], top_k: int = 10, **config: object) -> list[tuple[str, float]]:
    config = {"method": "rrf", **config}
    return [(m.id, m.scores["score"].value) for m in fuse(candidates, FusionConfig(**config), top_k)]  # type: ignore[arg-type]


def assert_fused(actual: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [doc_id for doc_id, _ in actual] == [doc_id for doc_id, _ in expected]
    assert [value for _, value in actual] == pytest.approx([value for _, value in expected])


class TestRRF:
    def test_sums_one_over_k_plus_rank_over_the_arms(self) -> None:
        # dense: a (rank 1), c (2), b (3); lexical: b (1), c (2). 1/61 + 1/63 is a hair over 2/62.
        docs = [candidate("a", dense=0.9), candidate("b", dense=0.1, lexical=7.0), candidate("c", dense=0.5, lexical=3.0)]
        assert_fused(fused(docs, rrf_k=60), [("b", 1 / 63 + 1 / 61), ("c", 1 / 62 + 1 / 62), ("a", 1 / 61)])

    def test_a_document_liked_by_both_arms_beats_each_arms_winner(self) -> None:
        docs = [candidate("a", dense=0.9), candidate("b", lexical=9.0), candidate("c", dense=0.8, lexical=8.0)]
        assert [doc_id for doc_id, _ in fused(docs)] == ["c", "a", "b"]

    def test_ties_are_broken_by_id_in_the_arm_and_in_the_result(self) -> None:
        docs = [candidate("b", dense=0.5), candidate("a", dense=0.5), candidate("d", lexical=2.0), candidate("c", lexical=2.0)]
        # a and c are rank 1 of their arms (ids break the score ties), b and d rank 2; equal fused scores: by id
        assert fused(docs, rrf_k=0) == [("a", 1.0), ("c", 1.0), ("b", 0.5), ("d", 0.5)]

    def test_each_arm_is_cut_to_depth_and_a_document_past_it_gets_nothing_from_it(self) -> None:
        docs = [candidate("a", dense=0.9), candidate("b", dense=0.8, lexical=1.0), candidate("c", dense=0.7)]
        # depth 1: dense keeps a, lexical keeps b; c is in neither list and is not a result
        result = fuse(docs, FusionConfig("rrf", depth=1, rrf_k=60), 10)
        assert [(m.id, m.scores["score"].value) for m in result] == [("a", 1 / 61), ("b", 1 / 61)]
        assert DENSE_ARM not in result[1].scores  # b is past the dense depth: its dense score is dropped
        assert result[1].scores[LEXICAL_ARM].value == 1.0 and result[1].scores[rank_name(LEXICAL_ARM)].value == 1


class TestDBSF:
    def test_normalises_with_mean_and_three_sample_standard_deviations(self) -> None:
        # dense 0.9, 0.5, 0.1: mean 0.5, sample std 0.4 -> [-0.7, 1.7] -> 2/3, 1/2, 1/3
        # (the population std, 0.327, would give 0.704 for the first)
        # lexical 12, 6: mean 9, sample std 3 * sqrt(2) -> 0.5 +- 3 / (6 * 3 * sqrt(2))
        half_gap = 1 / (6 * math.sqrt(2))
        docs = [candidate("a", dense=0.9, lexical=6.0), candidate("b", dense=0.5), candidate("c", dense=0.1, lexical=12.0)]
        assert_fused(fused(docs, method="dbsf"), [("a", 2 / 3 + 0.5 - half_gap), ("c", 1 / 3 + 0.5 + half_gap), ("b", 0.5)])

    def test_one_score_or_equal_scores_normalise_to_one_half(self) -> None:
        docs = [candidate("a", dense=0.3, lexical=5.0), candidate("b", dense=0.3)]
        assert fused(docs, method="dbsf") == [("a", 1.0), ("b", 0.5)]

    def test_distances_are_flipped(self) -> None:
        docs = [candidate(doc_id, dense=d, dense_direction=DIST) for doc_id, d in (("a", 0.1), ("b", 0.5), ("c", 0.9))]
        assert_fused(fused(docs, method="dbsf"), [("a", 2 / 3), ("b", 0.5), ("c", 1 / 3)])

    def test_a_score_past_three_deviations_is_not_clipped(self) -> None:
        """As Qdrant: with 12 scores, one outlier lies past mean + 3 sample std, and stays above 1."""
        docs = [candidate(f"d{i:02d}", dense=0.0) for i in range(11)] + [candidate("top", dense=1.0)]
        top = fused(docs, method="dbsf", top_k=1)[0]
        # mean 1/12, sample std sqrt(1/12) (mean + 3 std = 0.95): 1/2 + (1 - 1/12) / (6 sqrt(1/12)) = 1.029
        assert top == ("top", pytest.approx(0.5 + (11 / 12) / (6 * math.sqrt(1 / 12)))) and top[1] > 1


class TestLinear:
    def test_weights_min_max_normalised_arms_with_distances_flipped(self) -> None:
        # dense L2 distances 0.2, 0.6, 1.0 -> 1, 0.5, 0; lexical 10, 5 -> 1, 0; w = 0.25
        docs = [candidate("a", dense=0.2, dense_direction=DIST), candidate("b", dense=0.6, lexical=10.0, dense_direction=DIST),
                candidate("c", dense=1.0, lexical=5.0, dense_direction=DIST)]
        assert_fused(fused(docs, method="linear", dense_weight=0.25), [("b", 0.875), ("a", 0.25), ("c", 0.0)])

    def test_a_single_score_normalises_to_one(self) -> None:
        docs = [candidate("a", dense=0.4), candidate("b", lexical=3.0)]
        assert fused(docs, method="linear", dense_weight=0.75) == [("a", 0.75), ("b", 0.25)]


class TestFuse:
    def test_is_the_same_whatever_the_input_order(self) -> None:
        rng = random.Random(7)
        docs = [candidate(f"d{i}", dense=rng.choice([0.1, 0.5, rng.random()]) if i % 3 else None,
                          lexical=rng.choice([1.0, 2.0, rng.random() * 10]) if i % 3 != 1 else None) for i in range(40)]
        for method in FUSIONS:
            answers = set()
            for _ in range(20):
                rng.shuffle(docs)
                answers.add(tuple((m.id, m.scores["score"].value, tuple(sorted(m.scores.items())))
                                  for m in fuse(docs, FusionConfig(method=method, depth=15), 10)))
            assert len(answers) == 1, method

    def test_the_reply_score_is_the_fused_similarity_and_keeps_the_arm_scores_and_ranks(self) -> None:
        (match,) = fuse([candidate("a", dense=0.4, lexical=3.0)], FusionConfig("rrf"), 1)
        assert match.scores["score"] == Score(2 / 61, "fusion.rrf", SIM)
        assert match.scores[DENSE_ARM] == Score(0.4, "faiss", SIM)
        assert match.scores[LEXICAL_ARM] == Score(3.0, "bm25", SIM)
        assert match.scores[rank_name(DENSE_ARM)].value == match.scores[rank_name(LEXICAL_ARM)].value == 1

    def test_an_arm_mixing_distances_and_similarities_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="dense arm's scores mix"):
            arm_lists([candidate("a", dense=0.4), candidate("b", dense=0.2, dense_direction=DIST)], 10)

    def test_every_fusion_a_request_may_name_is_implemented(self) -> None:
        assert set(_FUSERS) == set(FUSIONS)
        with pytest.raises(ConfigError, match="method 'borda'"):
            FusionConfig(method="borda")

    def test_the_config_of_a_request_uses_its_arm_depth(self) -> None:
        params = SearchParameters.parse({"retrieval": "hybrid", "top_k": 150, "candidates": 100, "fusion": "linear",
                                         "dense_weight": 0.3, "rrf_k": 10})
        assert FusionConfig.of(params) == FusionConfig("linear", 10, 150, 0.3)


class TestMergeCandidates:
    def test_a_document_from_two_parts_keeps_each_arms_best_score(self) -> None:
        first = [candidate("a", dense=0.4, dense_direction=DIST), candidate("b", lexical=1.0)]
        second = [candidate("a", dense=0.2, lexical=2.0, dense_direction=DIST), candidate("b", lexical=0.5)]
        merged = {doc.id: doc for doc in merge_candidates([first, second])}
        assert merged["a"].scores[DENSE_ARM].value == 0.2 and merged["a"].scores[LEXICAL_ARM].value == 2.0
        assert merged["b"].scores[LEXICAL_ARM].value == 1.0
        assert first[0].scores[DENSE_ARM].value == 0.4  # the parts' documents are not changed
