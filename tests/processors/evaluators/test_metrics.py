import math

import pytest

from processors.evaluators.metrics import ndcg_at_k, precision_at_k, recall_at_k, reciprocal_rank

QRELS = {"d1": 1, "d2": 2, "d9": 1}


class TestMetrics:
    def test_ndcg_by_hand(self) -> None:
        ranked = ["d2", "x", "d1"]
        dcg = 2 / math.log2(2) + 1 / math.log2(4)
        idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
        assert ndcg_at_k(ranked, QRELS, 10) == pytest.approx(dcg / idcg)
        assert ndcg_at_k(["d2", "d1", "d9"], QRELS, 10) == pytest.approx(1.0)
        assert ndcg_at_k(["x", "y"], QRELS, 10) == 0.0

    def test_ndcg_cut_ignores_results_past_k(self) -> None:
        assert ndcg_at_k(["x", "d2"], QRELS, 1) == 0.0

    def test_recall_precision_mrr(self) -> None:
        ranked = ["x", "d1", "y", "d2"]
        assert recall_at_k(ranked, QRELS, 2) == pytest.approx(1 / 3)
        assert recall_at_k(ranked, QRELS, 100) == pytest.approx(2 / 3)
        assert precision_at_k(ranked, QRELS, 4) == pytest.approx(0.5)
        assert precision_at_k(ranked, QRELS, 10) == pytest.approx(0.2)
        assert reciprocal_rank(ranked, QRELS) == pytest.approx(0.5)
        assert reciprocal_rank(["x"], QRELS) == 0.0
