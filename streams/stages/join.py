"""Fan-in: the parts of one search meet here, keyed by request id, and leave as one reply.

The joiner knows which parts to expect (shards x selected fields, from any part) and the
deadline: a query limited to one field never waits for the others. It replies as
soon as every expected shard has answered, or at the deadline with what it has and
``partial: true`` naming the shards that did not answer. A shard still restoring its state
answers at once without matches; the reply is then partial and names it in
``restoring_shards``. It never waits past a deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from processors.document import Direction, Document, Score
from processors.evaluators.evaluate import RunningStats, evaluate, parse_metrics
from processors.query.operators import Operation, apply_operations
from processors.exceptions import InvalidParameterError
from processors.query.limits import REQUEST_LIMITS, RequestLimits
from processors.query.parameters import SearchParameters
from processors.rankers.diversity import diversify
from processors.rankers.fusion import ARMS, FusionConfig, fuse, merge_candidates
from processors.rankers.grouping import GROUP_RANK, flatten, group_matches
from processors.rankers.merge import merge_matches
from streams.wire import headers as h
from streams.exceptions import InvalidRecordError, ReplyTopicError
from streams.flow.spec import DEFAULT_MAX_PAYLOAD_BYTES
from streams.runtime.metrics import QUERY_SECONDS, REPLIES
from streams.stages.fanout import ExpiredRequests, decode_live, split_expired
from streams.wire.codec import PARTIAL_RESULT, SEARCH_REPLY
from streams.wire.records import PartialResult, SearchReply
from streams.runtime.spec import Inbound, Output, PathHandler
from streams.wire.topics import FlowTopics
from streams.stages.kinds import JOIN

__all__ = ["Joiner", "PendingRequest"]

logger = logging.getLogger(__name__)

REMEMBER_REPLIED = 50_000
"""Replied request ids kept to drop late parts (a bounded set, oldest forgotten first)."""


PartKey = tuple[int, str | None]


@dataclass(slots=True)
class PendingRequest:
    """The parts of one request received so far, keyed by (shard, field)."""

    request_id: str
    reply_to: str
    deadline_ms: int
    created_ms: int | None = None
    expected: list[PartKey] = field(default_factory=list)
    opening: PartialResult | None = None
    parts: dict[PartKey, PartialResult] = field(default_factory=dict)

    def add(self, part: PartialResult) -> None:
        """Keep ``part``, unless a better answer of its shard and field is here already.

        A shard answers a search twice when its partition moved while the search waited for a write: the
        new owner reads the searches again from its query path's commit (``Checkpoint.holds``), often while
        it still restores, and its ``restoring`` part must not replace the old owner's answer."""
        if part.expected_shards and not self.expected:
            fields: list[str | None] = list(part.expected_fields) or [None]
            self.expected = [(shard, f) for shard in part.expected_shards for f in fields]
        if part.shard < 0:
            self.opening = part
            return
        # A shard that failed before splitting by field answers for all of its fields.
        whole = part.error is not None and part.field_name is None
        key = (part.shard, None if whole else part.field_name)
        if whole:
            rivals = [p for (shard, _), p in self.parts.items() if shard == part.shard]
        else:
            self._split_whole(part.shard)
            rivals = [self.parts[key]] if key in self.parts else []
        if all(_quality(part) >= _quality(rival) for rival in rivals):
            self.parts[key] = part

    def _split_whole(self, shard: int) -> None:
        """A shard's failure for all of its fields becomes one per field, so that an answer for one field can
        replace it there."""
        if (whole := self.parts.pop((shard, None), None)) is None:
            return
        fields = [f for s, f in self.expected if s == shard and f is not None]
        for f in fields or [None]:
            self.parts.setdefault((shard, f), whole)

    def answered(self, key: PartKey) -> bool:
        return key in self.parts or (key[0], None) in self.parts

    @property
    def missing(self) -> list[PartKey]:
        return [key for key in self.expected if not self.answered(key)]

    @property
    def complete(self) -> bool:
        return bool(self.expected) and not self.missing


def _quality(part: PartialResult) -> int:
    """How good an answer a part is: one that failed or comes from a restoring shard, a stale one (its
    shard had not applied the write the search named), a current one."""
    return 0 if part.error is not None or part.restoring else 1 if part.stale else 2


class Joiner(PathHandler):
    """Merges shard results per request and replies on the request's reply topic."""

    def __init__(self, operations: Sequence[Operation] = (), *, flow: str = "", version: int = 1,
                 topics: FlowTopics | None = None, fields: Sequence[str] = (),
                 limits: RequestLimits = REQUEST_LIMITS, max_reply_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        """:param topics: the flow's topics: parts naming another reply topic or shard are refused
            (None: not checked, for joiners under test). :param fields: the flow's fields.
        :param max_reply_bytes: the flow's ``max_payload_bytes``: a larger reply is replaced by an
            error reply saying so."""
        self._max_reply_bytes = max_reply_bytes
        self._topics = topics
        self._fields = frozenset(fields)
        self._limits = limits
        self._operations = tuple(operations)
        self._flow = flow
        self._version = version
        self._pending: dict[str, PendingRequest] = {}
        self._replied: OrderedDict[str, None] = OrderedDict()
        self.evaluations = RunningStats()
        self.replies = 0
        self.partial_replies = 0
        self._expired = ExpiredRequests(flow=flow, stage=JOIN.name)

    MAX_PENDING = 10_000
    """Requests held at once; past this, the one due first is answered now, partial (load shedding:
    parts written straight to the partials topic must not fill memory)."""

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        # Everything decoded and checked before any state changes: the loop retries a failed batch
        # record by record, and a request completed (and remembered as replied) by the first try
        # would never be answered.
        live, expired = split_expired(records)
        parts = list(decode_live(live, PARTIAL_RESULT))
        for _, part in parts:
            self._check(part)
        outputs = self._answer_expired(expired)
        for record, part in parts:
            if part.request_id in self._replied:
                continue
            pending = self._pending.get(part.request_id)
            if pending is None:
                if len(self._pending) >= self.MAX_PENDING:
                    outputs.append(self._reply(min(self._pending.values(), key=lambda p: p.deadline_ms)))
                pending = self._pending[part.request_id] = PendingRequest(
                    part.request_id, part.reply_to, part.deadline_ms, h.read_int(record.headers, h.CREATED_MS))
            pending.add(part)
            if pending.complete:
                outputs.append(self._reply(pending))
        return outputs

    def _answer_expired(self, records: list[Inbound]) -> list[Output]:
        """Parts that came after their deadline, of a request this joiner never held (it was
        behind, or restarting): answer the request once, with the error, rather than never."""
        outputs: list[Output] = []
        now_ms = time.time() * 1000
        for record in records:
            raw_id = record.headers.get(h.REQUEST_ID)
            request_id = raw_id.decode(errors="replace") if raw_id else None
            if request_id is None or request_id in self._replied or request_id in self._pending:
                continue
            self._remember_replied(request_id)
            deadline_ms = h.read_int(record.headers, h.DEADLINE_MS)
            outputs.extend(self._expired.answer(record, now_ms if deadline_ms is None else deadline_ms, now_ms))
        return outputs

    def _remember_replied(self, request_id: str) -> None:
        self._replied[request_id] = None
        while len(self._replied) > REMEMBER_REPLIED:
            self._replied.popitem(last=False)

    def _check(self, part: PartialResult) -> None:
        """Refuse a part no stage of this flow writes: it would make the joiner expect parts that
        never come (shards x fields it does not have), keep it past the deadline limit, or write
        its reply into a topic of the flow.

        :raises ReplyTopicError: for a ``reply_to`` that is not a reply topic of the flow.
        :raises InvalidRecordError: for any other field out of its flow's range.
        """
        if self._topics is None:
            return
        if not self._topics.is_reply_topic(part.reply_to):
            raise ReplyTopicError(f"reply_to {part.reply_to[:300]!r} is not a reply topic of flow {self._topics.flow!r}")
        try:
            self._limits.check_deadline(part.deadline_ms, time.time() * 1000)
        except InvalidParameterError as exc:
            raise InvalidRecordError(f"partial result: {exc}") from None
        shards = range(self._topics.partitions)
        if part.shard != -1 and part.shard not in shards:
            raise InvalidRecordError(f"partial result from shard {part.shard}; the flow has shards 0..{len(shards) - 1}")
        if len(set(part.expected_shards)) != len(part.expected_shards) or not set(part.expected_shards) <= set(shards):
            raise InvalidRecordError(f"partial result expects shards {part.expected_shards[:10]}; the flow has "
                                     f"shards 0..{len(shards) - 1}, each once")
        named = [*part.expected_fields, *([part.field_name] if part.field_name is not None else [])]
        if len(set(part.expected_fields)) != len(part.expected_fields) or not set(named) <= self._fields:
            raise InvalidRecordError(f"partial result names fields {named[:10]}; the flow's fields are "
                                     f"{sorted(self._fields)}, each once")

    def tick(self) -> list[Output]:
        now = time.time() * 1000
        late = [p for p in self._pending.values() if p.deadline_ms <= now]
        return [self._reply(p) for p in late]

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return []

    def next_deadline_ms(self) -> int | None:
        return min((p.deadline_ms for p in self._pending.values()), default=None)

    def _reply(self, pending: PendingRequest) -> Output:
        del self._pending[pending.request_id]
        self._remember_replied(pending.request_id)
        try:
            reply = build_reply(pending, self.evaluations, self._operations)
        except Exception as exc:  # a reply with the error beats no reply: the client would hang
            logger.exception("reply failed", extra={"request_id": pending.request_id})
            reply = SearchReply(pending.request_id, [], True, [], [], [f"join: {type(exc).__name__}: {exc}"])
        reply.version = self._version
        value, headers = SEARCH_REPLY.encode_record(reply, ((h.REQUEST_ID, pending.request_id.encode()),))
        if len(value) > self._max_reply_bytes:  # an answer the client can read beats one it never gets
            reply = SearchReply(pending.request_id, [], True, [], [], [
                f"join: the reply is {len(value)} bytes, over max_payload_bytes={self._max_reply_bytes}: "
                "ask for fewer documents (top_k) or smaller ones (query_language select)"], version=self._version)
            value, headers = SEARCH_REPLY.encode_record(reply, ((h.REQUEST_ID, pending.request_id.encode()),))
        self.replies += 1
        self.partial_replies += reply.partial
        REPLIES.labels(self._flow, str(reply.partial).lower()).inc()
        if pending.created_ms:
            QUERY_SECONDS.labels(self._flow).observe(max(0.0, time.time() - pending.created_ms / 1000))
        return Output(pending.reply_to, value, pending.request_id, None, headers, reply=True,
                      deadline_ms=pending.deadline_ms)


def build_reply(pending: PendingRequest, stats: RunningStats | None = None,
                operations: Sequence[Operation] = ()) -> SearchReply:
    """Merge each query's matches across shards and fields, best first by score direction (a
    hybrid search's: fused), apply the join stage's query language, then diversity and grouping
    when asked, cut to top_k; evaluate against ground truth when the request carries it."""
    parts = [pending.parts[key] for key in sorted(pending.parts, key=lambda k: (k[0], k[1] or ""))]
    # A part can carry both matches and a warning (a shard's window limit): its matches count.
    answered = [p for p in parts if p.docs]
    template = pending.opening or (answered[0] if answered else None)
    params = SearchParameters.parse(template.parameters) if template else SearchParameters()
    ops = params.operations_for(JOIN.name, operations)
    merged = _merged_queries(template, answered, params, keep_all=bool(ops))
    docs = apply_operations(merged, ops) if ops else merged
    cut = _cut_queries(merged, answered, params)
    warnings = [p.warning for p in parts if p.warning]
    if params.group_by is not None:
        docs = [_grouped(query, merged, params) for query in docs]
        warnings += _groups_short(docs, cut, params)
    else:
        docs = [_diversified(query, merged, params) if params.diversity is not None
                else dataclasses.replace(query, matches=query.matches[: params.top_k]) for query in docs]
        if any(op.operator == "filter" for op in ops):
            warnings += _filtered_short(docs, cut, params.top_k)
    for query in docs:  # the vectors came for diversity only: the client never asked for them
        query.matches = [dataclasses.replace(m, embedding=None) if m.embedding is not None else m
                         for m in query.matches]
    if params.ground_truth:
        _evaluate(docs, params, stats if stats is not None else RunningStats())
    return _reply(pending, parts, docs, warnings)


def _merged_queries(template: PartialResult | None, answered: Sequence[PartialResult], params: SearchParameters,
                    *, keep_all: bool) -> list[Document]:
    """Each query with the matches of every part merged, best first; all of them when join-stage
    operations follow (``keep_all``: they cut after), else the best ``arm_depth``: ``top_k``, or the pool
    diversity and grouping choose from, the same whatever the number of shards.

    A hybrid search's parts carry each shard's dense and lexical candidates with their arm scores: they
    are merged by document (each arm keeping its best score, over shards and fields) and fused here,
    where each arm's list is the global one (``processors.rankers.fusion``)."""
    hybrid = params.uses_dense and params.uses_lexical
    docs = []
    for i, query in enumerate(template.docs if template else []):
        lists = [part.docs[i].matches for part in answered if i < len(part.docs)]
        keep = sum(len(m) for m in lists) if keep_all else params.arm_depth
        query.matches = (fuse(merge_candidates(lists), FusionConfig.of(params), keep) if hybrid
                         else merge_matches(lists, keep))
        docs.append(query)
    return docs


def _sources(query: Document, merged: Sequence[Document]) -> list[Document]:
    """Each match of ``query`` as it was merged, before the join stage's operations (which may have
    selected its score, tags or vector away): what diversity and grouping read."""
    before = next((q for q in merged if q.id == query.id), None)
    by_id = {m.id: m for m in before.matches} if before is not None else {}
    return [by_id.get(m.id, m) for m in query.matches]


def _diversified(query: Document, merged: Sequence[Document], params: SearchParameters,
                 picks: int | None = None) -> Document:
    """The query's matches in MMR order: its ``top_k`` (``picks``: None for all of them)."""
    assert params.diversity is not None
    pool = dataclasses.replace(query, matches=query.matches[: params.arm_depth])
    matches = diversify(pool.matches, diversity=params.diversity, sources=_sources(pool, merged),
                        picks=params.top_k if picks is None else picks)
    return dataclasses.replace(query, matches=matches)


def _grouped(query: Document, merged: Sequence[Document], params: SearchParameters) -> Document:
    """The query's matches as ``top_k`` groups by ``group_by``, group by group. With diversity, MMR orders
    all the candidates first and a group's place is its best document's place in that order."""
    assert params.group_by is not None
    key: Callable[[Document], float] | None = None
    query = dataclasses.replace(query, matches=query.matches[: params.arm_depth])
    if params.diversity is not None:
        query = _diversified(query, merged, params, picks=len(query.matches))
        place = {m.id: float(i) for i, m in enumerate(query.matches)}
        key = lambda doc: place[doc.id]
    groups = group_matches(query.matches, tag=params.group_by, groups=params.top_k, group_size=params.group_size,
                           key=key, sources=_sources(query, merged))
    return dataclasses.replace(query, matches=flatten(groups, params.group_by))


def _cut_queries(merged: Sequence[Document], answered: Sequence[PartialResult],
                 params: SearchParameters) -> dict[str, int]:
    """The queries some shard's list was cut for (at its depth, ``arm_depth`` per arm), with the number of
    matches merged: only for these may more documents exist than the shards sent."""
    hybrid = params.uses_dense and params.uses_lexical
    depth = params.arm_depth

    def cut(matches: Sequence[Document]) -> bool:
        if hybrid:
            return any(sum(arm in m.scores for m in matches) >= depth for arm in ARMS)
        return len(matches) >= depth

    return {doc.id: len(doc.matches) for i, doc in enumerate(merged)
            if any(i < len(part.docs) and cut(part.docs[i].matches) for part in answered)}


def _reply(pending: PendingRequest, parts: Sequence[PartialResult], docs: list[Document],
           warnings: list[str]) -> SearchReply:
    """The reply: partial when a shard is missing, failed or restoring, naming which."""
    missing = pending.missing if pending.expected else []
    return SearchReply(
        request_id=pending.request_id,
        docs=docs,
        partial=bool(missing) or not pending.expected or any(p.error or p.restoring for p in parts),
        missing_shards=sorted({shard for shard, _ in missing}),
        stale_shards=sorted({p.shard for p in parts if p.stale}),
        errors=[p.error for p in parts if p.error],
        restoring_shards=sorted({p.shard for p in parts if p.restoring}),
        warnings=warnings,
    )


def _groups_short(docs: Sequence[Document], cut: Mapping[str, int], params: SearchParameters) -> list[str]:
    """A warning per query that filled fewer than ``top_k`` groups while a shard's list was cut at its depth:
    documents of other values may exist beyond it."""
    warnings = []
    for doc in docs:
        filled = len({m.scores[GROUP_RANK].value for m in doc.matches})
        if doc.id in cut and filled < params.top_k:
            warnings.append(f"join: grouping by {params.group_by!r} filled {filled} of top_k={params.top_k} groups "
                            f"for {doc.id} from {cut[doc.id]} candidates; a shard cut its list at "
                            f"{params.arm_depth} ({params.depth_rule}), so more may exist: raise candidates")
    return warnings


def _filtered_short(docs: Sequence[Document], merged: Mapping[str, int], top_k: int) -> list[str]:
    """A warning per query that a join-stage filter left with fewer than ``top_k`` matches, when
    a shard had cut its matches at top_k (``merged`` holds those queries, with the matches merged):
    the filter ran after that cut, so more documents that pass it may exist. A filter at the index
    stage runs before the cut and widens the window."""
    return [f"join: a join-stage filter kept {len(doc.matches)} of the {merged[doc.id]} documents the shards "
            f"sent for {doc.id}, fewer than top_k={top_k}; it ran after each shard's top-k cut, so more may "
            f"match: give the filter \"stage\": \"index\" to filter before the cut"
            for doc in docs if doc.id in merged and len(doc.matches) < top_k and len(doc.matches) < merged[doc.id]]


def _evaluate(docs: list[Document], params: SearchParameters, stats: RunningStats) -> None:
    """Scores named after each metric on the query documents, and the running mean/std."""
    assert params.ground_truth is not None
    metrics = parse_metrics(params.metrics)
    for query in docs:
        relevance = params.ground_truth.get(query.id)
        if relevance is None:
            continue
        values = evaluate([m.id for m in query.matches], relevance, metrics)
        stats.update(values)
        for name, value in values.items():
            query.scores[name] = Score(value, f"evaluator.{name}", Direction.SIMILARITY)
            query.scores[f"{name}.mean"] = Score(stats.mean(name), "evaluator.running_mean", Direction.SIMILARITY)
            query.scores[f"{name}.std"] = Score(stats.std(name), "evaluator.running_std", Direction.DISTANCE)
