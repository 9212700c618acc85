"""Whether one retrieval beats another on the same queries: a paired bootstrap confidence interval of
the mean per-query difference of a metric.

The queries are the sample: resampling them with replacement (the pairs kept together) and taking the
mean difference of each resample gives its sampling distribution, and the percentile interval of that
distribution is the confidence interval (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993,
ch. 13 and 16). Sakai (SIGIR 2006, "Evaluating evaluation metrics based on the bootstrap") brought the
paired bootstrap to IR test collections; an interval that excludes 0 says the difference is unlikely
to be an accident of which queries the collection has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

__all__ = ["BootstrapInterval", "paired_bootstrap"]


@dataclass(frozen=True, slots=True)
class BootstrapInterval:
    """The mean difference (system − baseline) over the queries and its percentile interval."""

    mean: float
    low: float
    high: float
    confidence: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the difference is significant at this confidence (the interval lies on one side of 0)."""
        return self.low > 0 or self.high < 0


def paired_bootstrap(baseline: Mapping[str, float], system: Mapping[str, float], *, resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> BootstrapInterval:
    """The percentile bootstrap interval of the mean of ``system[q] - baseline[q]`` over the queries q.

    :param baseline: query id -> the metric (e.g. nDCG@10) of the baseline run.
    :param system: query id -> the metric of the run compared with it; the same query ids.
    :param resamples: bootstrap resamples (Efron & Tibshirani suggest 1000 or more for a percentile interval).
    :param confidence: the interval's coverage, in (0, 1).
    :param seed: of ``numpy.random.default_rng``: the same inputs give the same interval.
    :returns: the observed mean difference and the interval around it.
    :raises ValueError: if the query ids differ, there are none, or an option is out of range.
    """
    if set(baseline) != set(system):
        missing = sorted(set(baseline) ^ set(system))[:5]
        raise ValueError(f"paired bootstrap needs the same queries in both runs; not in both: {missing}")
    if not baseline:
        raise ValueError("paired bootstrap needs at least one query")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and confidence in (0, 1), got {resamples}, {confidence}")
    queries = sorted(baseline)  # a fixed order: the seed then fixes the resamples
    differences = np.array([system[q] - baseline[q] for q in queries], dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return BootstrapInterval(mean=float(differences.mean()), low=float(low), high=float(high),
                             confidence=confidence, resamples=resamples)
