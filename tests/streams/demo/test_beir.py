"""What ``streamsearch eval`` computes and prints from the rankings, without a broker."""

from __future__ import annotations

import pytest

from streams.demo.beir import EvalReport, score
from processors.evaluators.bootstrap import paired_bootstrap

QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}}


class TestScoreAndReport:
    def test_score_keeps_ndcg_per_query_for_the_paired_comparison(self) -> None:
        result = score({"q1": ["d1", "x"], "q2": ["x", "y"]}, QRELS)
        assert result.ndcg_at_10_per_query == {"q1": 1.0, "q2": 0.0}
        assert (result.queries, result.ndcg_at_10, result.recall_at_100) == (2, 0.5, 0.5)

    def test_a_dense_run_alone_prints_as_before(self) -> None:
        report = EvalReport({"dense": score({"q1": ["d1"], "q2": ["d2"]}, QRELS)})
        assert report.lines() == ["queries = 2", "nDCG@10 = 1.00000", "recall@100 = 1.00000", "P@10 = 0.10000",
                                  "MRR = 1.00000"]

    def test_a_comparison_prints_a_row_per_run_and_the_interval_of_the_difference(self) -> None:
        dense = score({"q1": ["d1"], "q2": ["x"]}, QRELS)
        hybrid = score({"q1": ["d1"], "q2": ["d2"]}, QRELS)
        difference = paired_bootstrap(dense.ndcg_at_10_per_query, hybrid.ndcg_at_10_per_query)
        lines = EvalReport({"dense": dense, "hybrid": hybrid}, {"hybrid": difference}, "rrf").lines()
        assert lines[:4] == ["queries = 2",
                             "retrieval     nDCG@10  recall@100",
                             "dense         0.50000  0.50000",
                             "hybrid (rrf)  1.00000  1.00000"]
        assert lines[4].startswith("nDCG@10 hybrid (rrf) - dense = +0.50000, 95% CI [+0.00000, +1.00000]")
        assert difference.mean == pytest.approx(0.5)

    def test_the_columns_line_up_under_the_header_whatever_the_run_names(self) -> None:
        dense = score({"q1": ["d1"], "q2": ["x"]}, QRELS)
        difference = paired_bootstrap(dense.ndcg_at_10_per_query, dense.ndcg_at_10_per_query)
        lines = EvalReport({"dense": dense, "lexical": dense}, {"lexical": difference}).lines()
        assert lines[1:4] == ["retrieval  nDCG@10  recall@100",
                              "dense      0.50000  0.50000",
                              "lexical    0.50000  0.50000"]
        assert lines[4].startswith("nDCG@10 lexical - dense = +0.00000, 95% CI [+0.00000, +0.00000]")


    def test_several_runs_each_get_their_interval_against_dense(self) -> None:
        dense = score({"q1": ["d1"], "q2": ["x"]}, QRELS)
        better = score({"q1": ["d1"], "q2": ["d2"]}, QRELS)
        differences = {run: paired_bootstrap(dense.ndcg_at_10_per_query, result.ndcg_at_10_per_query)
                       for run, result in (("lexical", dense), ("hybrid", better))}
        lines = EvalReport({"dense": dense, "lexical": dense, "hybrid": better}, differences, "dbsf").lines()
        assert lines[5].startswith("nDCG@10 lexical - dense = +0.00000")
        assert lines[6].startswith("nDCG@10 hybrid (dbsf) - dense = +0.50000")
