import logging
import random
from typing import Any

import pytest

from processors.document import Direction, Document, Score, copy_tree, traverse
from processors.exceptions import ConditionTypeError, QueryLanguageError
from processors.query import lookups
from processors.query.lookups import ATTRIBUTES, LOOKUPS
from processors.query.operators import (
    DOCUMENT_FIELDS,
    OPERATORS,
    Operation,
    apply_operations,
    merge_operations,
    parse_operations,
)
from processors.query.parameters import InvalidParameterError
from tests.processors.query.fixtures import PATHS, node


def docs_at(roots: list[Document], path: str) -> list[Document]:
    return list(roots) if path == "r" else [doc for root in roots for doc in traverse(root, path)]


def lists_at(roots: list[Document], path: str) -> list[list[str]]:
    """The ids of each list a path names: the root list, or one list per parent."""
    if path == "r":
        return [[doc.id for doc in roots]]
    parents = roots if len(path) == 1 else docs_at(roots, path[:-1])
    return [[doc.id for doc in (parent.chunks if path[-1] == "c" else parent.matches)] for parent in parents]


def expected(tree: list[Document], path: str, positions: list[int]) -> list[list[str]]:
    return [[ids[p] for p in positions] for ids in lists_at(tree, path)]


def run(tree: list[Document], *operations: Operation) -> list[Document]:
    """Apply, and check the input tree was left as it was."""
    before = [copy_tree(doc) for doc in tree]
    result = apply_operations(tree, operations)
    assert tree == before
    return result


def assert_only_below(tree: list[Document], result: list[Document], path: str) -> None:
    """Lists that are neither at ``path`` nor below it are unchanged."""
    for other in PATHS:
        if path != "r" and not other.startswith(path):
            assert lists_at(result, other) == lists_at(tree, other), other


LOOKUP_CASES: list[tuple[dict[str, Any], list[int]]] = [
    ({"tags.color": "red"}, [0]),
    ({"tags.color__exact": "blue"}, [1]),
    ({"tags.color__neq": "red"}, [1, 2]),
    ({"uri__exact": "x"}, []),
    ({"parent_id__neq": "x"}, [0, 1, 2]),
    ({"text__contains": "Sky"}, [1]),
    ({"text__contains": "sky"}, []),
    ({"text__icontains": "SKY"}, [1]),
    ({"tags.color__in": ["red", "green"]}, [0]),
    ({"weight__in": [1, 2]}, [1, 2]),
    ({"id__in": ["r0", "r2"]}, [0, 2]),
    ({"tags.color__in": []}, []),
    ({"text__startswith": "Red"}, [0]),
    ({"text__endswith": "Sky"}, [1]),
    ({"weight__gt": 1.0}, [0, 2]),
    ({"weight__gte": 2}, [0, 2]),
    ({"weight__lt": 2}, [1]),
    ({"weight__lte": 2.0}, [1, 2]),
    ({"text__gte": "a"}, [1]),
    ({"scores.score__gt": 0.5}, [1]),
    ({"scores.score__lte": 0.5}, [0]),
    ({"scores.other__neq": 0.5}, [0, 1, 2]),
    ({"text__regex": "^[A-Z]"}, [0]),
    ({"text__regex": "S.y$"}, [1]),
    ({"id__regex": r"\d$"}, [0, 1, 2]),
    ({"granularity": 0, "mime_type": "text/plain"}, [0, 1, 2]),
    ({"tags.color": "red", "weight__gt": 5}, []),
]


@pytest.fixture
def tree() -> list[Document]:
    return [node(f"r{i}", i, 0) for i in range(3)]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    return request.param


class TestFilter:
    def test_on_each_path(self, tree: list[Document], path: str) -> None:
        result = run(tree, Operation("filter", {"conditions": {"tags.color": "red"}}, traversal_paths=(path,)))
        assert lists_at(result, path) == expected(tree, path, [0])
        assert_only_below(tree, result, path)

    @pytest.mark.parametrize(("conditions", "kept"), LOOKUP_CASES)
    def test_lookups(self, tree: list[Document], conditions: dict[str, Any], kept: list[int]) -> None:
        result = run(tree, Operation("filter", {"conditions": conditions}))
        assert [doc.id for doc in result] == [f"r{i}" for i in kept]

    def test_every_lookup_is_covered(self) -> None:
        covered = {key.rpartition("__")[2] for conditions, _ in LOOKUP_CASES for key in conditions if "__" in key}
        assert covered == set(LOOKUPS)

    @pytest.mark.parametrize("conditions", [
        {"tags.size__gt": 5}, {"text__gt": 1}, {"weight__gt": "a"}, {"weight__contains": "1"},
        {"weight__regex": "1"}, {"tags.size__exact": 10},
    ])
    def test_type_mismatch_is_refused(self, tree: list[Document], conditions: dict[str, Any]) -> None:
        """A comparison that can never match because of a kind (a text tag against a number) is an
        error naming the document and the kinds, not an empty result without a word."""
        with pytest.raises(ConditionTypeError, match="never matches"):
            run(tree, Operation("filter", {"conditions": conditions}))

    @pytest.mark.parametrize(("conditions", "kept"), [
        ({"tags.minutes__lte": 10}, ["a"]), ({"tags.minutes__gt": 9.5}, ["a", "b"]),
        ({"tags.minutes": 10}, ["a"]), ({"tags.minutes__in": [10, "10"]}, ["a"]),
        ({"tags.vegan": True}, ["b"]), ({"tags.vegan__in": [1]}, []), ({"tags.vegan__neq": 1}, ["a", "b"]),
    ])
    def test_typed_tags_compare_as_their_kind(self, conditions: dict[str, Any], kept: list[str]) -> None:
        docs = [Document(id="a", tags={"minutes": 10, "vegan": False}),
                Document(id="b", tags={"minutes": 12.5, "vegan": True})]
        if conditions == {"tags.vegan__in": [1]}:  # True == 1 in Python: a boolean is not the number 1
            with pytest.raises(ConditionTypeError):
                run(docs, Operation("filter", {"conditions": conditions}))
            return
        assert [doc.id for doc in run(docs, Operation("filter", {"conditions": conditions}))] == kept

    def test_or_combines(self, tree: list[Document]) -> None:
        operation = Operation("filter", {"conditions": {"tags.color": "red", "weight__lt": 2}, "combine": "or"})
        assert [doc.id for doc in run(tree, operation)] == ["r0", "r1"]

    @pytest.mark.parametrize("combine", ["and", "or"])
    def test_no_condition_keeps_everything(self, tree: list[Document], combine: str) -> None:
        assert run(tree, Operation("filter", {"conditions": {}, "combine": combine})) == tree

    def test_tag_names_with_double_underscores_need_a_lookup(self, tree: list[Document]) -> None:
        tree[0].tags["a__b"] = "x"
        assert [d.id for d in run(tree, Operation("filter", {"conditions": {"tags.a__b__exact": "x"}}))] == ["r0"]
        with pytest.raises(QueryLanguageError, match="unknown lookup 'b'"):
            Operation("filter", {"conditions": {"tags.a__b": "x"}})

    def test_regex_timeout_is_no_match_and_a_warning(self, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(lookups, "_TIMEOUTS", lookups._TimeoutWarnings())  # no line of an earlier test's
        docs = [Document(id="slow", text="a" * 60 + "!"), Document(id="fast", text="aa")]
        with caplog.at_level(logging.WARNING, logger="processors.query.lookups"):
            # A budget no machine load can spend: under load the slow search's 50 ms timeout takes longer
            # in wall time, and with the default 0.25 s the fast document found the budget spent (flaky).
            budget = lookups.RegexBudget(60.0)
            result = run(docs, Operation("filter", {"conditions": {"text__regex": "(a|aa)+$"}}, regex_budget=budget))
        assert [doc.id for doc in result] == ["fast"]
        assert "timed out" in caplog.text

    @pytest.mark.parametrize(("pattern", "message"), [
        ("(", "does not compile"),
        ("a" * 257, "257 characters; at most 256"),
        ("((((a{1000}){1000}){1000}){1000})", "counted repeats"),
        ("a{100000}", "counted repeats"),
        ("(?x)(a{#}\n1000}){#}\n1000}", "verbose"),
        ("(?ix:a)", "verbose"),
        (5, "lookup 'regex' needs a string, got 5"),
    ])
    def test_unsafe_or_bad_regex_is_refused(self, pattern: object, message: str) -> None:
        with pytest.raises(QueryLanguageError, match=message):
            Operation("filter", {"conditions": {"text__regex": pattern}})

    @pytest.mark.parametrize(("conditions", "message"), [
        (["text"], "'conditions' must be an object"),
        ({"text__like": "a"}, r"condition 'text__like': unknown lookup 'like'; known: exact, neq, contains"),
        ({"body": "a"}, r"condition 'body': unknown field 'body'; known: id, parent_id, .*tags.<key>, scores.<name>"),
        ({"tags.": "a"}, "unknown field 'tags.'"),
        ({"__class__": "a"}, "condition '__class__': unknown lookup ''"),
        ({"__class____exact": "a"}, "unknown field '__class__'"),
        ({"text__in": "abc"}, "lookup 'in' needs a list of strings, numbers or booleans, got 'abc'"),
        ({"text__in": [["a"]]}, "lookup 'in' needs a list"),
        ({"text__in": [None]}, "lookup 'in' needs a list"),
        ({"text": None}, "lookup 'exact' needs a string or a number, got None"),
        ({"weight__gt": True}, "lookup 'gt' needs a string or a number, got True"),
        ({"text__exact": [1]}, "got a list"),
        ({"text__contains": 3}, "lookup 'contains' needs a string, got 3"),
        ({"text__startswith": 10**5000}, "got a very large integer"),
        ({1: "a"}, "a condition key must be a string, got 1"),
    ])
    def test_bad_conditions_name_the_problem(self, conditions: object, message: str) -> None:
        with pytest.raises(QueryLanguageError, match=message):
            Operation("filter", {"conditions": conditions})

    def test_bad_combine(self) -> None:
        with pytest.raises(QueryLanguageError, match="'combine' must be 'and' or 'or', got 'xor'"):
            Operation("filter", {"conditions": {}, "combine": "xor"})

    def test_filterable_attributes_are_document_fields(self) -> None:
        assert set(ATTRIBUTES) <= set(DOCUMENT_FIELDS)


class TestSelect:
    def test_on_each_path(self, tree: list[Document], path: str) -> None:
        result = run(tree, Operation("select", {"fields": ["text"]}, traversal_paths=(path,)))
        assert lists_at(result, path) == lists_at(tree, path)
        for kept, original in zip(docs_at(result, path), docs_at(tree, path)):
            assert kept == Document(id=original.id, text=original.text)

    def test_keeps_the_fields_named(self, tree: list[Document]) -> None:
        result = run(tree, Operation("select", {"fields": ["id", "matches", "tags"]}))
        assert [doc.matches for doc in result] == [doc.matches for doc in tree]
        assert [doc.tags for doc in result] == [doc.tags for doc in tree]
        assert all(doc.chunks == [] and doc.text is None and doc.scores == {} for doc in result)

    def test_reset_fields_are_not_shared(self, tree: list[Document]) -> None:
        result = run(tree, Operation("select", {"fields": []}))
        result[0].tags["x"] = "y"
        assert result[1].tags == {}

    @pytest.mark.parametrize(("fields", "message"), [
        ("text", "'fields' must be a list of strings, got 'text'"),
        ([1], "'fields' must be a list of strings"),
        (["body"], "unknown field 'body'; known: id, parent_id"),
        (["tags.color"], "unknown field 'tags.color'"),
    ])
    def test_bad_fields(self, fields: object, message: str) -> None:
        with pytest.raises(QueryLanguageError, match=message):
            Operation("select", {"fields": fields})


class TestExclude:
    def test_on_each_path(self, tree: list[Document], path: str) -> None:
        result = run(tree, Operation("exclude", {"fields": ["tags", "scores"]}, traversal_paths=(path,)))
        assert lists_at(result, path) == lists_at(tree, path)
        for kept, original in zip(docs_at(result, path), docs_at(tree, path)):
            assert (kept.tags, kept.scores) == ({}, {})
            assert (kept.id, kept.text, kept.weight) == (original.id, original.text, original.weight)

    def test_id_cannot_be_excluded(self) -> None:
        with pytest.raises(QueryLanguageError, match="field 'id' cannot be excluded"):
            Operation("exclude", {"fields": ["text", "id"]})


class TestSlice:
    @pytest.mark.parametrize(("parameters", "kept"), [
        ({"start": 1}, [1, 2]), ({"start": -1}, [2]), ({"end": 1}, [0]), ({"start": 0, "end": -1}, [0, 1]),
        ({"start": 10**30}, []), ({}, [0, 1, 2]), ({"start": 1, "end": None}, [1, 2]),
    ])
    def test_on_each_path(self, tree: list[Document], path: str, parameters: dict, kept: list[int]) -> None:
        result = run(tree, Operation("slice", parameters, traversal_paths=(path,)))
        assert lists_at(result, path) == expected(tree, path, kept)
        assert_only_below(tree, result, path)

    @pytest.mark.parametrize(("parameters", "message"), [
        ({"start": "1"}, "'start' must be an integer, got '1'"),
        ({"start": 1.0}, "'start' must be an integer, got 1.0"),
        ({"start": None}, "'start' must be an integer, got None"),
        ({"end": True}, "'end' must be an integer or null, got True"),
        ({"stop": 1}, "unknown parameter 'stop'; known: start, end"),
    ])
    def test_bad_parameters(self, parameters: dict, message: str) -> None:
        with pytest.raises(QueryLanguageError, match=message):
            Operation("slice", parameters)


class TestSort:
    @pytest.mark.parametrize(("parameters", "order"), [
        ({"field": "scores.score"}, [1, 0, 2]),
        ({"field": "scores.score", "reverse": True}, [0, 1, 2]),
        ({"field": "weight"}, [1, 2, 0]),
        ({"field": "weight", "reverse": True}, [0, 2, 1]),
        ({"field": "text"}, [0, 1, 2]),
        ({"field": "tags.color"}, [1, 0, 2]),
        ({"field": "tags.color", "reverse": True}, [0, 1, 2]),
        ({"field": "uri"}, [0, 1, 2]),
    ])
    def test_on_each_path(self, tree: list[Document], path: str, parameters: dict, order: list[int]) -> None:
        result = run(tree, Operation("sort", parameters, traversal_paths=(path,)))
        assert lists_at(result, path) == expected(tree, path, order)
        assert_only_below(tree, result, path)

    def test_distance_scores_sort_smallest_first(self) -> None:
        docs = [Document(id=str(v), scores={"d": Score(v, "l2", Direction.DISTANCE)}) for v in (0.5, 0.1, 0.9)]
        docs.append(Document(id="none"))
        assert [d.id for d in run(docs, Operation("sort", {"field": "scores.d"}))] == ["0.1", "0.5", "0.9", "none"]

    def test_mixed_values_never_raise(self) -> None:
        values: list[Any] = [3, "a", None, 2.5, [1], float("nan"), 10**5000, True]
        docs = [Document(id=str(i), tags={"v": v}) for i, v in enumerate(values)]  # type: ignore[dict-item]
        docs.append(Document(id="missing"))
        docs.append(Document(id="nan-score", scores={"s": Score(float("nan"), "x", Direction.SIMILARITY)}))
        order = [d.id for d in run(docs, Operation("sort", {"field": "tags.v"}))]
        assert order == ["3", "0", "6", "1", "7", "4", "2", "5", "missing", "nan-score"]
        by_score = run(docs, Operation("sort", {"field": "scores.s", "reverse": True}))
        assert [d.id for d in by_score] == [d.id for d in docs]

    @pytest.mark.parametrize("reverse", [False, True])
    @pytest.mark.parametrize("direction", [Direction.SIMILARITY, Direction.DISTANCE])
    def test_ties_and_missing_values_go_in_id_order_whatever_the_input_order(self, reverse: bool,
                                                                            direction: Direction) -> None:
        docs = [Document(id=doc_id, scores={"s": Score(value, "op", direction)})
                for doc_id, value in [("d", 0.5), ("b", 0.5), ("e", 0.9), ("a", 0.5), ("c", 0.9)]]
        docs += [Document(id="y"), Document(id="x")]
        sort = Operation("sort", {"field": "scores.s", "reverse": reverse})
        orders = [random.Random(seed).sample(docs, len(docs)) for seed in range(30)]
        answers = {tuple(doc.id for doc in run(order, sort)) for order in orders}
        best_first = direction is Direction.SIMILARITY
        high, low = ("c", "e"), ("a", "b", "d")
        assert answers == {(*(high + low if best_first != reverse else low + high), "x", "y")}

    @pytest.mark.parametrize(("parameters", "message"), [
        ({}, "missing parameter 'field'"),
        ({"field": "embedding"}, "unknown field 'embedding'"),
        ({"field": "__class__"}, "unknown field '__class__'"),
        ({"field": 3}, "a field name must be a string, got 3"),
        ({"field": "weight", "reverse": "yes"}, "'reverse' must be true or false, got 'yes'"),
        ({"field": "weight", "reverse": 1}, "'reverse' must be true or false, got 1"),
    ])
    def test_bad_parameters(self, parameters: dict, message: str) -> None:
        with pytest.raises(QueryLanguageError, match=message):
            Operation("sort", parameters)


class TestReverse:
    def test_on_each_path(self, tree: list[Document], path: str) -> None:
        result = run(tree, Operation("reverse", traversal_paths=(path,)))
        assert lists_at(result, path) == expected(tree, path, [2, 1, 0])
        assert_only_below(tree, result, path)

    def test_takes_no_parameters(self) -> None:
        with pytest.raises(QueryLanguageError, match="unknown parameter 'x'; known: none"):
            Operation("reverse", {"x": 1})


class TestParseOperations:
    def test_defaults_are_filled_in(self) -> None:
        (operation,) = parse_operations([{"operator": "sort", "parameters": {"field": "weight"}}])
        assert operation == Operation("sort", {"field": "weight", "reverse": False}, 0, ("r",), "sort")
        assert operation.name == "sort"

    def test_reads_every_key(self) -> None:
        raw = {"operator": "slice", "parameters": {"end": 2}, "priority": -3, "traversal_paths": ["m", "cm"],
               "name": "top2"}
        (operation,) = parse_operations([raw])
        assert (operation.priority, operation.traversal_paths, operation.name) == (-3, ("m", "cm"), "top2")
        assert parse_operations([operation.to_dict()]) == (operation,)

    def test_parameters_are_a_frozen_copy(self) -> None:
        fields = ["text"]
        operation = Operation("select", {"fields": fields})
        fields.append("tags")
        assert operation.parameters["fields"] == ("text",)
        with pytest.raises(TypeError):
            operation.parameters["fields"] = ()  # type: ignore[index]
        assert isinstance(hash(operation), int)

    def test_empty_list(self) -> None:
        assert parse_operations([]) == ()

    def test_is_an_invalid_parameter_error(self) -> None:
        assert issubclass(QueryLanguageError, InvalidParameterError)

    @pytest.mark.parametrize(("raw", "message"), [
        ("filter", "operations must be a list, got 'filter'"),
        ({"operator": "slice"}, "operations must be a list, got a dict"),
        ([3], r"operations\[0\]: an operation must be an object, got 3"),
        ([{"operator": "reverse"}, {"operator": "filtre"}],
         r"operations\[1\]: unknown operator 'filtre'; known: filter, select, exclude, slice, sort, reverse"),
        ([{"operator": None}], "unknown operator None"),
        ([{"operator": 10**5000}], "unknown operator a very large integer"),
        ([{"parameters": {}}], "missing key 'operator'"),
        ([{"operator": "slice", "params": {}}], "unknown key 'params'; known: operator, parameters, priority"),
        ([{"operator": "slice", "parameters": []}], "operator 'slice': 'parameters' must be an object, got a list"),
        ([{"operator": "slice", "priority": True}], "operator 'slice': 'priority' must be an integer, got True"),
        ([{"operator": "slice", "priority": "1"}], "'priority' must be an integer, got '1'"),
        ([{"operator": "slice", "traversal_paths": "cm"}], "'traversal_paths' must be a non-empty list"),
        ([{"operator": "slice", "traversal_paths": []}], "'traversal_paths' must be a non-empty list"),
        ([{"operator": "slice", "traversal_paths": ["x"]}], "bad traversal path 'x'"),
        ([{"operator": "slice", "traversal_paths": ["rc"]}], "bad traversal path 'rc'"),
        ([{"operator": "slice", "traversal_paths": ["R"]}], "bad traversal path 'R'"),
        ([{"operator": "slice", "traversal_paths": [""]}], "bad traversal path ''"),
        ([{"operator": "slice", "traversal_paths": [1]}], "bad traversal path 1"),
        ([{"operator": "slice", "traversal_paths": ["m", "m"]}], "'traversal_paths' repeats a path"),
        ([{"operator": "slice", "name": 3}], "'name' must be a string, got 3"),
        ([{"operator": "reverse"}, {"operator": "reverse"}], "two operations are named 'reverse'"),
    ])
    def test_bad_payloads_name_the_problem(self, raw: object, message: str) -> None:
        with pytest.raises(QueryLanguageError, match=message):
            parse_operations(raw)

    def test_known_operators(self) -> None:
        assert OPERATORS == ("filter", "select", "exclude", "slice", "sort", "reverse")


class TestMergeOperations:
    def test_override_replaces_the_default_of_the_same_name(self) -> None:
        default = Operation("filter", {"conditions": {"tags.color": "red"}}, name="color")
        override = Operation("filter", {"conditions": {"tags.color": "blue"}}, name="color")
        merged = merge_operations([default, Operation("slice", {"end": 5})], [override])
        assert merged == (override, Operation("slice", {"end": 5}))

    def test_other_overrides_are_added_after_the_defaults(self) -> None:
        defaults = [Operation("filter", {"conditions": {}}, name="color"), Operation("slice")]
        overrides = [Operation("reverse"), Operation("filter", {"conditions": {}})]
        assert [op.name for op in merge_operations(defaults, overrides)] == ["color", "slice", "reverse", "filter"]

    def test_order_is_priority_then_declaration(self) -> None:
        defaults = [Operation("slice", priority=5), Operation("sort", {"field": "id"}, priority=1)]
        overrides = [Operation("reverse", priority=1), Operation("slice", priority=-1),
                     Operation("filter", {"conditions": {}}, priority=1)]
        merged = merge_operations(defaults, overrides)
        assert [(op.name, op.priority) for op in merged] == [
            ("slice", -1), ("sort", 1), ("reverse", 1), ("filter", 1)]

    def test_empty_override_switches_a_default_filter_off(self, tree: list[Document]) -> None:
        default = Operation("filter", {"conditions": {"tags.color": "red"}})
        merged = merge_operations([default], parse_operations([{"operator": "filter", "parameters": {"conditions": {}}}]))
        assert run(tree, *merged) == tree

    @pytest.mark.parametrize("side", ["defaults", "overrides"])
    def test_duplicate_names_on_one_side(self, side: str) -> None:
        twice = [Operation("reverse"), Operation("reverse")]
        with pytest.raises(QueryLanguageError, match="two operations are named 'reverse'"):
            merge_operations(twice, []) if side == "defaults" else merge_operations([], twice)


class TestApplyOperations:
    def test_runs_in_priority_order(self, tree: list[Document]) -> None:
        cut = Operation("slice", {"end": 1}, priority=1)
        order = Operation("sort", {"field": "weight"}, priority=0)
        assert [doc.id for doc in run(tree, cut, order)] == ["r1"]

    def test_ties_keep_declaration_order(self, tree: list[Document]) -> None:
        cut = Operation("slice", {"end": 1})
        order = Operation("sort", {"field": "weight"})
        assert [doc.id for doc in run(tree, cut, order)] == ["r0"]
        assert [doc.id for doc in run(tree, order, cut)] == ["r1"]

    def test_one_operation_on_several_paths(self, tree: list[Document]) -> None:
        result = run(tree, Operation("slice", {"end": 1}, traversal_paths=("m", "cm")))
        assert lists_at(result, "m") == expected(tree, "m", [0])
        assert lists_at(result, "cm") == expected(tree, "cm", [0])
        assert lists_at(result, "c") == lists_at(tree, "c")

    def test_returns_copies(self, tree: list[Document]) -> None:
        result = run(tree)
        assert result == tree
        result[0].matches.clear()
        result[0].tags["x"] = "y"
        assert len(tree[0].matches) == 3 and "x" not in tree[0].tags
