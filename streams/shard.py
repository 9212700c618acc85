"""The index stage: shard p applies partition p of ``<flow>.encoded`` and answers partition p of
``<flow>.search``.

RocksDB is the truth: each batch's documents and its consumed offsets go into one write
batch, and on assignment the shard resumes from its stored offset, not from the group's.
A shard restores before it serves (``streams/state/restore.py``): until it has read its
partition to the end, searches get a ``restoring`` part at once, never silently incomplete
results. A search that names ``min_offsets`` waits (until shortly before its deadline) for
the shard to apply that ingest offset: read-your-writes without sleeping.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING

from processors.document import Document, copy_tree
from processors.index.base import Change
from processors.index.compound import CompoundIndexer
from processors.query.operators import Operation
from processors.exceptions import InvalidParameterError
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import SearchParameters
from processors.query.window import WindowedSearch, WindowedSearchConfig
from processors.rankers.base import Ranker
from streams import headers as h
from streams.exceptions import InvalidRecordError
from streams.metrics import INDEX_VECTORS
from streams.query import created_ms_of, decode_live, error_reply, query_headers
from streams.serde import PARTIAL_RESULT, REQUEST, PartialResult, Request
from streams.stage import Inbound, Output
from streams.state.restore import Verdict
from streams.state.shards import ShardCheckpoint, ShardStates
from streams.topics import FlowTopics
from streams.transform import decode_document, ingest_offset_of, is_marker

__all__ = ["ShardIngest", "ShardSearch"]

logger = logging.getLogger(__name__)

STALE_MARGIN_MS = 200
"""A waiting search is answered (flagged stale) this long before its deadline."""


class ShardIngest:
    """Applies encoded documents and tombstones to the partition's shard index."""

    def __init__(self, *, states: ShardStates, topics: FlowTopics, filter_by: Sequence[str] = ()) -> None:
        self._states = states
        self._topics = topics
        self._filter_by = tuple(filter_by)

    def assigned(self, partitions: Sequence[int]) -> dict[int, int]:
        starts = {}
        for partition in partitions:
            checkpoint = self._states.open(partition)
            if checkpoint.encoded_offset >= 0:
                starts[partition] = checkpoint.encoded_offset + 1
                logger.info(f"shard {partition}: resuming from its stored offset {starts[partition]} of "
                            f"{self._topics.encoded}, no rebuild", extra={"partition": partition,
                                                                          "ingest_offset": checkpoint.ingest_offset})
            else:
                starts[partition] = OFFSET_BEGINNING
                logger.info(f"shard {partition}: empty, restoring from the beginning of {self._topics.encoded}",
                            extra={"partition": partition})
        return starts

    # -- restore (the stage loop reports what its consumer sees) ---------------------------

    def watermarks(self, partition: int, low: int, high: int) -> int | None:
        """The partition's watermarks from the last fetch response; returns an offset to seek
        to when the shard had to be rebuilt."""
        if self._states.get(partition) is None:
            return None
        checkpoint = self._states.checkpoint(partition)
        next_offset = checkpoint.encoded_offset + 1 if checkpoint.encoded_offset >= 0 else -1
        verdict = self._states.restore.observe(partition, next_offset, low, high)
        if verdict is Verdict.CAUGHT_UP:
            self._log_restored(partition)
        elif verdict is Verdict.BEYOND_END:
            self._rebuild(partition, f"stored offset {checkpoint.encoded_offset} is past the end of "
                                     f"{self._topics.encoded} (high watermark {high})")
            return OFFSET_BEGINNING
        return None

    def end_reached(self, partition: int) -> None:
        if self._states.restore.end_reached(partition):
            self._log_restored(partition)

    def out_of_range(self, partition: int, low: int, high: int) -> int:
        """The broker answered OFFSET_OUT_OF_RANGE for the shard's position.

        Below the log start (retention or ``delete_records`` removed records the shard had not
        applied): the shard keeps its state and goes on from the log start. The records in between
        are gone, so up to that many documents may be missing or stale; the shard says so once in
        its log and, for as long as it holds that state, in ``status``. Rebuilding instead would
        lose every document below the new log start, which the topic cannot give back.
        Past the end (the topic was recreated or truncated), or watermarks unknown: the old state
        cannot be told apart from the topic's, so it is set aside (never deleted) and the shard
        rebuilt from the log start.

        :param low: the log start offset the broker reports now (< 0: unknown).
        :param high: the high watermark the broker reports now (< 0: unknown).
        :returns: the offset to resume from.
        """
        checkpoint = self._states.checkpoint(partition)
        next_offset = checkpoint.encoded_offset + 1
        if checkpoint.encoded_offset >= 0 and next_offset < low:
            return self._skip_to_log_start(partition, checkpoint, low)
        self._rebuild(partition, f"the broker answered OFFSET_OUT_OF_RANGE for offset {next_offset} of "
                                 f"{self._topics.encoded} (log start {low}, high watermark {high})")
        return low if low >= 0 else OFFSET_BEGINNING

    def _skip_to_log_start(self, partition: int, checkpoint: ShardCheckpoint, low: int) -> int:
        """Keep the state, note the records lost to it, and resume at the log start ``low``."""
        first = checkpoint.encoded_offset + 1
        lost = low - first
        reason = (f"records {first}..{low - 1} of {self._topics.encoded} were deleted (retention or delete_records) "
                  f"before the shard applied them")
        noted = dataclasses.replace(checkpoint, encoded_offset=low - 1, missing=checkpoint.missing + lost,
                                    missing_reason=reason)
        index = self._note(partition, noted)
        logger.warning(f"shard {partition}: {reason}: up to {lost} documents may be missing or stale; keeping its "
                       f"{index.stats().documents} documents and going on from the log start offset {low}. Re-send "
                       f"those documents, or run `streamsearch reindex` while {self._topics.ingest} still holds them",
                       extra={"partition": partition, "missing": lost, "log_start": low})
        return low

    def _rebuild(self, partition: int, why: str) -> None:
        """Rebuild the shard from the topic, keeping the old state aside (the topic cannot give
        it back) rather than deleting it, and note its documents as possibly missing."""
        old = self._states.get(partition)
        documents = old.stats().documents if old is not None else 0
        self._states.destroy(partition, keep_aside=True)
        aside = self._states.set_aside.get(partition)
        kept = ""
        if documents:
            kept = (f"; up to {documents} documents it held may be missing (those not in the topic now); its "
                    f"previous state is kept at {aside} (delete it when not needed)")
            self._note(partition, ShardCheckpoint(
                missing=documents, missing_reason=f"{why}: rebuilt from the topic, previous state kept at {aside}"))
        logger.warning(f"shard {partition}: {why}; the topic was recreated or truncated (or the memory-only broker "
                       f"restarted): rebuilding the shard from the beginning of {self._topics.encoded}{kept}",
                       extra={"partition": partition, "missing": documents})

    def _note(self, partition: int, checkpoint: ShardCheckpoint) -> CompoundIndexer:
        """Store a checkpoint at once (no change applied), so a restart resumes from it."""
        index = self._states.get(partition)
        if index is None:
            raise RuntimeError(f"shard {partition} is not open on this process")
        index.apply(changes=[], checkpoint=checkpoint.to_bytes())
        self._states.set_checkpoint(partition, checkpoint)
        return index

    def _log_restored(self, partition: int) -> None:
        index = self._states.get(partition)
        logger.info("shard restored, serving", extra={
            "partition": partition, "seconds": round(self._states.restore.seconds_restoring(partition), 3),
            "documents": index.stats().documents if index else 0,
            "encoded_offset": self._states.checkpoint(partition).encoded_offset})

    def shard_status(self) -> list[dict[str, object]]:
        """Per open shard: documents, vectors, applied offsets and built index types."""
        report = []
        for partition in self._states.partitions():
            index = self._states.get(partition)
            if index is None:
                continue
            stats = index.stats()
            checkpoint = self._states.checkpoint(partition)
            report.append({"partition": partition, "documents": stats.documents, "vectors": stats.vectors,
                           "restoring": self._states.restore.is_restoring(partition),
                           "encoded_offset": checkpoint.encoded_offset, "ingest_offset": checkpoint.ingest_offset,
                           "index_types": list(stats.index_types), "missing": checkpoint.missing,
                           "missing_reason": checkpoint.missing_reason})
        return report

    def revoked(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            self._states.close(partition)

    def close(self) -> None:
        self._states.close_all()

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        by_partition: dict[int, list[Inbound]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        for partition, part in by_partition.items():
            changes = []
            for record in part:
                if is_marker(record):
                    continue
                if record.value is None:
                    if record.key is None:
                        raise ValueError("a tombstone needs the document id as its key")
                    changes.append(Change(record.key.decode(), None))
                else:
                    doc = decode_document(record)
                    changes.append(Change(doc.id, self._only_indexed_fields(doc)))
            self._apply(partition, changes, part)
        return []

    def _only_indexed_fields(self, doc: Document) -> Document:
        """With ``filter_by``, nodes of other fields keep their text but lose their vector."""
        if not self._filter_by:
            return doc
        copy = copy_tree(doc)
        stack = [copy]
        while stack:
            node = stack.pop()
            if node.field_name is not None and node.field_name not in self._filter_by:
                node.embedding = None
            stack.extend(node.chunks)
        return copy

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        """Count the bad record as applied, so a restart does not dead-letter it twice."""
        self._apply(record.partition, [], [record])
        return []

    def tick(self) -> list[Output]:
        return []

    def _apply(self, partition: int, changes: list[Change], batch: Sequence[Inbound]) -> None:
        """Apply ``changes`` with the batch's checkpoint: its last encoded offset, and the highest
        ingest offset it carries (not the last's: a stage's output order need not follow ingest's)."""
        last = batch[-1]
        index = self._states.get(partition)
        if index is None:
            raise RuntimeError(f"shard {partition} is not open on this process")
        previous = self._states.checkpoint(partition)
        checkpoint = dataclasses.replace(
            previous, encoded_offset=last.offset,
            ingest_offset=max(previous.ingest_offset, *(ingest_offset_of(r, self._topics.ingest) for r in batch)),
        )
        index.apply(changes=changes, checkpoint=checkpoint.to_bytes())
        self._states.set_checkpoint(partition, checkpoint)
        INDEX_VECTORS.labels(self._topics.flow, str(partition)).set(index.vector_count)


@dataclass(slots=True)
class _Waiting:
    partition: int
    request: Request
    record: Inbound


class ShardSearch:
    """Answers searches on the partitions this process owns, from their shard index."""

    def __init__(self, *, states: ShardStates, ranker: Ranker, topics: FlowTopics,
                 operations: Sequence[Operation] = (), window: WindowedSearchConfig | None = None) -> None:
        self._states = states
        self._topics = topics
        self._operations = tuple(operations)
        self._window = WindowedSearch(window or WindowedSearchConfig(), ranker=ranker)
        self._waiting: list[_Waiting] = []

    MAX_WAITING = 10_000
    """Requests parked for their read-your-writes offsets; past this, the one due first is answered
    ``stale`` at once (a flood of requests naming offsets far ahead must not fill memory)."""

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
        outputs = []
        for record, request in decoded:
            if self._states.restore.is_restoring(record.partition):
                outputs.extend(self._answer(record, request, restoring=True))
            elif self._caught_up(record.partition, request):
                outputs.extend(self._answer(record, request, stale=False))
            else:
                self._waiting.append(_Waiting(record.partition, request, record))
        while len(self._waiting) > self.MAX_WAITING:
            first = min(self._waiting, key=lambda waiting: waiting.request.deadline_ms)
            self._waiting.remove(first)
            outputs.extend(self._answer(first.record, first.request, stale=True))
        return outputs

    def tick(self) -> list[Output]:
        if not self._waiting:
            return []
        now = time.time() * 1000
        outputs, still = [], []
        for waiting in self._waiting:
            if self._states.get(waiting.partition) is None:
                continue  # the partition moved away; its new owner answers
            try:
                if self._states.restore.is_restoring(waiting.partition):
                    outputs.extend(self._answer(waiting.record, waiting.request, restoring=True))
                elif self._caught_up(waiting.partition, waiting.request):
                    outputs.extend(self._answer(waiting.record, waiting.request, stale=False))
                elif now >= waiting.request.deadline_ms - STALE_MARGIN_MS:
                    outputs.extend(self._answer(waiting.record, waiting.request, stale=True))
                else:
                    still.append(waiting)
            except Exception as exc:  # e.g. a spent regex budget: answer that request, keep the stage
                outputs.extend(self.on_failure(waiting.record, exc))
        self._waiting = still
        return outputs

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
        return [Output(self._topics.partials, PARTIAL_RESULT.encode(part), request_id, None,
                       query_headers(part.request_id, part.reply_to, deadline) + (PARTIAL_RESULT.header(),))]

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
        return Output(self._topics.partials, PARTIAL_RESULT.encode(part), request.request_id, None,
                      headers + (PARTIAL_RESULT.header(),))

    def _search(self, partition: int, request: Request, params: SearchParameters,
                field_name: str | None) -> tuple[list[Document], str | None]:
        """This shard's top-k per query document: chunk hits ranked to documents, then the
        index stage's query language, the window widened until top_k pass (``WindowedSearch``).

        :returns: the query documents with their matches, and the warning to give when the window
            stopped at its limit (None otherwise): the matches are good, there may be more.
        """
        index = self._states.get(partition)
        if index is None:
            raise RuntimeError(f"shard {partition} is not open on this process")
        options: dict[str, object] = {}
        if params.index_type is not None:
            options["index_type"] = params.index_type
        if field_name is not None:
            options["fields"] = [field_name]
        result = self._window.run(index=index, queries=request.docs, top_k=params.top_k,
                                  chunk_oversample=params.chunk_oversample,
                                  operations=params.operations_for("index", self._operations), search_options=options)
        notice = None
        if result.limited:
            notice = (f"shard {partition}: index-stage window limit reached ({result.vectors_read} vectors read, "
                      f"MAX_WINDOW_VECTORS {self._window.config.max_vectors}): fewer than top_k={params.top_k} "
                      f"documents passed for {', '.join(result.limited)}; more may exist on this shard")
        return list(result.docs), notice
