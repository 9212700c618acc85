"""The query language: operations on the document lists that traversal paths name.

Jina 0.x's QueryLang as plain data and small pure functions. An operation names an
operator, its parameters, a priority and the traversal paths it acts on; a flow's stage
declares default operations, which a request may override by name or extend. Every
payload is checked against explicit tables, never evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

from processors.document import Document, copy_tree, traverse
from processors.exceptions import QueryLanguageError
from processors.query.limits import REQUEST_LIMITS
from processors.query.lookups import Condition, FieldRef, RegexBudget, describe

logger = logging.getLogger(__name__)

__all__ = [
    "Operation",
    "OPERATORS",
    "DOCUMENT_FIELDS",
    "parse_operations",
    "merge_operations",
    "apply_operations",
]

Step = Callable[[list[Document]], list[Document]]
"""What an operator does to one list of documents; it returns a new list."""

_FIELDS = dataclasses.fields(Document)
DOCUMENT_FIELDS: tuple[str, ...] = tuple(f.name for f in _FIELDS)
"""The field names ``select`` and ``exclude`` accept."""

_KEYS = ("operator", "parameters", "priority", "traversal_paths", "name")

_VALIDATING = RegexBudget(0.0)
"""The budget of steps built only to check an operation: they are never run."""


def _integer(name: str, value: object, *, nullable: bool = False) -> int | None:
    if (value is None and nullable) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    expected = "an integer or null" if nullable else "an integer"
    raise QueryLanguageError(f"{name!r} must be {expected}, got {describe(value)}")


def _field_names(fields: object) -> frozenset[str]:
    if not isinstance(fields, (list, tuple)) or not all(isinstance(name, str) for name in fields):
        raise QueryLanguageError(f"parameter 'fields' must be a list of strings, got {describe(fields)}")
    for name in fields:
        if name not in DOCUMENT_FIELDS:
            raise QueryLanguageError(f"unknown field {describe(name)}; known: {', '.join(DOCUMENT_FIELDS)}")
    return frozenset(fields)


def _default(spec: dataclasses.Field) -> Any:
    return spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default


def _reset(docs: list[Document], *, fields: frozenset[str]) -> list[Document]:
    return [dataclasses.replace(doc, **{f.name: _default(f) for f in _FIELDS if f.name in fields}) for doc in docs]


def _filter(parameters: Mapping[str, Any], budget: RegexBudget) -> Step:
    conditions = parameters["conditions"]
    if not isinstance(conditions, Mapping):
        raise QueryLanguageError(
            f"parameter 'conditions' must be an object of '<field>__<lookup>': value, got {describe(conditions)}")
    parsed = tuple(Condition.parse(key, value) for key, value in conditions.items())
    combine = parameters["combine"]
    if not (isinstance(combine, str) and combine in ("and", "or")):
        raise QueryLanguageError(f"parameter 'combine' must be 'and' or 'or', got {describe(combine)}")
    if not parsed:  # no condition keeps everything, so that a request can switch a default filter off
        return list
    test = all if combine == "and" else any
    return lambda docs: [doc for doc in docs if test(condition.matches(doc, budget) for condition in parsed)]


def _select(parameters: Mapping[str, Any], budget: RegexBudget) -> Step:
    keep = _field_names(parameters["fields"]) | {"id"}
    return partial(_reset, fields=frozenset(DOCUMENT_FIELDS) - keep)


def _exclude(parameters: Mapping[str, Any], budget: RegexBudget) -> Step:
    fields = _field_names(parameters["fields"])
    if "id" in fields:
        raise QueryLanguageError("field 'id' cannot be excluded")
    return partial(_reset, fields=fields)


def _slice(parameters: Mapping[str, Any], budget: RegexBudget) -> Step:
    start = _integer("start", parameters["start"])
    end = _integer("end", parameters["end"], nullable=True)
    return lambda docs: docs[start:end]


def _sort_key(field: FieldRef, doc: Document) -> tuple[int, Any] | None:
    """Ascending order puts the best score or the smallest value first; ``None`` (missing, NaN) goes last."""
    if field.kind == "score":
        score = field.score(doc)
        value = score.sort_key() if score is not None and isinstance(score.value, numbers.Real) else None
    else:
        value = field.value(doc)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return None if isinstance(value, float) and math.isnan(value) else (0, value)
    if value is None:
        return None
    # other kinds rank after numbers and strings, by text, so that mixed values never compare
    return (1, value) if isinstance(value, str) else (2, f"{type(value).__name__}:{value}")


def _sorted(docs: list[Document], *, field: FieldRef, reverse: bool) -> list[Document]:
    """Ties, and the documents without a value (last), in ascending id order, whatever ``reverse`` says."""
    keyed = sorted(((_sort_key(field, doc), doc) for doc in docs), key=lambda pair: pair[1].id)
    # Python's sort is stable, also reversed: equal keys keep the id order of the first pass.
    present = sorted((pair for pair in keyed if pair[0] is not None), key=lambda pair: pair[0], reverse=reverse)
    return [doc for _, doc in present] + [doc for key, doc in keyed if key is None]


def _sort(parameters: Mapping[str, Any], budget: RegexBudget) -> Step:
    reverse = parameters["reverse"]
    if not isinstance(reverse, bool):
        raise QueryLanguageError(f"parameter 'reverse' must be true or false, got {describe(reverse)}")
    return partial(_sorted, field=FieldRef.parse(parameters["field"]), reverse=reverse)


def _reverse(parameters: Mapping[str, Any], budget: RegexBudget) -> Step:
    return lambda docs: docs[::-1]


@dataclass(frozen=True, slots=True)
class _Operator:
    """An operator's parameters (required, then optional with defaults) and its compiler, which
    binds the regex budget its conditions spend."""

    required: tuple[str, ...]
    defaults: Mapping[str, Any]
    compile: Callable[[Mapping[str, Any], RegexBudget], Step]


_OPERATORS: Mapping[str, _Operator] = MappingProxyType({
    "filter": _Operator(("conditions",), {"combine": "and"}, _filter),
    "select": _Operator(("fields",), {}, _select),
    "exclude": _Operator(("fields",), {}, _exclude),
    "slice": _Operator((), {"start": 0, "end": None}, _slice),
    "sort": _Operator(("field",), {"reverse": False}, _sort),
    "reverse": _Operator((), {}, _reverse),
})

OPERATORS: tuple[str, ...] = tuple(_OPERATORS)
"""The operator names an operation may use."""


def _operator(name: object) -> _Operator:
    spec = _OPERATORS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise QueryLanguageError(f"unknown operator {describe(name)}; known: {', '.join(OPERATORS)}")
    return spec


def _compile(spec: _Operator, parameters: object, budget: RegexBudget) -> tuple[dict[str, Any], Step]:
    """Check an operator's parameters; the one place they are validated.

    :returns: the parameters with defaults filled in, and what the operator does to a list.
    """
    if not isinstance(parameters, Mapping):
        raise QueryLanguageError(f"'parameters' must be an object, got {describe(parameters)}")
    known = (*spec.required, *spec.defaults)
    for key in parameters:
        if key not in known:
            raise QueryLanguageError(f"unknown parameter {describe(key)}; known: {', '.join(known) or 'none'}")
    for key in spec.required:
        if key not in parameters:
            raise QueryLanguageError(f"missing parameter {key!r}")
    values = {**spec.defaults, **parameters}
    return values, spec.compile(values, budget)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _check_paths(paths: object) -> tuple[str, ...]:
    if not isinstance(paths, (list, tuple)) or not paths:
        raise QueryLanguageError(f"'traversal_paths' must be a non-empty list such as ['r', 'm'], got {describe(paths)}")
    for path in paths:
        if not (isinstance(path, str) and (path == "r" or (path and set(path) <= {"c", "m"}))):
            raise QueryLanguageError(
                f"bad traversal path {describe(path)}: use 'r' alone or a string of 'c' and 'm' such as 'cm'")
    if len(set(paths)) != len(paths):
        raise QueryLanguageError(f"'traversal_paths' repeats a path: {', '.join(paths)}")
    return tuple(paths)


@dataclass(frozen=True, slots=True)
class Operation:
    """One step of the query language, checked when built.

    :param operator: one of :data:`OPERATORS`.
    :param parameters: the operator's parameters; kept as a frozen copy with defaults filled in.
    :param priority: operations run in ascending priority; ties keep their declaration order.
    :param traversal_paths: the document lists to act on: ``r`` the root list, ``m`` each root's
        matches, ``c`` its chunks, ``cm`` the matches of each chunk, and so on. A list is accepted.
    :param name: what a request names to override this operation; empty means the operator's name.
    :param regex_budget: the regex evaluation time of the request this operation runs for, shared
        by the operations of one request (``SearchParameters.operations_for``); None: each
        ``apply_operations`` call gets ``RequestLimits.regex_budget_s`` of its own.
    :raises QueryLanguageError: naming the operator, parameter, field or path at fault.
    """

    operator: str
    parameters: Mapping[str, Any] = field(default_factory=dict, hash=False)
    priority: int = 0
    traversal_paths: tuple[str, ...] = ("r",)
    name: str = ""
    regex_budget: RegexBudget | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        spec = _operator(self.operator)
        try:
            values, _ = _compile(spec, self.parameters, _VALIDATING)
            _integer("priority", self.priority)
            paths = _check_paths(self.traversal_paths)
            if not isinstance(self.name, str):
                raise QueryLanguageError(f"'name' must be a string, got {describe(self.name)}")
        except QueryLanguageError as error:
            raise QueryLanguageError(f"operator {self.operator!r}: {error}") from None
        object.__setattr__(self, "parameters", _freeze(values))
        object.__setattr__(self, "traversal_paths", paths)
        object.__setattr__(self, "name", self.name or self.operator)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-like form :func:`parse_operations` reads back."""
        return {
            "operator": self.operator,
            "parameters": _thaw(self.parameters),
            "priority": self.priority,
            "traversal_paths": list(self.traversal_paths),
            "name": self.name,
        }


def _parse_one(raw: object) -> Operation:
    if not isinstance(raw, Mapping):
        raise QueryLanguageError(f"an operation must be an object, got {describe(raw)}")
    for key in raw:
        if key not in _KEYS:
            raise QueryLanguageError(f"unknown key {describe(key)}; known: {', '.join(_KEYS)}")
    if "operator" not in raw:
        raise QueryLanguageError("missing key 'operator'")
    return Operation(
        operator=raw["operator"],
        parameters=raw.get("parameters", {}),
        priority=raw.get("priority", 0),
        traversal_paths=raw.get("traversal_paths", ("r",)),
        name=raw.get("name", ""),
    )


def _check_unique_names(operations: Sequence[Operation]) -> None:
    seen: set[str] = set()
    for operation in operations:
        if operation.name in seen:
            raise QueryLanguageError(f"two operations are named {operation.name!r}; give each its own 'name'")
        seen.add(operation.name)


def parse_operations(raw: object) -> tuple[Operation, ...]:
    """Check a JSON-like list of operations from a request or a flow's YAML.

    :param raw: a list of objects with ``operator`` and optionally ``parameters``, ``priority``,
        ``traversal_paths`` and ``name``.
    :returns: the operations, in declaration order.
    :raises QueryLanguageError: naming the operation (by index) and what is wrong with it.
    """
    if not isinstance(raw, (list, tuple)):
        raise QueryLanguageError(f"operations must be a list, got {describe(raw)}")
    operations = []
    for index, item in enumerate(raw):
        try:
            operations.append(_parse_one(item))
        except QueryLanguageError as error:
            raise QueryLanguageError(f"operations[{index}]: {error}") from None
    _check_unique_names(operations)
    return tuple(operations)


def merge_operations(defaults: Sequence[Operation], overrides: Sequence[Operation]) -> tuple[Operation, ...]:
    """A stage's default operations, overridden or extended by a request's.

    An override replaces the default of the same name in its place; the others are added
    after the defaults.

    :param defaults: the stage's operations, e.g. from the flow YAML.
    :param overrides: the request's operations.
    :returns: the operations in execution order: ascending priority, then declaration order.
    :raises QueryLanguageError: when two operations on one side share a name.
    """
    _check_unique_names(defaults)
    _check_unique_names(overrides)
    replacing = {operation.name: operation for operation in overrides}
    merged = [replacing.pop(operation.name, operation) for operation in defaults]
    merged += [operation for operation in overrides if operation.name in replacing]
    return tuple(sorted(merged, key=attrgetter("priority")))


def apply_operations(docs: Sequence[Document], operations: Iterable[Operation]) -> list[Document]:
    """Run operations over copies of ``docs``, in ascending priority; the input is never changed.

    :param docs: the root documents.
    :param operations: checked operations, e.g. from :func:`merge_operations`; their regex
        conditions spend the operations' ``regex_budget`` (else a budget for this call alone).
    :returns: the new root list.
    :raises RegexBudgetError: when regex conditions have used up the request's budget.
    """
    ordered = sorted(operations, key=attrgetter("priority"))
    budget = next((op.regex_budget for op in ordered if op.regex_budget is not None), None) \
        or RegexBudget(REQUEST_LIMITS.regex_budget_s)
    roots = [copy_tree(doc) for doc in docs]
    for operation in ordered:
        _, step = _compile(_OPERATORS[operation.operator], operation.parameters, budget)
        for path in operation.traversal_paths:
            if path == "r":
                roots = step(roots)
                continue
            parents = roots if len(path) == 1 else [node for root in roots for node in traverse(root, path[:-1])]
            for parent in parents:
                if path[-1] == "c":
                    parent.chunks = step(parent.chunks)
                else:
                    parent.matches = step(parent.matches)
    return roots
