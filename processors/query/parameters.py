"""The parameters a search request may set, checked in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

from processors.exceptions import InvalidParameterError
from processors.query.filter import Filter, filter_json, parse_filter
from processors.query.limits import REQUEST_LIMITS
from processors.query.lookups import RegexBudget, describe
from processors.query.operators import Operation, merge_operations, parse_operations

__all__ = ["DENSE", "DEFAULT_FUSION", "HYBRID", "LEXICAL", "FUSIONS", "InvalidParameterError", "RETRIEVALS", "SearchParameters"]

_STAGES = ("index", "join")

RETRIEVALS = ("dense", "lexical", "hybrid")
"""What a search retrieves by: the vectors, BM25 over the texts (the lexical arm), or both fused."""
DENSE, LEXICAL, HYBRID = RETRIEVALS
"""Its names, for code that tests one (never the string literals)."""


FUSIONS = ("rrf", "dbsf", "linear")
"""How ``hybrid`` fuses the two arms' lists (``processors.rankers.fusion``)."""

DEFAULT_FUSION = "dbsf"
"""Chosen on SciFact and NFCorpus together (README, "Lexical and hybrid retrieval"): the best mean nDCG@10
over both of rrf, dbsf and linear at 100 candidates, and the best published fusion for this model (Qdrant)."""


@dataclass(frozen=True, slots=True)
class SearchParameters:
    """What one search asks for; every field may be set per request.

    :param top_k: documents per query in the reply.
    :param chunk_oversample: vectors fetched per wanted document on each shard, so that a
        document with several matching chunks does not crowd others out of the top_k.
    :param filter_by: fields to search (multi-field flows), each once; None searches every field.
    :param index_type: the shard index type to answer from (``processors.index.types.INDEX_TYPES``); None = the flow's.
    :param ground_truth: query doc id -> {doc id: grade}; the reply then carries evaluations.
    :param metrics: what to evaluate, e.g. ``ndcg@10``, ``recall@100``, ``precision@10``, ``mrr``.
    :param query_language: operations ``{operator, parameters, priority, traversal_paths, stage}``
        added to (or overriding by name) the stage's own; ``stage`` is ``index`` or ``join``.
    :param retrieval: one of :data:`RETRIEVALS`; ``lexical`` and ``hybrid`` need a flow whose indexer keeps
        the lexical arm (``lexical: true``).
    :param fusion: one of :data:`FUSIONS`, for ``hybrid``.
    :param rrf_k: the constant of reciprocal rank fusion, 1/(k + rank) (Cormack et al. 2009 use 60).
    :param candidates: documents each arm contributes to a hybrid fusion (per query, over all shards); at
        least ``top_k`` are used.
    :param dense_weight: the dense arm's weight in ``linear`` fusion, in [0, 1]; the lexical arm has the rest.
    :param group_by: a key of the root documents' top-level ``tags``: the reply then holds ``top_k`` groups,
        one per distinct value, each with its ``group_size`` best documents (``processors.rankers.grouping``).
    :param group_size: documents per group, at most; 1 without ``group_by``.
    :param diversity: MMR's λ in [0, 1] (``processors.rankers.diversity``): 1 ranks by relevance alone, lower
        trades relevance for novelty; None (the default) leaves the ranking as it is.
    :param filter: conditions on the root documents' tags (``processors.query.filter``), answered by the
        shards' field indexes before either arm searches; given as JSON, held parsed.

    Not a parameter: ``regex_budget``, the regex evaluation time of this request on the stage
    that parsed it, shared by every operation :meth:`operations_for` gives.
    """

    top_k: int = 10
    chunk_oversample: int = 5
    filter_by: tuple[str, ...] | None = None
    index_type: str | None = None
    ground_truth: Mapping[str, Mapping[str, int]] | None = None
    metrics: tuple[str, ...] = ("ndcg@10", "recall@100", "precision@10", "mrr")
    query_language: tuple[Mapping[str, Any], ...] = ()
    retrieval: str = DENSE
    fusion: str = DEFAULT_FUSION
    rrf_k: int = 60
    candidates: int = 100
    dense_weight: float = 0.5
    group_by: str | None = None
    group_size: int = 1
    diversity: float | None = None
    filter: Filter | None = None
    regex_budget: RegexBudget = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex_budget", RegexBudget(REQUEST_LIMITS.regex_budget_s))

    @classmethod
    def parse(cls, raw: Mapping[str, Any], defaults: "SearchParameters | None" = None) -> "SearchParameters":
        """Check request parameters over the flow's defaults.

        :raises InvalidParameterError: naming the unknown parameter or the bad value.
        :raises RequestLimitError: for ``top_k`` or ``chunk_oversample`` over its limit, naming it.
        """
        base = defaults or cls()
        known = {f.name for f in fields(cls) if f.init}
        for key in raw:
            if key not in known:
                raise InvalidParameterError(f"unknown parameter {key!r}; known: {', '.join(sorted(known))}")
        values = {**base.to_dict(), **raw}
        for key in ("top_k", "chunk_oversample", "rrf_k", "candidates", "group_size"):
            REQUEST_LIMITS.check_count(key, values[key])
        for key, known_values in (("retrieval", RETRIEVALS), ("fusion", FUSIONS)):
            if values[key] not in known_values:
                raise InvalidParameterError(f"parameter {key!r} must be one of {', '.join(known_values)}, "
                                            f"got {describe(values[key])}")
        values["dense_weight"] = _unit_interval("dense_weight", values["dense_weight"])
        if values["diversity"] is not None:
            values["diversity"] = _unit_interval("diversity", values["diversity"])
        if values["group_by"] is not None and (not isinstance(values["group_by"], str) or not values["group_by"]):
            raise InvalidParameterError(f"parameter 'group_by' must be a tag name (a non-empty string) or null, "
                                        f"got {describe(values['group_by'])}")
        values["filter_by"] = _names("filter_by", values["filter_by"], allow_none=True)
        values["metrics"] = _names("metrics", values["metrics"], allow_none=False)
        if values["index_type"] is not None and not isinstance(values["index_type"], str):
            raise InvalidParameterError(f"parameter 'index_type' must be a string, got {values['index_type']!r}")
        values["ground_truth"] = _ground_truth(values["ground_truth"])
        if values.setdefault("filter", None) is not None:
            values["filter"] = parse_filter(values["filter"], max_conditions=REQUEST_LIMITS.max_conditions,
                                            max_in_items=REQUEST_LIMITS.max_in_items,
                                            max_depth=REQUEST_LIMITS.max_filter_depth)
        values["query_language"] = _operations(values["query_language"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, to travel with the request to shards and joiner. ``filter`` is there only when set:
        a shard of an earlier version then refuses a filtered search (unknown parameter) rather than
        answer it unfiltered."""
        filtered = {"filter": filter_json(self.filter)} if self.filter is not None else {}
        return {
            **filtered,
            "top_k": self.top_k,
            "chunk_oversample": self.chunk_oversample,
            "filter_by": list(self.filter_by) if self.filter_by is not None else None,
            "index_type": self.index_type,
            "ground_truth": {q: dict(g) for q, g in self.ground_truth.items()} if self.ground_truth else None,
            "metrics": list(self.metrics),
            "query_language": [dict(op) for op in self.query_language],
            "retrieval": self.retrieval,
            "fusion": self.fusion,
            "rrf_k": self.rrf_k,
            "candidates": self.candidates,
            "dense_weight": self.dense_weight,
            "group_by": self.group_by,
            "group_size": self.group_size,
            "diversity": self.diversity,
        }

    @property
    def arm_depth(self) -> int:
        """Documents per query each arm's list holds (on each shard, and over all of them at the joiner):
        ``top_k`` for a plain single-arm search; ``candidates`` (at least ``top_k``) for what the joiner
        re-ranks: a hybrid fusion, MMR diversity or grouping, grouping at least ``top_k × group_size``."""
        if not self.reranks:
            return self.top_k
        return max(self.top_k * (self.group_size if self.group_by is not None else 1), self.candidates)

    @property
    def depth_rule(self) -> str:
        """How :attr:`arm_depth` came about, in the parameters' names (for a limit's message)."""
        if self.arm_depth == self.top_k:
            return "top_k"
        return "candidates" if self.arm_depth == self.candidates else "top_k × group_size"

    @property
    def reranks(self) -> bool:
        """Whether the joiner re-ranks a pool of candidates (fusion, diversity, grouping) rather than cut
        the merged list at ``top_k``."""
        return self.retrieval == HYBRID or self.diversity is not None or self.group_by is not None

    @property
    def uses_lexical(self) -> bool:
        """Whether the lexical arm answers (it needs the corpus statistics with the request)."""
        return self.retrieval != DENSE

    @property
    def uses_dense(self) -> bool:
        """Whether the vectors answer (the query needs an embedding)."""
        return self.retrieval != LEXICAL

    def operations_for(self, stage: str, defaults: Sequence[Operation] = ()) -> tuple[Operation, ...]:
        """The operations one stage runs: its defaults, overridden by name or extended by the
        request's operations meant for it (``stage`` defaults to ``join``). They spend this
        request's ``regex_budget``, however often they are applied.

        :raises QueryLanguageError: naming the operator, parameter or type at fault.
        """
        raw = [{k: v for k, v in op.items() if k != "stage"} for op in self.query_language
               if op.get("stage", "join") == stage]
        return tuple(dataclasses.replace(op, regex_budget=self.regex_budget)
                     for op in merge_operations(defaults, parse_operations(raw)))


def _names(key: str, value: Any, *, allow_none: bool) -> tuple[str, ...] | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidParameterError(f"parameter {key!r} must be a non-empty list of names, got {describe(value)}")
    return tuple(dict.fromkeys(value))  # each name once, in its first place


def _unit_interval(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidParameterError(f"parameter {key!r} must be a number in [0, 1], got {describe(value)}")
    return float(value)


def _ground_truth(value: Any) -> dict[str, dict[str, int]] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(q, str) and isinstance(g, Mapping)
        and all(isinstance(d, str) and isinstance(r, int) and not isinstance(r, bool) for d, r in g.items())
        for q, g in value.items()
    ):
        raise InvalidParameterError("parameter 'ground_truth' must map query ids to {document id: integer grade}")
    return {q: dict(g) for q, g in value.items()}


def _operations(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(op, Mapping) for op in value):
        raise InvalidParameterError("parameter 'query_language' must be a list of {operator, parameters, ...} objects")
    for op in value:
        if op.get("stage", "join") not in _STAGES:
            raise InvalidParameterError(f"query_language: stage must be one of {', '.join(_STAGES)}, got {op.get('stage')!r}")
    return tuple(dict(op) for op in value)
