"""The ``filter`` parameter: parsed as data, bounded before it is walked, checked against the flow's schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from processors.exceptions import InvalidParameterError, RequestLimitError
from processors.query.filter import (
    Combination,
    Comparison,
    check_filter,
    field_schema,
    filter_json,
    parse_filter,
    stored_value,
    stored_values,
)
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import SearchParameters

SCHEMA = {"year": "number", "genre": "keyword", "published": "date", "open": "boolean"}


def parse(raw: Any) -> Any:
    return parse_filter(raw, max_conditions=REQUEST_LIMITS.max_conditions, max_in_items=REQUEST_LIMITS.max_in_items,
                        max_depth=REQUEST_LIMITS.max_filter_depth)


def test_shorthand_and_explicit_forms_parse_alike_and_travel_as_json() -> None:
    short = parse({"genre": "drama", "year": {"$gte": 2015, "$lt": 2020}})
    assert short == Combination("$and", (Comparison("genre", "$eq", "drama"), Comparison("year", "$gte", 2015),
                                         Comparison("year", "$lt", 2020)))
    wire = json.loads(json.dumps(filter_json(short)))
    assert parse(wire) == short
    nested = parse({"$or": [{"open": True}, {"$not": {"genre": {"$in": ["a", "b"]}}}]})
    assert parse(filter_json(nested)) == nested
    assert SearchParameters.parse(SearchParameters.parse({"filter": wire}).to_dict()).filter == short


@pytest.mark.parametrize("raw, message", [
    ({}, "non-empty JSON object"),
    ([{"a": 1}], "non-empty JSON object"),
    ({"$near": {"a": 1}}, "unknown operator '\\$near'"),
    ({"year": {"$between": [1, 2]}}, "unknown operator '\\$between'"),
    ({"year": {"$in": 3}}, "must be a non-empty list"),
    ({"year": {"$in": []}}, "must be a non-empty list"),
    ({"year": {"$exists": "yes"}}, "must be true or false"),
    ({"$or": {"a": 1}}, "non-empty list of filters"),
    ({"$and": []}, "non-empty list of filters"),
    ({"$not": []}, "non-empty JSON object"),
    ({"year": {"$in": [1, float("nan")]}}, "must be a string, a finite number or a boolean, got nan"),
    ({"year": None}, "must be a string, a finite number or a boolean"),
    ({"year": {"$gt": [1]}}, "must be a string, a finite number or a boolean"),
])
def test_a_malformed_filter_is_refused_naming_its_part(raw: Any, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        parse(raw)


def test_limits_are_checked_and_deep_nesting_never_recurses_past_the_limit() -> None:
    deep: Any = {"year": 1}
    for _ in range(100_000):  # far past Python's recursion limit: refused at depth 17, not a RecursionError
        deep = {"$not": deep}
    with pytest.raises(RequestLimitError, match="max_filter_depth"):
        parse(deep)
    with pytest.raises(RequestLimitError, match="max_conditions"):
        parse({"$or": [{"year": i} for i in range(REQUEST_LIMITS.max_conditions + 1)]})
    with pytest.raises(RequestLimitError, match="max_in_items"):
        parse({"genre": {"$in": [str(i) for i in range(REQUEST_LIMITS.max_in_items + 1)]}})
    with pytest.raises(RequestLimitError, match="max_filter_depth"):
        SearchParameters.parse({"filter": deep})


@pytest.mark.parametrize("raw, message", [
    ({"author": "x"}, "'author' is not a filterable field; filterable: year \\(number\\), genre \\(keyword\\)"),
    ({"genre": {"$gt": "m"}}, "\\$gt does not apply to 'genre', a keyword field"),
    ({"open": {"$in": [True]}}, "\\$in does not apply to 'open', a boolean field"),
    ({"year": "2015"}, "'year' is a number field; \\$eq got '2015'"),
    ({"year": True}, "'year' is a number field"),
    ({"year": {"$in": [1, "2"]}}, "'year' is a number field; \\$in got '2'"),
    ({"published": {"$gte": "last week"}}, "'published' is a date field"),
    ({"genre": 7}, "'genre' is a keyword field"),
])
def test_the_schema_check_names_the_field_the_operator_or_the_value(raw: Any, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        check_filter(parse(raw), SCHEMA)


def test_a_flow_without_filterable_fields_says_how_to_declare_them() -> None:
    with pytest.raises(InvalidParameterError, match="declare them in the index stage"):
        check_filter(parse({"year": 1}), {})
    with pytest.raises(InvalidParameterError, match="is not a filterable field"):
        REQUEST_LIMITS.check(SearchParameters.parse({"filter": {"year": 1}}), queries=1, after={}, fields=(),
                             partitions=1, filterable={})


def test_values_are_kept_in_one_form_per_type() -> None:
    assert stored_value("date", "2020-01-01") == stored_value("date", "2020-01-01T00:00:00Z") == 1577836800.0
    assert stored_value("date", "2020-01-01T02:00:00+02:00") == 1577836800.0
    assert stored_value("date", "2020-13-01") is None and stored_value("date", 1577836800) is None
    assert stored_value("number", 3) == 3.0 and stored_value("number", float("inf")) is None
    assert stored_value("number", 10**400) is None and stored_value("number", False) is None
    assert stored_value("keyword", "x") == "x" and stored_value("boolean", 1) is None
    assert stored_values("number", 2) == [2.0] and stored_values("number", "two") == []  # none or one


@pytest.mark.parametrize("raw, message", [
    ({"year": "int"}, "type 'int'"),
    ({"": "number"}, "is not a tag key"),
    ({"$year": "number"}, "is not a tag key"),
    (["year"], "must map tag keys to types"),
])
def test_a_bad_declaration_is_refused(raw: Any, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        field_schema(raw)


def test_what_the_fan_out_accepts_a_shard_accepts_too() -> None:
    """The JSON that travels to the shards is never nested deeper than what the fan-out checked: an implicit
    ``$and`` (several keys in one object) travels implicit (found by an attack on the first version)."""
    nested: Any = {"x": 1, "y": 2}
    for _ in range(REQUEST_LIMITS.max_filter_depth - 1):
        nested = {"$or": [nested, {"x": 3}], "y": 1}
    checked = SearchParameters.parse({"filter": nested})
    assert SearchParameters.parse(checked.to_dict()).filter == checked.filter
    negated: Any = {"a": 1, "b": 2}
    for _ in range(REQUEST_LIMITS.max_filter_depth - 1):
        negated = {"$not": negated}
    assert SearchParameters.parse(SearchParameters.parse({"filter": negated}).to_dict()).filter is not None
    explicit = parse({"$and": [{"year": {"$gt": 1}}, {"year": {"$gt": 2}}]})  # one key twice: stays explicit
    assert filter_json(explicit) == {"$and": [{"year": {"$gt": 1}}, {"year": {"$gt": 2}}]}
    assert parse(filter_json(explicit)) == explicit
