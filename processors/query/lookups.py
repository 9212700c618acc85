"""Filter conditions of the query language: a field, a lookup and a value, all plain data.

A field name is looked up in an explicit table of Document attributes, or names a tag or
a score; a lookup is one of a table of small predicates. Nothing a payload says is
evaluated, imported or used as an attribute name.
"""

from __future__ import annotations

import logging
import numbers
import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

import regex

from processors.document import Document, Score
from processors.exceptions import InvalidParameterError

logger = logging.getLogger(__name__)

__all__ = [
    "QueryLanguageError",
    "FieldRef",
    "Condition",
    "ATTRIBUTES",
    "LOOKUPS",
    "MAX_PATTERN_LENGTH",
    "MAX_REPEAT_PRODUCT",
    "REGEX_TIMEOUT",
    "describe",
]

MAX_PATTERN_LENGTH = 256
"""The longest regex pattern a condition may carry."""

MAX_REPEAT_PRODUCT = 10_000
"""The most the counted repeats (``{m,n}``) of a pattern may multiply to: ``regex`` expands
them when compiling, so ``((a{1000}){1000}){1000}`` would exhaust memory before any timeout."""

REGEX_TIMEOUT = 0.05
"""Seconds one regex search may take before the value counts as not matching."""

ATTRIBUTES: Mapping[str, Callable[[Document], Any]] = MappingProxyType({
    name: operator.attrgetter(name)
    for name in (
        "id", "parent_id", "granularity", "adjacency", "mime_type", "text", "uri",
        "field_name", "modality", "weight", "offset",
    )
})
"""The Document attributes a condition or a sort may read, besides ``tags.<key>`` and ``scores.<name>``."""

_COUNTED_REPEAT = regex.compile(r"\{([0-9]*),?([0-9]*)\}")
# Verbose mode lets whitespace and comments split a count ("a{1 0}"), out of the scan's sight.
_VERBOSE_FLAG = regex.compile(r"\(\?[\w^-]*x")


class QueryLanguageError(InvalidParameterError):
    """An operation of the query language is unknown, malformed or carries a bad value."""


def describe(value: object) -> str:
    """A short description of a payload value for an error message; never a huge repr."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large integer"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A field a condition or a sort reads: an attribute, ``tags.<key>`` or ``scores.<name>``."""

    kind: Literal["attribute", "tag", "score"]
    key: str

    @classmethod
    def parse(cls, name: object) -> FieldRef:
        """Resolve a field name from a payload.

        :param name: an attribute name from :data:`ATTRIBUTES`, ``tags.<key>`` or ``scores.<name>``.
        :returns: the field.
        :raises QueryLanguageError: naming the unknown field and listing the known ones.
        """
        if not isinstance(name, str):
            raise QueryLanguageError(f"a field name must be a string, got {describe(name)}")
        prefix, dot, key = name.partition(".")
        if dot and key and prefix in ("tags", "scores"):
            return cls("tag" if prefix == "tags" else "score", key)
        if name in ATTRIBUTES:
            return cls("attribute", name)
        known = ", ".join((*ATTRIBUTES, "tags.<key>", "scores.<name>"))
        raise QueryLanguageError(f"unknown field {describe(name)}; known: {known}")

    def value(self, doc: Document) -> Any:
        """The field's value on ``doc``; ``None`` when it is missing (a score gives its value)."""
        if self.kind == "attribute":
            return ATTRIBUTES[self.key](doc)
        if self.kind == "tag":
            return doc.tags.get(self.key)
        score = doc.scores.get(self.key)
        return None if score is None else score.value

    def score(self, doc: Document) -> Score | None:
        """The named score on ``doc``, or ``None`` when missing or when this is no score field."""
        return doc.scores.get(self.key) if self.kind == "score" else None


def _scalar(lookup: str, value: object) -> Any:
    if isinstance(value, str) or _is_number(value):
        return value
    raise QueryLanguageError(f"lookup {lookup!r} needs a string or a number, got {describe(value)}")


def _string(lookup: str, value: object) -> str:
    if isinstance(value, str):
        return value
    raise QueryLanguageError(f"lookup {lookup!r} needs a string, got {describe(value)}")


def _folded(lookup: str, value: object) -> str:
    return _string(lookup, value).casefold()


def _scalars(lookup: str, value: object) -> tuple[Any, ...]:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) or _is_number(v) for v in value):
        return tuple(value)
    raise QueryLanguageError(f"lookup {lookup!r} needs a list of strings or numbers, got {describe(value)}")


def _pattern(lookup: str, value: object) -> regex.Pattern:
    pattern = _string(lookup, value)
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise QueryLanguageError(f"regex pattern has {len(pattern)} characters; at most {MAX_PATTERN_LENGTH}")
    if _VERBOSE_FLAG.search(pattern):
        raise QueryLanguageError("regex pattern may not set the verbose flag (?x)")
    product = 1
    for low, high in _COUNTED_REPEAT.findall(pattern):
        product *= max(int(low or 1), int(high or 1), 1)
        if product > MAX_REPEAT_PRODUCT:
            raise QueryLanguageError(f"regex pattern's counted repeats multiply to more than {MAX_REPEAT_PRODUCT}")
    try:
        return regex.compile(pattern)
    except Exception as error:  # noqa: BLE001 - a third-party parser fed untrusted text: any failure is "invalid"
        raise QueryLanguageError(f"regex pattern {describe(pattern)} does not compile: {error}") from None


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """A comparison that is simply false across kinds (string against number)."""

    def test(actual: Any, expected: Any) -> bool:
        same_kind = isinstance(actual, str) if isinstance(expected, str) else _is_number(actual)
        return same_kind and compare(actual, expected)

    return test


def _search(actual: Any, pattern: regex.Pattern) -> bool:
    if not isinstance(actual, str):
        return False
    try:
        return pattern.search(actual, timeout=REGEX_TIMEOUT) is not None
    except TimeoutError:
        logger.warning("regex %r timed out on a %d-character value; counted as no match",
                       pattern.pattern[:40], len(actual))
        return False


@dataclass(frozen=True, slots=True)
class _Lookup:
    """How a lookup checks its payload value, and its test of a present field value."""

    check: Callable[[str, object], Any]
    test: Callable[[Any, Any], bool]


_LOOKUPS: Mapping[str, _Lookup] = MappingProxyType({
    "exact": _Lookup(_scalar, lambda actual, expected: bool(actual == expected)),
    "neq": _Lookup(_scalar, lambda actual, expected: actual != expected),
    "contains": _Lookup(_string, lambda actual, expected: isinstance(actual, str) and expected in actual),
    "icontains": _Lookup(_folded, lambda actual, expected: isinstance(actual, str) and expected in actual.casefold()),
    "in": _Lookup(_scalars, lambda actual, expected: actual in expected),
    "startswith": _Lookup(_string, lambda actual, expected: isinstance(actual, str) and actual.startswith(expected)),
    "endswith": _Lookup(_string, lambda actual, expected: isinstance(actual, str) and actual.endswith(expected)),
    "gt": _Lookup(_scalar, _ordered(operator.gt)),
    "gte": _Lookup(_scalar, _ordered(operator.ge)),
    "lt": _Lookup(_scalar, _ordered(operator.lt)),
    "lte": _Lookup(_scalar, _ordered(operator.le)),
    "regex": _Lookup(_pattern, _search),
})

LOOKUPS: tuple[str, ...] = tuple(_LOOKUPS)
"""The lookups a condition key may end with, Django-style: ``<field>__<lookup>``."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One checked filter condition: ``field`` compared by ``lookup`` to ``expected``."""

    field: FieldRef
    lookup: str
    expected: Any

    @classmethod
    def parse(cls, key: object, value: object) -> Condition:
        """Check one ``<field>__<lookup>: value`` pair; without ``__`` the lookup is ``exact``.

        :param key: the field and lookup, e.g. ``tags.color__in`` or ``text``.
        :param value: what the lookup compares with; its shape depends on the lookup.
        :returns: the condition, its regex (if any) compiled.
        :raises QueryLanguageError: naming the condition and its unknown field or lookup or bad value.
        """
        if not isinstance(key, str):
            raise QueryLanguageError(f"a condition key must be a string, got {describe(key)}")
        name, separator, lookup = key.rpartition("__")
        if not separator:
            name, lookup = key, "exact"
        try:
            spec = _LOOKUPS.get(lookup)
            if spec is None:
                raise QueryLanguageError(f"unknown lookup {describe(lookup)}; known: {', '.join(LOOKUPS)}")
            return cls(FieldRef.parse(name), lookup, spec.check(lookup, value))
        except QueryLanguageError as error:
            raise QueryLanguageError(f"condition {describe(key)}: {error}") from None

    def matches(self, doc: Document) -> bool:
        """Whether ``doc`` meets the condition; a missing value meets only ``neq``."""
        actual = self.field.value(doc)
        if actual is None:
            return self.lookup == "neq"
        return _LOOKUPS[self.lookup].test(actual, self.expected)
