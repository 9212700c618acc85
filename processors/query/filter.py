"""The ``filter`` request parameter: conditions on the root documents' tags, answered by the shards' field
indexes before the vector or BM25 search (a pre-filter), so a selective filter never empties a result
that exists.

The syntax is JSON in the style of MongoDB's query documents (also Qdrant's and DocArray's filters)::

    {"year": {"$gte": 2015, "$lt": 2020}}                     a range (numbers, or ISO 8601 dates)
    {"genre": "drama"}                                        equality (shorthand for {"$eq": "drama"})
    {"genre": {"$in": ["drama", "comedy"]}, "open": true}     several keys: all must hold
    {"rating": {"$exists": true}}
    {"$or": [{...}, {...}]}, {"$and": [...]}, {"$not": {...}}

Operators: ``$eq $ne $in $nin $gt $gte $lt $lte $exists``. A field is a top-level key of a root
document's ``tags`` (a scalar: the Avro schema holds no lists), declared filterable in the flow with a
type (:data:`FIELD_TYPES`). ``$ne`` and ``$nin`` are the negations of ``$eq`` and ``$in``, so they also
match documents without the field (MongoDB's rule).

This module parses and checks; it evaluates nothing. The shard's field index
(``processors.index.scalar``) answers a parsed :data:`Filter` with the set of allowed vector ids.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from processors.exceptions import InvalidParameterError, RequestLimitError
from processors.query.lookups import describe

__all__ = [
    "COMPARISONS",
    "FIELD_TYPES",
    "Combination",
    "Comparison",
    "FieldSchema",
    "FieldType",
    "Filter",
    "check_filter",
    "conditions_of",
    "field_schema",
    "filter_json",
    "parse_filter",
    "stored_value",
    "stored_values",
]

FieldType = Literal["keyword", "number", "date", "boolean"]
FIELD_TYPES: tuple[FieldType, ...] = ("keyword", "number", "date", "boolean")
"""What a filterable field holds: exact strings, finite numbers, ISO 8601 dates or date-times (kept as
seconds since the epoch, UTC where no offset is given), or true/false."""

COMPARISONS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists")
"""The operators of one condition."""
_ORDERED = ("$gt", "$gte", "$lt", "$lte")
_SETS = ("$in", "$nin")
_ALLOWED: Mapping[FieldType, tuple[str, ...]] = {
    "keyword": ("$eq", "$ne", "$in", "$nin", "$exists"),
    "number": COMPARISONS,
    "date": COMPARISONS,
    "boolean": ("$eq", "$ne", "$exists"),
}
_COMBINATIONS = ("$and", "$or", "$not")

FieldSchema = Mapping[str, FieldType]
"""A flow's filterable fields: tag key -> type (``index: with: {filterable: {...}}``)."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """One condition: ``field`` compared by ``operator`` (one of :data:`COMPARISONS`) to ``value``
    (a list for ``$in``/``$nin``, a bool for ``$exists``), as the request gave it."""

    field: str
    operator: str
    value: Any


@dataclass(frozen=True, slots=True)
class Combination:
    """``$and``/``$or`` of its parts, or ``$not`` of its one part."""

    operator: Literal["$and", "$or", "$not"]
    parts: tuple[Filter, ...]


Filter = Comparison | Combination
"""A parsed filter: a tree of combinations with comparisons at its leaves."""


def parse_filter(raw: Any, *, max_conditions: int, max_in_items: int, max_depth: int) -> Filter:
    """Parse the JSON form, checking its shape and size; the types of the fields are checked later, where
    the flow's schema is known (:func:`check_filter`).

    :param raw: the decoded JSON: an object.
    :param max_conditions: comparisons in the whole filter, at most: parsing stops at the first past it.
    :param max_in_items: values in one ``$in``/``$nin`` list, at most.
    :param max_depth: nesting of objects, at most: the parser never recurses deeper.
    :raises InvalidParameterError: naming the part at fault.
    :raises RequestLimitError: for a filter over one of the limits, naming it.
    """
    return _Parser(max_conditions, max_in_items, max_depth).object(raw, "filter", 1)


@dataclass(slots=True)
class _Parser:
    """One filter's parse, with its limits and the comparisons counted so far."""

    max_conditions: int
    max_in_items: int
    max_depth: int
    conditions: int = 0

    def object(self, raw: Any, where: str, depth: int) -> Filter:
        if depth > self.max_depth:
            raise RequestLimitError(f"{where}: nested deeper than {self.max_depth} objects; the limit is "
                                    "max_filter_depth")
        if not isinstance(raw, Mapping) or not raw:
            raise InvalidParameterError(f"{where} must be a non-empty JSON object, got {describe(raw)}")
        parts: list[Filter] = []
        for key, value in raw.items():
            if not isinstance(key, str) or not key:
                raise InvalidParameterError(f"{where}: a key must be a non-empty string, got {describe(key)}")
            here = f"{where}.{key}"
            if key in _COMBINATIONS:
                parts.append(self.combination(key, value, here, depth))
            elif key.startswith("$"):
                raise InvalidParameterError(f"{where}: unknown operator {key!r}; combine with "
                                            f"{', '.join(_COMBINATIONS)}, compare with {', '.join(COMPARISONS)}")
            else:
                parts.extend(self.field(key, value, here))
        return parts[0] if len(parts) == 1 else Combination("$and", tuple(parts))

    def combination(self, key: str, value: Any, where: str, depth: int) -> Filter:
        if key == "$not":
            return Combination("$not", (self.object(value, where, depth + 1),))
        if not isinstance(value, list) or not value:
            raise InvalidParameterError(f"{where} must be a non-empty list of filters, got {describe(value)}")
        if len(value) > self.max_in_items:
            raise RequestLimitError(f"{where} lists {len(value)} filters; the limit max_in_items is {self.max_in_items}")
        return Combination(key, tuple(self.object(part, f"{where}[{i}]", depth + 1)  # type: ignore[arg-type]
                                      for i, part in enumerate(value)))

    def field(self, field: str, value: Any, where: str) -> list[Comparison]:
        operators = value if isinstance(value, Mapping) and value and all(
            isinstance(k, str) and k.startswith("$") for k in value) else {"$eq": value}
        parsed = []
        for operator, operand in operators.items():
            if operator not in COMPARISONS:
                raise InvalidParameterError(f"{where}: unknown operator {operator!r}; known: {', '.join(COMPARISONS)}")
            if operator in _SETS:
                if not isinstance(operand, list) or not operand:
                    raise InvalidParameterError(f"{where}.{operator} must be a non-empty list, got {describe(operand)}")
                if len(operand) > self.max_in_items:
                    raise RequestLimitError(f"{where}.{operator} lists {len(operand)} values; the limit max_in_items "
                                            f"is {self.max_in_items}")
                for member in operand:
                    _check_scalar(member, f"{where}.{operator}")
                operand = tuple(operand)
            elif operator == "$exists":
                if not isinstance(operand, bool):
                    raise InvalidParameterError(f"{where}.$exists must be true or false, got {describe(operand)}")
            else:
                _check_scalar(operand, f"{where}.{operator}")
            self.conditions += 1
            if self.conditions > self.max_conditions:  # stop here: a huge filter costs the limit's worth only
                raise RequestLimitError(f"filter has more than {self.max_conditions} conditions; the limit "
                                        f"max_conditions is {self.max_conditions}")
            parsed.append(Comparison(field, operator, operand))
        return parsed


def _check_scalar(value: Any, where: str) -> None:
    """A value a comparison may hold: a string, a boolean or a finite number (JSON's scalars but null)."""
    if isinstance(value, (str, bool)):
        return
    if isinstance(value, (int, float)) and (isinstance(value, int) or math.isfinite(value)):
        return
    raise InvalidParameterError(f"{where} must be a string, a finite number or a boolean, got {describe(value)}")


def check_filter(parsed: Filter, schema: FieldSchema) -> None:
    """Check every comparison against the flow's filterable fields: the field is declared, the operator
    suits its type, and each value is one of that type.

    :raises InvalidParameterError: naming the field, operator or value at fault, and what is declared.
    """
    for comparison in conditions_of(parsed):
        field_type = schema.get(comparison.field)
        if field_type is None:
            known = ", ".join(f"{name} ({kind})" for name, kind in schema.items()) or (
                "none: declare them in the index stage, `with: {filterable: {FIELD: TYPE}}`")
            raise InvalidParameterError(f"filter: {comparison.field!r} is not a filterable field; filterable: {known}")
        if comparison.operator not in _ALLOWED[field_type]:
            raise InvalidParameterError(f"filter: {comparison.operator} does not apply to {comparison.field!r}, a "
                                        f"{field_type} field; use {', '.join(_ALLOWED[field_type])}")
        if comparison.operator == "$exists":
            continue
        values = comparison.value if comparison.operator in _SETS else (comparison.value,)
        for value in values:
            if stored_value(field_type, value) is None:
                raise InvalidParameterError(f"filter: {comparison.field!r} is a {field_type} field; "
                                            f"{comparison.operator} got {describe(value)}")


def conditions_of(parsed: Filter) -> list[Comparison]:
    """The comparisons of a filter, in order (iteratively: the depth was bounded when parsed)."""
    found, stack = [], [parsed]
    while stack:
        node = stack.pop()
        if isinstance(node, Comparison):
            found.append(node)
        else:
            stack.extend(reversed(node.parts))
    return found


def filter_json(parsed: Filter) -> dict[str, Any]:
    """The JSON form of a parsed filter, explicit (every comparison under its operator): parsing it again
    gives an equal filter. It travels with the request to the shards."""
    if isinstance(parsed, Comparison):
        value = list(parsed.value) if parsed.operator in _SETS else parsed.value
        return {parsed.field: {parsed.operator: value}}
    if parsed.operator == "$not":
        return {"$not": filter_json(parsed.parts[0])}
    if parsed.operator == "$and" and (merged := _merged(parsed.parts)) is not None:
        return merged
    return {parsed.operator: [filter_json(part) for part in parsed.parts]}


def _merged(parts: tuple[Filter, ...]) -> dict[str, Any] | None:
    """An ``$and``'s parts as one object (its implicit form, one nesting level less), or None where two
    parts would need the same key: so that the JSON a shard parses is never nested deeper than the one the
    fan-out checked."""
    merged: dict[str, Any] = {}
    for part in parts:
        if isinstance(part, Comparison):
            operators = merged.setdefault(part.field, {})
            if part.operator in operators:
                return None
            operators.update(filter_json(part)[part.field])
        elif part.operator in merged:
            return None
        else:
            merged.update(filter_json(part))
    return merged


def field_schema(raw: Any, where: str = "filterable") -> dict[str, FieldType]:
    """A flow's declaration of filterable fields, checked.

    :raises InvalidParameterError: for a non-mapping, an empty or ``$`` name, or an unknown type.
    """
    if not isinstance(raw, Mapping):
        raise InvalidParameterError(f"{where} must map tag keys to types ({', '.join(FIELD_TYPES)}), "
                                    f"got {describe(raw)}")
    for name, kind in raw.items():
        if not isinstance(name, str) or not name or name.startswith("$"):
            raise InvalidParameterError(f"{where}: {describe(name)} is not a tag key (non-empty, not starting '$')")
        if kind not in FIELD_TYPES:
            raise InvalidParameterError(f"{where}: field {name!r} has type {describe(kind)}; "
                                        f"use one of {', '.join(FIELD_TYPES)}")
    return dict(raw)


def stored_value(field_type: FieldType, value: Any) -> float | str | bool | None:
    """A tag value as the field index keeps it: a keyword as the string, a number as a float, a date as
    seconds since the epoch, a boolean as itself; None when it is not one of the type's (a tag that does
    not fit its declared type is not indexed, as Elasticsearch's ``ignore_malformed``). A request's values
    are compared in this form too."""
    if field_type == "keyword":
        return value if isinstance(value, str) else None
    if field_type == "boolean":
        return value if isinstance(value, bool) else None
    if field_type == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        try:
            number = float(value)
        except OverflowError:  # an integer past float64's range
            return None
        return number if math.isfinite(number) else None
    return _epoch_seconds(value)


def stored_values(field_type: FieldType, value: Any) -> list[float | str | bool]:
    """A tag's indexable value, as a list of none or one: what a document stores for a field."""
    kept = stored_value(field_type, value)
    return [] if kept is None else [kept]


def _epoch_seconds(value: Any) -> float | None:
    """ISO 8601 date or date-time → seconds since 1970-01-01 UTC (UTC where no offset is given)."""
    if not isinstance(value, str) or not 8 <= len(value) <= 40:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value[:-1] + "+00:00" if value[-1] in "Zz" else value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()
