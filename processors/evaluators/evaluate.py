"""Evaluations of ranked results against ground truth, one request or a running stream."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from processors.evaluators.metrics import ndcg_at_k, precision_at_k, recall_at_k, reciprocal_rank
from processors.exceptions import InvalidParameterError

__all__ = ["MetricSpec", "parse_metrics", "evaluate", "RunningStats", "DEFAULT_METRICS"]

DEFAULT_METRICS = ("ndcg@10", "recall@100", "precision@10", "mrr")
_AT_K: dict[str, Callable[[Sequence[str], Mapping[str, int], int], float]] = {
    "ndcg": ndcg_at_k, "recall": recall_at_k, "precision": precision_at_k,
}
_NAME = re.compile(r"^(ndcg|recall|precision)@([1-9][0-9]{0,4})$|^mrr$")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric by name: ``ndcg@10``, ``recall@100``, ``precision@5`` or ``mrr``."""

    name: str

    def __call__(self, ranked: Sequence[str], relevance: Mapping[str, int]) -> float:
        if self.name == "mrr":
            return reciprocal_rank(ranked, relevance)
        family, k = self.name.split("@")
        return _AT_K[family](ranked, relevance, int(k))


def parse_metrics(names: object) -> tuple[MetricSpec, ...]:
    """Check metric names from a request.

    :raises InvalidParameterError: naming the metric that is not one of the supported forms.
    """
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names) or not names:
        raise InvalidParameterError(f"metrics must be a non-empty list of names like {list(DEFAULT_METRICS)}")
    for name in names:
        if not _NAME.match(name):
            raise InvalidParameterError(f"unknown metric {name!r}; use ndcg@K, recall@K, precision@K or mrr")
    return tuple(MetricSpec(n) for n in names)


def evaluate(ranked: Sequence[str], relevance: Mapping[str, int], metrics: Sequence[MetricSpec]) -> dict[str, float]:
    """Every metric for one ranked list of document ids."""
    return {metric.name: metric(ranked, relevance) for metric in metrics}


@dataclass(slots=True)
class RunningStats:
    """Mean and standard deviation per metric over a stream of evaluations (Welford)."""

    count: dict[str, int] = field(default_factory=dict)
    _mean: dict[str, float] = field(default_factory=dict)
    _m2: dict[str, float] = field(default_factory=dict)

    def update(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            n = self.count.get(name, 0) + 1
            mean = self._mean.get(name, 0.0)
            delta = value - mean
            mean += delta / n
            self._m2[name] = self._m2.get(name, 0.0) + delta * (value - mean)
            self._mean[name], self.count[name] = mean, n

    def mean(self, name: str) -> float:
        return self._mean.get(name, math.nan)

    def std(self, name: str) -> float:
        """Population standard deviation (0 for a single value)."""
        n = self.count.get(name, 0)
        return math.sqrt(self._m2[name] / n) if n else math.nan
