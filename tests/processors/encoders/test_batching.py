import pytest

from processors.encoders.batching import token_budget_batches


def padded(counts: list[int], batches: list[list[int]]) -> list[int]:
    return [len(p) * max(counts[i] for i in p) for p in batches]


def test_every_text_is_in_exactly_one_pass_and_no_pass_exceeds_the_budget() -> None:
    counts = [256, 12, 40, 256, 7, 90, 256, 33, 12, 180, 256, 64]
    batches = token_budget_batches(counts, max_tokens=512, max_texts=32)
    assert sorted(i for p in batches for i in p) == list(range(len(counts)))
    assert all(tokens <= 512 for tokens in padded(counts, batches))
    assert [len(p) for p in batches if counts[p[0]] == 256] == [2, 2]  # two long texts fill a pass


def test_short_texts_share_a_pass_that_long_ones_could_not() -> None:
    short, long = [10] * 100, [250] * 100
    assert len(token_budget_batches(short, max_tokens=2048, max_texts=1000)) == 1
    assert len(token_budget_batches(long, max_tokens=2048, max_texts=1000)) == 13  # 8 per pass


def test_max_texts_caps_a_pass_of_short_texts() -> None:
    assert [len(p) for p in token_budget_batches([3] * 10, max_tokens=10_000, max_texts=4)] == [4, 4, 2]


def test_batches_go_shortest_first_ties_by_position() -> None:
    assert token_budget_batches([5, 1, 5, 1], max_tokens=2, max_texts=10) == [[1, 3], [0], [2]]


def test_a_text_longer_than_the_budget_gets_a_pass_of_its_own() -> None:
    assert token_budget_batches([4, 900, 4], max_tokens=100, max_texts=8) == [[0, 2], [1]]


def test_no_texts_no_batches_and_bad_limits_are_refused() -> None:
    assert token_budget_batches([], max_tokens=10, max_texts=1) == []
    with pytest.raises(ValueError, match="at least 1"):
        token_budget_batches([1], max_tokens=0, max_texts=1)
    with pytest.raises(ValueError, match="at least 1"):
        token_budget_batches([1], max_tokens=1, max_texts=0)
