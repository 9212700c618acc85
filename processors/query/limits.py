"""What one search request may cost: every per-request limit, declared and checked in one place.

The CLI, the client, the HTTP bridge (``GET /limits``) and the search page read their bounds
from :data:`REQUEST_LIMITS` too, so that no front door promises what the flow refuses.

The encode stage checks each request once, before it fans out, and answers a request over a
limit with an error reply naming the limit (HTTP 400). The regex budget alone is spent where
conditions run (on each shard and at the joiner): see :class:`~processors.query.lookups.RegexBudget`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Mapping, Sequence

from processors.exceptions import InvalidParameterError, RequestLimitError
from processors.query.lookups import Condition, describe
from processors.query.filter import FieldSchema, check_filter

if TYPE_CHECKING:
    from processors.query.parameters import SearchParameters

__all__ = ["RequestLimitError", "RequestLimits", "REQUEST_LIMITS"]


CLOCK_SKEW_MS = 30_000
"""How far a client's clock may run ahead of a stage's before its deadlines look too far away."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The most one search request may ask for; each refusal names the limit by its field name.

    :param max_queries: query documents (texts or vectors) per request.
    :param max_top_k: documents per query in the reply (``top_k``).
    :param max_chunk_oversample: vectors per wanted document in a shard's first window.
    :param max_rrf_k: the constant of reciprocal rank fusion (``rrf_k``).
    :param max_candidates: documents per arm in a hybrid fusion, MMR diversity or grouping (``candidates``).
    :param max_group_size: documents per group when grouping (``group_size``).
    :param max_query_language_bytes: the request's ``query_language`` as compact UTF-8 JSON.
    :param max_operations: operations in the request's ``query_language``.
    :param max_conditions: filter conditions over all the request's operations, and in its ``filter``.
    :param max_in_items: values in one ``in`` list (``$in``, ``$nin``, or parts of an ``$and``/``$or``).
    :param max_filter_depth: nesting of the ``filter`` parameter's objects.
    :param regex_budget_s: regex evaluation time per request, on each shard and at the joiner;
        a regex search times out at ``REGEX_TIMEOUT`` (counted as no match), and the request
        fails with an error once its budget is spent.
    :param max_fetch: ``queries × top_k × chunk_oversample``: the vectors one request reads
        from each shard in its first window (``MAX_WINDOW_VECTORS`` bounds its widening).
    :param max_deadline_s: how far in the future a request's deadline may be, in seconds (the
        joiner keeps a request until its deadline; the HTTP bridge's ``deadline_s`` has the same cap).
    :param max_offset: the largest ingest offset ``after`` may name: 2**53 - 1, the largest
        integer a JSON number carries exactly; a partition taking a million records a second
        reaches it in 285 years. Its partitions must be the flow's (``0 .. shards - 1``).
    """

    max_queries: int = 64
    max_top_k: int = 1_000
    max_chunk_oversample: int = 100
    max_rrf_k: int = 10_000
    max_candidates: int = 1_000
    max_group_size: int = 100
    max_query_language_bytes: int = 65_536
    max_operations: int = 16
    max_conditions: int = 32
    max_in_items: int = 1_000
    max_filter_depth: int = 16
    regex_budget_s: float = 0.25
    max_fetch: int = 20_000
    max_deadline_s: float = 300.0
    max_offset: int = 2**53 - 1

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"RequestLimits.{spec.name} must be a positive number, got {value!r}")

    def check_count(self, name: str, value: object) -> int:
        """The check of a count parameter (``top_k``, ``chunk_oversample``, ...: ``name``) against ``max_<name>``: the
        flow applies it to every request, and the client, CLI and HTTP bridge before sending.

        :returns: ``value``.
        :raises InvalidParameterError: if it is not a positive integer.
        :raises RequestLimitError: if it is over its limit, naming the limit.
        """
        limit = getattr(self, f"max_{name}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidParameterError(f"parameter {name!r} must be an integer in 1..{limit}, got {describe(value)}")
        if value > limit:
            raise RequestLimitError(f"parameter {name!r} is {_short(value)}; the limit max_{name} is {limit}")
        return value

    def check_deadline(self, deadline_ms: int, now_ms: float) -> None:
        """:raises RequestLimitError: if ``deadline_ms`` is over ``max_deadline_s`` from ``now_ms``
            (plus :data:`CLOCK_SKEW_MS`: the deadline comes from the client's clock)."""
        if deadline_ms > now_ms + self.max_deadline_s * 1000 + CLOCK_SKEW_MS:
            raise RequestLimitError(f"the deadline is {_short(int((deadline_ms - now_ms) / 1000))} s away; the limit "
                                    f"max_deadline_s is {self.max_deadline_s:g}")

    def check(self, params: SearchParameters, *, queries: int, after: Mapping[int, int],
              fields: Sequence[str], partitions: int, filterable: FieldSchema | None = None) -> None:
        """Refuse a request over any limit, cheapest checks first, so that a huge payload is
        refused by its size before its parts are parsed.

        :param params: the request's parameters, parsed over the flow's defaults.
        :param queries: the request's query documents.
        :param after: the request's read-your-writes offsets, ingest partition -> offset.
        :param fields: the flow's fields (empty when it has none): ``filter_by`` may name only these.
        :param partitions: the flow's partitions (shards): ``after`` may name only these.
        :param filterable: the flow's filterable fields: ``filter`` may test only these, by their types.
        :raises RequestLimitError: naming the limit and the request's value.
        :raises InvalidParameterError: for ``filter_by`` naming a field the flow does not have, or a
            ``filter`` on a field it does not declare filterable or with a value not of its type.
        :raises QueryLanguageError: for a malformed operation.
        """
        if queries > self.max_queries:
            raise RequestLimitError(f"{queries} query documents; the limit max_queries is {self.max_queries}")
        self.check_fetch(params, queries=queries)
        self._check_after(after, partitions)
        _check_fields(params.filter_by, fields)
        if params.filter is not None:
            check_filter(params.filter, filterable or {})
        self._check_query_language(params)

    def check_fetch(self, params: SearchParameters, *, queries: int) -> None:
        """:raises RequestLimitError: when ``queries`` queries of ``params`` would read more vectors from each
        shard's first window than ``max_fetch``."""
        fetch = queries * params.arm_depth * params.chunk_oversample
        if fetch > self.max_fetch:
            raise RequestLimitError(f"queries × {params.depth_rule} × chunk_oversample = {queries} × {params.arm_depth} × "
                                    f"{params.chunk_oversample} = {fetch}; the limit max_fetch is {self.max_fetch}")

    def _check_after(self, after: Mapping[int, int], partitions: int) -> None:
        for partition, offset in after.items():
            if not 0 <= partition < partitions:
                raise RequestLimitError(f"after names partition {_short(partition)}; the flow has partitions "
                                        f"0..{partitions - 1}")
            if not 0 <= offset <= self.max_offset:
                raise RequestLimitError(f"after names offset {_short(offset)} of partition {partition}; offsets "
                                        f"are 0..max_offset ({self.max_offset})")

    def _check_query_language(self, params: SearchParameters) -> None:
        if not params.query_language:
            return
        size = len(json.dumps(list(params.query_language), separators=(",", ":"), ensure_ascii=False,
                              default=repr).encode("utf-8", "surrogatepass"))
        if size > self.max_query_language_bytes:
            raise RequestLimitError(f"query_language is {size} bytes of JSON; the limit max_query_language_bytes "
                                    f"is {self.max_query_language_bytes}")
        if len(params.query_language) > self.max_operations:
            raise RequestLimitError(f"query_language has {len(params.query_language)} operations; the limit "
                                    f"max_operations is {self.max_operations}")
        operations = [*params.operations_for("index"), *params.operations_for("join")]  # checks each one
        conditions = [Condition.parse(key, value) for op in operations if op.operator == "filter"
                      for key, value in op.parameters["conditions"].items()]
        if len(conditions) > self.max_conditions:
            raise RequestLimitError(f"query_language has {len(conditions)} filter conditions; the limit "
                                    f"max_conditions is {self.max_conditions}")
        for condition in conditions:
            if condition.lookup == "in" and len(condition.expected) > self.max_in_items:
                raise RequestLimitError(f"an 'in' list of {len(condition.expected)} values; the limit max_in_items "
                                        f"is {self.max_in_items}")


def _check_fields(filter_by: Sequence[str] | None, fields: Sequence[str]) -> None:
    unknown = [name for name in filter_by or () if name not in fields]
    if unknown:
        known = ", ".join(fields) if fields else "none: this flow has no fields"
        raise InvalidParameterError(f"filter_by names unknown fields {unknown[:10]}; known: {known}")


def _short(value: int) -> str:
    return str(value) if abs(value) < 10**30 else "a very large integer"


REQUEST_LIMITS = RequestLimits()
"""The limits every stage applies."""
