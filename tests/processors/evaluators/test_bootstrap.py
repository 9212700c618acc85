"""The paired bootstrap interval on cases whose answer can be worked out by hand."""

from __future__ import annotations

import pytest

from processors.evaluators.bootstrap import paired_bootstrap


class TestPairedBootstrap:
    def test_the_same_difference_on_every_query_has_an_interval_of_that_point(self) -> None:
        baseline = {"q1": 0.2, "q2": 0.5, "q3": 0.9}
        system = {q: v + 0.1 for q, v in baseline.items()}
        interval = paired_bootstrap(baseline, system)
        assert interval.mean == pytest.approx(0.1)
        assert (interval.low, interval.high) == (pytest.approx(0.1), pytest.approx(0.1))
        assert interval.excludes_zero

    def test_two_queries_differing_by_0_and_1_give_the_whole_range(self) -> None:
        # Resample means are 0, 0.5 or 1 with chances 1/4, 1/2, 1/4: the 2.5 % and 97.5 % points are 0 and 1.
        interval = paired_bootstrap({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 1.0})
        assert (interval.mean, interval.low, interval.high) == (0.5, 0.0, 1.0)
        assert not interval.excludes_zero

    def test_swapping_the_runs_mirrors_the_interval_and_a_seed_repeats_it(self) -> None:
        baseline = {f"q{i}": (i % 7) / 7 for i in range(40)}
        system = {f"q{i}": (i % 5) / 5 for i in range(40)}
        forward, backward = paired_bootstrap(baseline, system), paired_bootstrap(system, baseline)
        assert forward == paired_bootstrap(baseline, system)
        assert (forward.low, forward.high) == (pytest.approx(-backward.high), pytest.approx(-backward.low))
        assert forward.low < forward.mean < forward.high

    @pytest.mark.parametrize(("baseline", "system", "message"), [
        ({"a": 1.0}, {"b": 1.0}, "same queries"),
        ({}, {}, "at least one query"),
    ])
    def test_unpaired_or_empty_runs_are_refused(self, baseline: dict[str, float], system: dict[str, float],
                                                message: str) -> None:
        with pytest.raises(ValueError, match=message):
            paired_bootstrap(baseline, system)
