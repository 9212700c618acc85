"""Fuzzing the query language: any payload is parsed or refused, and nothing in it runs."""

from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.document import Direction, Document, Score, copy_tree
from processors.exceptions import ConditionTypeError, QueryLanguageError, RegexBudgetError
from processors.query.lookups import ATTRIBUTES, LOOKUPS
from processors.query.operators import (
    DOCUMENT_FIELDS,
    OPERATORS,
    Operation,
    apply_operations,
    merge_operations,
    parse_operations,
)
from tests.processors.query.fixtures import PATHS, node

SENTINEL: list[str] = []
"""Stays empty unless some payload string is evaluated as code."""

EVALUATED = f"__import__('sys').modules[{__name__!r}].SENTINEL.append('evaluated')"
NASTY = [
    EVALUATED, "__import__('os').system('x')", "{{7*7}}", "${7*7}", "{0.__class__}", "%s%s%n", "__class__",
    "__dict__", "tags.__class__", "scores.__dict__", "text__regex", "id__in", "\x00", "'; DROP TABLE docs; --",
    "lambda: 0", "r", "cm",
]
REGEXES = ["^R", r"\d$", ".*", "(a|aa)+$", "(?R)", "(", "[", "((((a{1000}){1000}){1000}){1000})",
           "(?x)a{ 1000 }", "a" * 300, EVALUATED]
SETTINGS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**400, -(10**4000), 2**63, float("nan")]), st.text(max_size=12), st.sampled_from(NASTY),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(NASTY), inner,
                                                               max_size=4),
    max_leaves=12,
)
field_names = st.one_of(
    st.sampled_from([*ATTRIBUTES, *DOCUMENT_FIELDS, "tags.color", "tags.size", "scores.score", "scores.none"]),
    st.text(min_size=1, max_size=8).map(lambda key: f"tags.{key}"),
    st.text(max_size=8), st.sampled_from(NASTY),
)


def keys(lookups: list[str] | st.SearchStrategy[str], fields: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    lookup = lookups if isinstance(lookups, st.SearchStrategy) else st.sampled_from(lookups)
    return st.builds(lambda field, name: f"{field}__{name}", fields, lookup)


def operation(operator: st.SearchStrategy[Any], parameters: st.SearchStrategy[Any],
              paths: st.SearchStrategy[Any], priority: st.SearchStrategy[Any]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {"operator": operator, "parameters": parameters},
        optional={"priority": priority, "traversal_paths": paths},
    )


def parameters(conditions: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy]:
    """The parameters of each operator, drawn from ``conditions`` for filter and ``other`` for the rest."""
    return {
        "filter": st.fixed_dictionaries({"conditions": conditions}, optional={"combine": st.sampled_from(["and", "or"])}),
        "select": st.fixed_dictionaries({"fields": st.lists(st.sampled_from(DOCUMENT_FIELDS) | other, max_size=4)}),
        "exclude": st.fixed_dictionaries({"fields": st.lists(st.sampled_from(DOCUMENT_FIELDS[1:]) | other, max_size=4)}),
        "slice": st.fixed_dictionaries({}, optional={"start": st.integers() | other, "end": st.integers() | other}),
        "sort": st.fixed_dictionaries({"field": field_names}, optional={"reverse": st.booleans() | other}),
        "reverse": st.just({}) | st.dictionaries(st.text(max_size=4), other, max_size=1),
    }


def per_operator(params: dict[str, st.SearchStrategy], paths: st.SearchStrategy[Any],
                 priority: st.SearchStrategy[Any]) -> st.SearchStrategy[dict]:
    return st.one_of(*(operation(st.just(name), strategy, paths, priority) for name, strategy in params.items()))


valid_paths = st.lists(st.sampled_from(PATHS) | st.text(alphabet="cm", min_size=1, max_size=4), min_size=1,
                       max_size=3, unique=True)
valid_fields = st.one_of(
    st.sampled_from([*ATTRIBUTES, "tags.color", "tags.size", "scores.score", "scores.none"]),
    st.text(min_size=1, max_size=8).map(lambda key: f"tags.{key}"),
)
numbers_or_text = st.integers() | st.floats(allow_nan=True) | st.text(max_size=6)
valid_conditions = st.lists(st.one_of(
    st.tuples(keys(["exact", "neq", "gt", "gte", "lt", "lte"], valid_fields), numbers_or_text),
    st.tuples(keys(["contains", "icontains", "startswith", "endswith"], valid_fields), st.text(max_size=6) | st.sampled_from(NASTY)),
    st.tuples(keys(["in"], valid_fields), st.lists(numbers_or_text, max_size=3)),
    st.tuples(keys(["regex"], valid_fields), st.sampled_from(["^R", r"\d$", ".*", "(a|aa)+$", "(?R)", "e{2,3}"])),
), max_size=3).map(dict)
valid_params = parameters(valid_conditions, st.nothing())
valid_params["sort"] = st.fixed_dictionaries({"field": valid_fields}, optional={"reverse": st.booleans()})
valid_operations = st.lists(per_operator(valid_params, valid_paths, st.integers(-3, 3)), max_size=4).map(
    lambda ops: [{**op, "name": f"op{i}"} for i, op in enumerate(ops)])

near_conditions = st.dictionaries(keys(st.sampled_from([*LOOKUPS, "like", ""]) | st.text(max_size=4), field_names) | field_names,
                                  scalars | st.lists(scalars, max_size=3) | st.sampled_from(REGEXES), max_size=3)
near_params = parameters(near_conditions | json_values, scalars)
near_operation = st.one_of(
    per_operator(near_params, valid_paths | st.lists(st.text(alphabet="rcmx", max_size=3), max_size=3) | scalars,
                 st.integers() | scalars),
    operation(st.sampled_from([*OPERATORS, *NASTY]) | st.text(max_size=8), json_values, valid_paths, scalars),
    st.dictionaries(st.sampled_from(["operator", "parameters", "priority", "traversal_paths", "name", "op"]),
                    json_values, max_size=5),
)


def fuzz_tree() -> list[Document]:
    nan = Score(float("nan"), "cosine", Direction.SIMILARITY)
    odd = Document(id="odd", text="a" * 30 + "!", tags={"color": ""}, weight=-0.0,
                   scores={"score": nan, "d": Score(10.0, "l2", Direction.DISTANCE)})
    return [node("r0", 0, 0), odd, node("r1", 1, 0), node("r2", 2, 0)]


def parse_and_apply(payload: object) -> tuple[Operation, ...] | None:
    """Parse, then apply to a fresh tree: only QueryLanguageError may come out of parsing, only
    RegexBudgetError (a catastrophic pattern spent the request's budget) or ConditionTypeError (a
    comparison across kinds) of applying, and no eval or exec may run on the way."""
    refuse = mock.Mock(side_effect=AssertionError("a payload reached eval or exec"))
    with mock.patch("builtins.eval", refuse), mock.patch("builtins.exec", refuse):
        try:
            operations = parse_operations(payload)
        except QueryLanguageError:
            return None
        docs = fuzz_tree()
        before = [copy_tree(doc) for doc in docs]
        try:
            result = apply_operations(docs, operations)
        except (RegexBudgetError, ConditionTypeError):
            assert docs == before
            return operations
    assert all(isinstance(op, Operation) for op in operations)
    assert docs == before
    assert all(isinstance(doc, Document) for doc in result)
    assert SENTINEL == []
    return operations


def test_the_sentinel_would_catch_evaluation() -> None:
    eval(EVALUATED)
    assert SENTINEL == ["evaluated"]
    SENTINEL.clear()


class TestFuzz:
    @SETTINGS
    @given(payload=json_values | st.lists(json_values, max_size=4))
    def test_arbitrary_json_is_parsed_or_refused(self, payload: object) -> None:
        parse_and_apply(payload)

    @SETTINGS
    @given(payload=st.lists(near_operation, max_size=4))
    def test_near_valid_operations_are_parsed_or_refused(self, payload: list) -> None:
        parse_and_apply(payload)

    @SETTINGS
    @given(payload=valid_operations)
    def test_valid_operations_parse_and_apply(self, payload: list) -> None:
        assert parse_and_apply(payload) is not None

    @SETTINGS
    @given(defaults=valid_operations, overrides=valid_operations)
    def test_merge_keeps_every_name_once(self, defaults: list, overrides: list) -> None:
        merged = merge_operations(parse_operations(defaults), parse_operations(overrides))
        names = [op.name for op in merged]
        assert sorted(names) == sorted({op["name"] for op in defaults + overrides})
        assert [op.priority for op in merged] == sorted(op.priority for op in merged)
        parse_and_apply([op.to_dict() for op in merged])
