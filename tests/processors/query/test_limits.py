import logging
import time

import pytest

from processors.document import Document
from processors.exceptions import InvalidParameterError, RegexBudgetError, RequestLimitError
from processors.query import lookups
from processors.query.limits import REQUEST_LIMITS, RequestLimits
from processors.query.operators import Operation, apply_operations
from processors.query.parameters import SearchParameters

FIELDS = ("title", "summary")


def check(raw: dict, *, queries: int = 1, after: dict[int, int] | None = None, fields: tuple[str, ...] = FIELDS,
          limits: RequestLimits = REQUEST_LIMITS) -> SearchParameters:
    params = SearchParameters.parse(raw)
    limits.check(params, queries=queries, after=after or {}, fields=fields, partitions=2)
    return params


def regex_filter(pattern: str, stage: str = "index") -> dict:
    return {"operator": "filter", "stage": stage, "traversal_paths": ["m"],
            "parameters": {"conditions": {"text__regex": pattern}}}


@pytest.fixture(autouse=True)
def fresh_warning_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookups, "_TIMEOUTS", lookups._TimeoutWarnings())


class TestRequestLimits:
    def test_within_every_limit_passes(self) -> None:
        raw = {"top_k": 10, "filter_by": ["title"], "query_language": [regex_filter("^a"), {"operator": "reverse"}]}
        assert check(raw, queries=64, after={0: 5, 1: 2**53 - 1}).filter_by == ("title",)
        check({"top_k": 100}, queries=16)  # what `streamsearch eval` sends: 8000 vectors per shard
        check({"top_k": 1_000, "chunk_oversample": 20})  # max_top_k, and max_fetch exactly

    def test_filter_by_of_100000_repeats_is_one_field(self) -> None:
        assert check({"filter_by": ["title"] * 100_000}).filter_by == ("title",)
        assert check({"filter_by": ["summary", "title", "summary"]}).filter_by == ("summary", "title")

    def test_filter_by_names_only_the_flows_fields(self) -> None:
        with pytest.raises(InvalidParameterError, match=r"unknown fields \['author'\]; known: title, summary"):
            check({"filter_by": ["title"] * 100_000 + ["author"]})
        with pytest.raises(InvalidParameterError, match="none: this flow has no fields"):
            check({"filter_by": ["title"]}, fields=())

    @pytest.mark.parametrize(("kwargs", "raw", "limit"), [
        ({"queries": 65}, {}, "the limit max_queries is 64"),
        ({}, {"top_k": 1_000, "chunk_oversample": 21}, r"queries × top_k × chunk_oversample = 1 × 1000 × 21 = "
                                                        r"21000; the limit max_fetch is 20000"),
        ({}, {"top_k": 1_001}, r"parameter 'top_k' is 1001; the limit max_top_k is 1000"),
        ({}, {"chunk_oversample": 101}, r"parameter 'chunk_oversample' is 101; the limit max_chunk_oversample is 100"),
        ({"queries": 16}, {"top_k": 251}, "max_fetch"),
        ({}, {"top_k": 50, "group_by": "c", "group_size": 100}, r"queries × top_k × group_size × chunk_oversample = "
                                                                  r"1 × 5000 × 5 = 25000; the limit max_fetch is 20000"),
        ({"after": {0: 10**18}}, {}, r"offset 1000000000000000000 of partition 0; offsets are 0..max_offset"),
        ({"after": {0: -1}}, {}, "max_offset"),
        ({"after": {-1: 0}}, {}, r"after names partition -1; the flow has partitions 0..1"),
        ({"after": {2: 0}}, {}, r"partitions 0..1"),
        ({"after": {10**40: 0}}, {}, "partition a very large integer"),
    ])
    def test_over_a_limit_is_refused_naming_it(self, kwargs: dict, raw: dict, limit: str) -> None:
        with pytest.raises(RequestLimitError, match=limit):
            check(raw, **kwargs)

    def test_an_in_list_of_a_million_items_is_refused_by_its_size_before_it_is_parsed(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        parsed = []
        monkeypatch.setattr(lookups.Condition, "parse", classmethod(lambda cls, *a: parsed.append(a)))
        huge = {"operator": "filter", "parameters": {"conditions": {"id__in": list(range(1_000_000))}}}
        with pytest.raises(RequestLimitError, match=r"query_language is \d+ bytes of JSON; the limit "
                                                     r"max_query_language_bytes is 65536"):
            check({"query_language": [huge]})
        assert parsed == []

    def test_in_list_length_operations_and_conditions(self) -> None:
        long_in = {"operator": "filter", "parameters": {"conditions": {"id__in": list(range(1_001))}}}
        with pytest.raises(RequestLimitError, match="an 'in' list of 1001 values; the limit max_in_items is 1000"):
            check({"query_language": [long_in]})
        check({"query_language": [{"operator": "filter", "parameters": {"conditions": {"id__in": list(range(1_000))}}}]})
        many_ops = [{"operator": "reverse", "name": f"r{i}"} for i in range(17)]
        with pytest.raises(RequestLimitError, match="17 operations; the limit max_operations is 16"):
            check({"query_language": many_ops})
        conditions = {f"tags.k{i}": "x" for i in range(33)}
        with pytest.raises(RequestLimitError, match="33 filter conditions; the limit max_conditions is 32"):
            check({"query_language": [{"operator": "filter", "parameters": {"conditions": conditions}}]})

    def test_limits_are_configurable_and_must_be_positive(self) -> None:
        with pytest.raises(RequestLimitError, match="max_queries is 2"):
            check({}, queries=3, limits=RequestLimits(max_queries=2))
        with pytest.raises(ValueError, match="max_fetch"):
            RequestLimits(max_fetch=0)

    def test_a_bad_operation_is_still_a_query_language_error(self) -> None:
        with pytest.raises(InvalidParameterError, match="__import__"):
            check({"query_language": [{"operator": "__import__"}]})


class TestRegexBudget:
    SLOW = "a" * 60 + "!"

    def slow_tree(self, matches: int) -> list[Document]:
        return [Document(id="q0", matches=[Document(id=f"d{i}", text=self.SLOW) for i in range(matches)])]

    def test_a_catastrophic_regex_costs_at_most_the_budget_then_fails_naming_it(
            self, caplog: pytest.LogCaptureFixture) -> None:
        params = SearchParameters.parse({"query_language": [regex_filter("(a|aa)+$", stage="join")]})
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="processors.query.lookups"), \
                pytest.raises(RegexBudgetError, match="the limit regex_budget_s is 0.25 s"):
            apply_operations(self.slow_tree(100), params.operations_for("join"))
        # The budget, plus the overshoot of the one search that spent it (the regex module checks its clock coarsely).
        assert time.perf_counter() - started < REQUEST_LIMITS.regex_budget_s + 1.0
        assert len([r for r in caplog.records if "timed out" in r.getMessage()]) == 1  # rate-limited, not one per match

    def test_the_budget_is_per_request_however_often_its_operations_are_applied(self) -> None:
        params = SearchParameters.parse({"query_language": [regex_filter("(a|aa)+$")]})
        operations = params.operations_for("index")
        with pytest.raises(RegexBudgetError):
            for _ in range(100):  # e.g. a shard widening its window: each call spends the same budget
                apply_operations(self.slow_tree(1), operations)
        assert params.regex_budget.left <= 0
        fresh = SearchParameters.parse(params.to_dict())  # another request (or stage) has its own
        assert fresh.regex_budget.left == REQUEST_LIMITS.regex_budget_s
        assert [d.id for d in apply_operations([Document(id="q0", matches=[Document(id="x", text="aa")])],
                                               fresh.operations_for("index"))[0].matches] == ["x"]

    def test_a_timed_out_value_alone_is_no_match_within_the_budget(self) -> None:
        docs = [Document(id="q0", matches=[Document(id="slow", text=self.SLOW), Document(id="fast", text="aa")])]
        result = apply_operations(docs, [Operation("filter", {"conditions": {"text__regex": "(a|aa)+$"}},
                                                   traversal_paths=("m",))])
        assert [d.id for d in result[0].matches] == ["fast"]

    def test_warnings_are_rate_limited_and_count_what_they_skipped(
            self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
        clock = iter([0.0, 1.0, 2.0, 11.0])
        monkeypatch.setattr(lookups.time, "monotonic", lambda: next(clock))
        with caplog.at_level(logging.WARNING, logger="processors.query.lookups"):
            for _ in range(4):
                lookups._TIMEOUTS.note("(a|aa)+$", 61)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2
        assert "(2 more timeouts not logged in the last 10 s)" in lines[1]
