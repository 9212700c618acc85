import pytest

from processors.encoders.batching import plan_passes


def padded(counts: list[int], passes: list[list[int]]) -> list[int]:
    return [len(p) * max(counts[i] for i in p) for p in passes]


def test_every_text_is_in_exactly_one_pass_and_no_pass_exceeds_the_budget() -> None:
    counts = [256, 12, 40, 256, 7, 90, 256, 33, 12, 180, 256, 64]
    passes = plan_passes(counts, max_tokens=512, max_texts=32)
    assert sorted(i for p in passes for i in p) == list(range(len(counts)))
    assert all(tokens <= 512 for tokens in padded(counts, passes))
    assert [len(p) for p in passes if counts[p[0]] == 256] == [2, 2]  # two long texts fill a pass


def test_short_texts_share_a_pass_that_long_ones_could_not() -> None:
    short, long = [10] * 100, [250] * 100
    assert len(plan_passes(short, max_tokens=2048, max_texts=1000)) == 1
    assert len(plan_passes(long, max_tokens=2048, max_texts=1000)) == 13  # 8 per pass


def test_max_texts_caps_a_pass_of_short_texts() -> None:
    assert [len(p) for p in plan_passes([3] * 10, max_tokens=10_000, max_texts=4)] == [4, 4, 2]


def test_passes_go_shortest_first_ties_by_position() -> None:
    assert plan_passes([5, 1, 5, 1], max_tokens=2, max_texts=10) == [[1, 3], [0], [2]]


def test_a_text_longer_than_the_budget_gets_a_pass_of_its_own() -> None:
    assert plan_passes([4, 900, 4], max_tokens=100, max_texts=8) == [[0, 2], [1]]


def test_no_texts_no_passes_and_bad_limits_are_refused() -> None:
    assert plan_passes([], max_tokens=10, max_texts=1) == []
    with pytest.raises(ValueError, match="at least 1"):
        plan_passes([1], max_tokens=0, max_texts=1)
    with pytest.raises(ValueError, match="at least 1"):
        plan_passes([1], max_tokens=1, max_texts=0)
