"""The index stage's query path: shard p answers partition p of ``<flow>.search`` from the state
``ingest.py`` applies.

Until a shard has read its partition to the end, searches get a ``restoring`` part at once, never
silently incomplete results. A search that names ``min_offsets`` waits (until shortly before its
deadline) for the shard to apply that ingest offset: read-your-writes without sleeping. It waits so for
a restore too, whose end it needs anyway: a new owner of a partition reads again the searches its old
owner held for a write (``parked_offsets``), and answering them ``restoring`` would fail the read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from processors.document import Document
from processors.query.operators import Operation
from processors.exceptions import InvalidParameterError
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import SearchParameters
from processors.index.base import Hit
from processors.index.compound import CompoundIndexer
from processors.query.window import SearchRows, WindowedSearch, WindowedSearchConfig, WindowResult
from processors.rankers.base import SCORE_NAME, Ranker
from processors.rankers.fusion import DENSE_ARM, LEXICAL_ARM
from streams.wire import headers as h
from streams.exceptions import InvalidRecordError
from streams.stages.fanout import created_ms_of, decode_live, error_reply
from streams.wire.headers import query_headers
from streams.wire.codec import PARTIAL_RESULT, REQUEST
from streams.wire.records import PartialResult, Request
from streams.runtime.metrics import FLAT_SCAN_FALLBACKS, HELD_SEARCHES
from streams.runtime.spec import AwaitsWrites, Inbound, Output, PathHandler
from streams.stages.shard.states import ShardStates
from streams.wire.topics import FlowTopics
from streams.stages.kinds import INDEX

__all__ = ["ShardSearch"]

logger = logging.getLogger(__name__)

STALE_MARGIN_MS = 200
"""A waiting search is answered (flagged stale) this long before its deadline."""


@dataclass(slots=True)
class _Waiting:
    partition: int
    request: Request
    record: Inbound


class ShardSearch(PathHandler, AwaitsWrites):
    """Answers searches on the partitions this process owns, from their shard index."""

    def __init__(self, *, states: ShardStates, ranker: Ranker, topics: FlowTopics,
                 operations: Sequence[Operation] = (), window: WindowedSearchConfig | None = None) -> None:
        self._states = states
        self._topics = topics
        self._operations = tuple(operations)
        self._window = WindowedSearch(window or WindowedSearchConfig(), ranker=ranker)
        self._waiting: list[_Waiting] = []
        self._pool: ThreadPoolExecutor | None = None
        """Threads that search several partitions at once, started the first time a batch needs them."""

    MAX_WAITING = 10_000
    """Requests parked for their read-your-writes offsets; past this, the one due first is answered at once,
    ``stale`` (or ``restoring``) (a flood of requests naming offsets far ahead must not fill memory)."""

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        # Everything decoded and checked before any state changes: the loop retries a failed batch
        # record by record, and a request parked by the first try would be parked twice.
        now_ms = time.time() * 1000
        decoded = list(decode_live(records, REQUEST))
        for _, request in decoded:
            try:  # the encode stage refuses these: only a record written past it gets here
                REQUEST_LIMITS.check_deadline(request.deadline_ms, now_ms)
            except InvalidParameterError as exc:
                raise InvalidRecordError(f"search request: {exc}") from None
        ready: list[tuple[Inbound, Request, bool]] = []
        parked: list[_Waiting] = []
        held = {(w.record.topic, w.record.partition, w.record.offset) for w in self._waiting}
        for record, request in decoded:
            if (record.topic, record.partition, record.offset) in held:
                continue  # read again after a rewind to the committed offset, which stops at it
            restoring = self._states.restore.is_restoring(record.partition)
            if restoring and request.min_offsets.get(record.partition) is None:
                ready.append((record, request, True))
            elif not restoring and self._caught_up(record.partition, request):
                ready.append((record, request, False))
            else:
                parked.append(_Waiting(record.partition, request, record))
        outputs = self._answer_by_partition(ready)
        self._waiting.extend(parked)  # after the answers: if one raises, the retry parks them once
        while len(self._waiting) > self.MAX_WAITING:
            first = min(self._waiting, key=lambda waiting: waiting.request.deadline_ms)
            self._waiting.remove(first)
            outputs.extend(self._answer_now(first))
        if parked:
            HELD_SEARCHES.labels(self._topics.flow).set(len(self._waiting))
        return outputs

    @property
    def awaiting_writes(self) -> bool:
        """Searches are parked for ``min_offsets`` the shards have not applied."""
        return bool(self._waiting)

    def would_await(self, records: Sequence[Inbound]) -> bool:
        """Whether a search among these names an ingest offset its open shard has not applied (or, restoring,
        may not have: it waits for the restore's end), as its copy's
        ``ss-min-ingest-offset`` header says (the fan-out's): read without decoding, since the loop asks before
        the crash-loop breaker notes the batch, and a record the decoder chokes on must be noted first."""
        for record in records:
            wanted = h.read_int(record.headers, h.MIN_INGEST_OFFSET)
            if wanted is not None and (self._states.restore.is_restoring(record.partition)
                                       or self._states.checkpoint(record.partition).ingest_offset < wanted):
                return True
        return False

    def parked_offsets(self) -> dict[tuple[str, int], int]:
        held: dict[tuple[str, int], int] = {}
        for waiting in self._waiting:
            key = (waiting.record.topic, waiting.record.partition)
            if waiting.record.offset < held.get(key, waiting.record.offset + 1):
                held[key] = waiting.record.offset
        return held

    def answerable(self) -> bool:
        """Whether :meth:`tick` would answer (or drop) a parked search now."""
        now = time.time() * 1000
        return any(self._due(waiting, now) for waiting in self._waiting)

    def _due(self, waiting: _Waiting, now: float) -> bool:
        """A parked search is answered once its partition left this process (by the new owner), has restored
        and applied the write it awaits, or its deadline is near (``STALE_MARGIN_MS``: answered stale, or
        ``restoring`` if it still is)."""
        return (self._states.get(waiting.partition) is None
                or (not self._states.restore.is_restoring(waiting.partition)
                    and self._caught_up(waiting.partition, waiting.request))
                or now >= waiting.request.deadline_ms - STALE_MARGIN_MS)

    def tick(self) -> list[Output]:
        if not self._waiting:
            return []
        now = time.time() * 1000
        outputs, still = [], []
        for waiting in self._waiting:
            if self._due(waiting, now):
                outputs.extend(self._answer_now(waiting))
            else:
                still.append(waiting)
        self._waiting = still
        HELD_SEARCHES.labels(self._topics.flow).set(len(still))
        return outputs

    def _answer_now(self, waiting: _Waiting) -> list[Output]:
        """A parked search answered as things stand: dropped if its partition left (the new owner reads it again:
        ``parked_offsets``), ``restoring`` while its shard restores, else current or ``stale``. Never raises."""
        try:
            if self._states.get(waiting.partition) is None:
                return []
            if self._states.restore.is_restoring(waiting.partition):
                return self._answer(waiting.record, waiting.request, restoring=True)
            return self._answer(waiting.record, waiting.request,
                                stale=not self._caught_up(waiting.partition, waiting.request))
        except Exception as exc:  # e.g. a spent regex budget: answer that request, keep the stage
            return self.on_failure(waiting.record, exc)

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        """Tell the joiner this shard failed (so it need not wait), or the client directly; nobody
        about a record no stage writes (it is dead-lettered)."""
        if isinstance(error, InvalidRecordError):
            return []
        request_id = record.headers.get(h.REQUEST_ID)
        reply_to = record.headers.get(h.REPLY_TO)
        deadline = h.read_int(record.headers, h.DEADLINE_MS)
        if not request_id or not reply_to or deadline is None:
            return error_reply(record, error)
        if not self._topics.is_reply_topic(reply_to.decode(errors="replace")):
            return []  # the joiner would refuse the part: nobody can be answered
        part = PartialResult(  # headers are anybody's bytes: this must not raise
            request_id=request_id.decode(errors="replace"), shard=record.partition, expected_shards=[],
            reply_to=reply_to.decode(errors="replace"),
            deadline_ms=deadline, parameters={}, docs=[], error=f"shard {record.partition}: {type(error).__name__}: {error}",
        )
        value, headers = PARTIAL_RESULT.encode_record(part, query_headers(part.request_id, part.reply_to, deadline))
        return [Output(self._topics.partials, value, request_id, None, headers)]

    def _answer_by_partition(self, ready: list[tuple[Inbound, Request, bool]]) -> list[Output]:
        """Answer these requests, the shards of different partitions side by side.

        A process owning several partitions gets one copy of a query per partition in the same
        batch; answered one after the other, two shards on one process took twice one shard's time.
        FAISS releases the GIL while it searches, so each partition's search runs on its own core
        (each on one OpenMP thread: ``faiss_search``): this thread answers one partition, a pool the
        others. Each partition's state is touched by one thread only, and the outputs keep the order
        of the records.
        """
        def answer(items: list[tuple[int, Inbound, Request, bool]]) -> list[tuple[int, list[Output]]]:
            return [(i, self._answer(record, request, restoring=restoring)) for i, record, request, restoring in items]

        by_partition: dict[int, list[tuple[int, Inbound, Request, bool]]] = {}
        for i, (record, request, restoring) in enumerate(ready):
            by_partition.setdefault(record.partition, []).append((i, record, request, restoring))
        first, *others = by_partition.values() or [[]]
        if others and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                            thread_name_prefix="shard-search")
        futures = [self._pool.submit(answer, items) for items in others] if self._pool is not None else []
        done = answer(first)  # this thread takes one partition meanwhile
        for future in futures:
            done.extend(future.result())
        return [output for _, outputs in sorted(done, key=lambda part: part[0]) for output in outputs]

    def _caught_up(self, partition: int, request: Request) -> bool:
        wanted = request.min_offsets.get(partition)
        return wanted is None or self._states.checkpoint(partition).ingest_offset >= wanted

    def _answer(self, record: Inbound, request: Request, *, stale: bool = False,
                restoring: bool = False) -> list[Output]:
        """One part per selected field (or one part when the flow has no fields)."""
        params = SearchParameters.parse(request.parameters)
        fields: list[str | None] = list(params.filter_by) if params.filter_by else [None]
        headers = query_headers(request.request_id, request.reply_to, request.deadline_ms, created_ms_of(record))
        return [self._answer_field(record.partition, request, params, field_name, headers, stale=stale,
                                   restoring=restoring)
                for field_name in fields]

    def _answer_field(self, partition: int, request: Request, params: SearchParameters, field_name: str | None,
                      headers: tuple[h.Header, ...], *, stale: bool, restoring: bool) -> Output:
        docs, notice = ([dataclasses.replace(doc, embedding=None, matches=[]) for doc in request.docs], None) \
            if restoring else self._search(partition, request, params, field_name)
        part = PartialResult(
            request_id=request.request_id, shard=partition, expected_shards=list(range(self._topics.partitions)),
            reply_to=request.reply_to, deadline_ms=request.deadline_ms, parameters=request.parameters,
            docs=docs, warning=notice, stale=stale, field_name=field_name,
            expected_fields=list(params.filter_by or []), restoring=restoring,
        )
        value, part_headers = PARTIAL_RESULT.encode_record(part, headers)
        return Output(self._topics.partials, value, request.request_id, None, part_headers)

    def _search(self, partition: int, request: Request, params: SearchParameters,
                field_name: str | None) -> tuple[list[Document], str | None]:
        """This shard's answer per query document: for ``dense`` and ``lexical`` retrieval its top ``arm_depth``
        (``top_k``, or the candidates of diversity and grouping), for ``hybrid`` each arm's top ``arm_depth`` in
        one list, each document once with the score of
        every arm that found it (``fusion.DENSE_ARM``, ``fusion.LEXICAL_ARM``): the joiner fuses, after
        merging the shards' lists, so that fused scores do not depend on the number of shards. With
        ``diversity``, each match carries its best unit's vector as ``embedding`` (the joiner's MMR reads it,
        then drops it from the reply).

        :returns: the query documents with their matches, and the warning to give when a window
            stopped at its limit (None otherwise): the matches are good, there may be more.
        :raises InvalidParameterError: for a lexical search without statistics from the fan-out, or
            with an analyzer other than this shard's.
        """
        index = self._states.get(partition)
        if index is None:
            raise RuntimeError(f"shard {partition} is not open on this process")
        if not request.docs:  # a probe (``Client.probe``): this shard's freshness is the answer
            return [], None
        operations = params.operations_for(INDEX.name, self._operations)
        arms: dict[str, WindowResult] = {}
        if params.uses_dense:
            options: dict[str, object] = {}
            if params.index_type is not None:
                options["index_type"] = params.index_type
            if field_name is not None:
                options["fields"] = [field_name]
            if params.diversity is not None:
                options["with_vectors"] = True
            if params.filter is not None:
                options["filter"] = params.filter
            arms[DENSE_ARM] = self._window.run(index=index, queries=request.docs, top_k=params.arm_depth,
                                               chunk_oversample=params.chunk_oversample, operations=operations,
                                               search_options=options)
            FLAT_SCAN_FALLBACKS.labels(self._topics.flow, str(partition)).set(index.flat_scan_fallbacks)
        if params.uses_lexical:
            arms[LEXICAL_ARM] = self._window.run_arm(
                self._lexical_rows(index, request, params, field_name),
                queries=request.docs, top_k=params.arm_depth,
                chunk_oversample=params.chunk_oversample, operations=operations)
        notices = [f"shard {partition}: index-stage window limit reached ({result.vectors_read} vectors read, "
                   f"MAX_WINDOW_VECTORS {self._window.config.max_vectors}): fewer than {params.arm_depth} documents "
                   f"passed for {', '.join(result.limited)}; more may exist on this shard"
                   for result in arms.values() if result.limited]
        docs = next(iter(arms.values())).docs if len(arms) == 1 else _arm_union(arms)
        return list(docs), "; ".join(notices) or None

    @staticmethod
    def _lexical_rows(index: CompoundIndexer, request: Request, params: SearchParameters,
                      field_name: str | None) -> SearchRows:
        """The lexical arm over this request's queries, scored with the request's statistics, restricted by
        its filter; with its units' vectors when the joiner diversifies (a document only this arm found
        needs one too)."""
        statistics = request.lexical_statistics
        if statistics is None:
            raise InvalidParameterError("a lexical search reached the shard without corpus statistics: only the "
                                        "fan-out (the encode stage) attaches them; send searches to the query topic")
        if statistics.analyzer != index.analyzer_name:
            raise InvalidParameterError(f"the fan-out analysed the query with {statistics.analyzer!r}, this shard its "
                                        f"texts with {index.analyzer_name!r}: upgrade both alike")
        stats = statistics.for_field(field_name)
        terms = [index.analyze(doc.text or "") for doc in request.docs]
        fields = [field_name] if field_name is not None else None

        def best(rows: Sequence[int], window: int) -> list[list[Hit]]:
            return [index.search_lexical(terms=terms[row], stats=stats, top_k=window, fields=fields,
                                         filter=params.filter, with_vectors=params.diversity is not None)
                    for row in rows]

        return best


def _arm_union(arms: dict[str, WindowResult]) -> list[Document]:
    """Per query, the documents of every arm once (by document id), each with the score of every arm that
    found it under the arm's name; the first arm's copy keeps its matched chunks."""
    docs = []
    for queries in zip(*(result.docs for result in arms.values())):
        union: dict[str, Document] = {}
        for arm, query in zip(arms, queries):
            for match in query.matches:
                kept = union.setdefault(match.id, match)
                kept.scores = {**kept.scores, arm: match.scores[SCORE_NAME]}
        docs.append(dataclasses.replace(queries[0], matches=[union[key] for key in sorted(union)]))
    return docs
