"""Filter conditions of the query language: a field, a lookup and a value, all plain data.

A field name is looked up in an explicit table of Document attributes, or names a tag or
a score; a lookup is one of a table of small predicates. Nothing a payload says is
evaluated, imported or used as an attribute name.
"""

from __future__ import annotations

import logging
import numbers
import operator
import threading
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

import regex

from processors.document import Document, Score
from processors.exceptions import ConditionTypeError, QueryLanguageError, RegexBudgetError

logger = logging.getLogger(__name__)

__all__ = [
    "FieldRef",
    "Condition",
    "ATTRIBUTES",
    "LOOKUPS",
    "MAX_PATTERN_LENGTH",
    "MAX_REPEAT_PRODUCT",
    "REGEX_TIMEOUT",
    "WARNING_INTERVAL_S",
    "RegexBudget",
    "describe",
]

MAX_PATTERN_LENGTH = 256
"""The longest regex pattern a condition may carry."""

MAX_REPEAT_PRODUCT = 10_000
"""The most the counted repeats (``{m,n}``) of a pattern may multiply to: ``regex`` expands
them when compiling, so ``((a{1000}){1000}){1000}`` would exhaust memory before any timeout."""

REGEX_TIMEOUT = 0.05
"""Seconds one regex search may take before the value counts as not matching (less when the
request's :class:`RegexBudget` has less left)."""

WARNING_INTERVAL_S = 10.0
"""At most one regex-timeout warning line per this many seconds, per process; it counts the rest."""

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


class _TimeoutWarnings:
    """Regex timeouts as warning lines, at most one per ``WARNING_INTERVAL_S``: a hostile pattern
    times out on every value it meets, and one line per value would flood the log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._quiet = 0

    def note(self, pattern: str, length: int) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < WARNING_INTERVAL_S:
                self._quiet += 1
                return
            quiet, self._quiet, self._last = self._quiet, 0, now
        skipped = f" ({quiet} more timeouts not logged in the last {WARNING_INTERVAL_S:.0f} s)" if quiet else ""
        logger.warning("regex %r timed out on a %d-character value; counted as no match%s",
                       pattern[:40], length, skipped)


_TIMEOUTS = _TimeoutWarnings()


class RegexBudget:
    """The regex evaluation time one request has left, spent by every regex condition it runs
    (on a shard, or at the joiner); once spent, the next regex evaluation raises.

    :param seconds: the budget, ``RequestLimits.regex_budget_s``.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._left = seconds
        self._lock = threading.Lock()

    @property
    def left(self) -> float:
        """Seconds left; zero or less once spent."""
        return self._left

    def search(self, pattern: regex.Pattern, text: str) -> bool:
        """Whether ``pattern`` occurs in ``text``; a search that times out counts as no match.

        :raises RegexBudgetError: when the request's regex conditions have used up the budget.
        """
        left = self._left
        if left <= 0:
            raise RegexBudgetError(
                f"regex conditions took over {self.seconds:g} s on this request; the limit regex_budget_s is "
                f"{self.seconds:g} s (pattern {describe(pattern.pattern)})")
        started = time.perf_counter()
        try:
            return pattern.search(text, timeout=min(REGEX_TIMEOUT, left)) is not None
        except TimeoutError:
            _TIMEOUTS.note(pattern.pattern, len(text))
            return False
        finally:
            with self._lock:
                self._left -= time.perf_counter() - started


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

    @property
    def name(self) -> str:
        """The field as a payload names it."""
        return {"attribute": "", "tag": "tags.", "score": "scores."}[self.kind] + self.key

    def score(self, doc: Document) -> Score | None:
        """The named score on ``doc``, or ``None`` when missing or when this is no score field."""
        return doc.scores.get(self.key) if self.kind == "score" else None


def _kind(value: object) -> str:
    """A value's kind as JSON names it; values of different kinds never compare equal or ordered."""
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, (str, regex.Pattern)):
        return "string"
    return type(value).__name__


def _kinds(expected: object) -> frozenset[str]:
    """The kinds of value a condition's expected value (an ``in`` set: any of its items') can match."""
    items = expected if isinstance(expected, frozenset) else (expected,)
    return frozenset(_kind(item) for item in items)


def _scalar(lookup: str, value: object) -> Any:
    if isinstance(value, str) or _is_number(value):
        return value
    raise QueryLanguageError(f"lookup {lookup!r} needs a string or a number, got {describe(value)}")


def _literal(lookup: str, value: object) -> Any:
    if isinstance(value, bool):  # a boolean tag is matched by exact, neq and in, never ordered
        return value
    return _scalar(lookup, value)


def _string(lookup: str, value: object) -> str:
    if isinstance(value, str):
        return value
    raise QueryLanguageError(f"lookup {lookup!r} needs a string, got {describe(value)}")


def _folded(lookup: str, value: object) -> str:
    return _string(lookup, value).casefold()


def _scalars(lookup: str, value: object) -> frozenset[Any]:
    # A set: a long list costs one hash per tested value, not one comparison per item.
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool)) or _is_number(v) for v in value):
        # True == 1 in a set: each value is keyed with its kind so that a boolean never matches a number
        return frozenset((_kind(v), v) for v in value)
    raise QueryLanguageError(f"lookup {lookup!r} needs a list of strings, numbers or booleans, got {describe(value)}")


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


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """A comparison that is simply false across kinds (string against number)."""

    def test(actual: Any, expected: Any) -> bool:
        same_kind = isinstance(actual, str) if isinstance(expected, str) else _is_number(actual)
        return same_kind and compare(actual, expected)

    return test


def _search(actual: Any, pattern: regex.Pattern, budget: RegexBudget) -> bool:
    return isinstance(actual, str) and budget.search(pattern, actual)


def _plain(test: Callable[[Any, Any], bool]) -> Callable[[Any, Any, RegexBudget], bool]:
    """A test that spends no regex budget."""
    return lambda actual, expected, _budget: test(actual, expected)


@dataclass(frozen=True, slots=True)
class _Lookup:
    """How a lookup checks its payload value, and its test of a present field value."""

    check: Callable[[str, object], Any]
    test: Callable[[Any, Any, RegexBudget], bool]
    typed: bool = True
    """Whether a value of another kind than the expected one can never match (every lookup but ``neq``)."""


_LOOKUPS: Mapping[str, _Lookup] = MappingProxyType({
    "exact": _Lookup(_literal, _plain(lambda actual, expected: bool(actual == expected))),
    "neq": _Lookup(_literal, _plain(lambda actual, expected: actual != expected or _kind(actual) != _kind(expected)),
                   typed=False),
    "contains": _Lookup(_string, _plain(lambda actual, expected: isinstance(actual, str) and expected in actual)),
    "icontains": _Lookup(_folded, _plain(
        lambda actual, expected: isinstance(actual, str) and expected in actual.casefold())),
    "in": _Lookup(_scalars, _plain(lambda actual, expected: _hashable(actual) and (_kind(actual), actual) in expected)),
    "startswith": _Lookup(_string, _plain(
        lambda actual, expected: isinstance(actual, str) and actual.startswith(expected))),
    "endswith": _Lookup(_string, _plain(
        lambda actual, expected: isinstance(actual, str) and actual.endswith(expected))),
    "gt": _Lookup(_scalar, _plain(_ordered(operator.gt))),
    "gte": _Lookup(_scalar, _plain(_ordered(operator.ge))),
    "lt": _Lookup(_scalar, _plain(_ordered(operator.lt))),
    "lte": _Lookup(_scalar, _plain(_ordered(operator.le))),
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

    def matches(self, doc: Document, budget: RegexBudget) -> bool:
        """Whether ``doc`` meets the condition; a missing value meets only ``neq``.

        :param budget: the request's regex evaluation time, spent by a ``regex`` lookup.
        :raises RegexBudgetError: when a regex lookup finds the budget spent.
        :raises ConditionTypeError: when the value is of a kind the lookup never matches.
        """
        actual = self.field.value(doc)
        if actual is None:
            return self.lookup == "neq"
        spec = _LOOKUPS[self.lookup]
        if spec.typed:
            self._check_kind(doc, actual)
        return spec.test(actual, self.expected, budget)

    def _check_kind(self, doc: Document, actual: object) -> None:
        kinds = _kinds(self.expected) if self.lookup != "in" else frozenset(kind for kind, _ in self.expected)
        kind = _kind(actual)
        if kinds and kind not in kinds:  # an empty 'in' list matches nothing, whatever the kind
            wanted = " or ".join(sorted(kinds))
            raise ConditionTypeError(
                f"condition {describe(f'{self.field.name}__{self.lookup}')}: {self.field.name} of document "
                f"{describe(doc.id)} is {describe(actual)}, a {kind}; the condition compares with a {wanted}, "
                f"which never matches a {kind}: compare with a {kind}, or index the value as a {wanted}")
