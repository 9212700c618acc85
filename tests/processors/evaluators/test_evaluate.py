import statistics

import pytest

from processors.evaluators.evaluate import RunningStats, evaluate, parse_metrics
from processors.query.parameters import InvalidParameterError


class TestEvaluate:
    def test_named_metrics(self) -> None:
        metrics = parse_metrics(["ndcg@2", "recall@1", "precision@2", "mrr"])
        values = evaluate(["x", "a"], {"a": 1, "b": 1}, metrics)
        assert values["recall@1"] == 0.0 and values["precision@2"] == 0.5 and values["mrr"] == 0.5
        assert 0 < values["ndcg@2"] < 1

    @pytest.mark.parametrize("names", [["ndcg"], ["ndcg@0"], ["map@10"], [], "ndcg@10", [3]])
    def test_bad_metric_names(self, names: object) -> None:
        with pytest.raises(InvalidParameterError):
            parse_metrics(names)


class TestRunningStats:
    def test_matches_batch_mean_and_std(self) -> None:
        values = [0.1, 0.5, 0.9, 0.4]
        stats = RunningStats()
        for value in values:
            stats.update({"m": value})
        assert stats.mean("m") == pytest.approx(statistics.fmean(values))
        assert stats.std("m") == pytest.approx(statistics.pstdev(values))
        assert stats.count["m"] == 4
