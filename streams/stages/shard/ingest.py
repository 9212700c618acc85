"""The index stage's index path: shard p applies partition p of ``<flow>.encoded``, its changelog.

RocksDB is the truth: each batch's documents and its consumed offsets go into one write
batch, and on assignment the shard resumes from its stored offset, not from the group's.
A shard restores before it serves (``streams/stages/shard/restore.py``); ``search.py`` answers
from the same shards.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

from confluent_kafka import OFFSET_BEGINNING

from processors.document import Document, copy_tree
from processors.index.base import ApplyResult, Change
from processors.index.compound import CompoundIndexer
from streams.runtime.metrics import INDEX_VECTORS
from streams.runtime.spec import Inbound, Output, PathHandler, Restoring
from streams.stages.documents import (
    check_partition,
    decode_stored_document,
    ingest_offset_of,
    is_marker,
    require_given_vectors,
)
from streams.stages.shard.restore import Verdict
from streams.stages.shard.states import ShardCheckpoint, ShardStates
from streams.wire.codec import LEXICAL_COUNT
from streams.wire.records import LEXICAL_SNAPSHOT_BEGIN, LEXICAL_SNAPSHOT_END, LexicalCount, lexical_key
from streams.wire.topics import FlowTopics

__all__ = ["DEAD_LETTERED_FLUSH_S", "ShardIngest"]

DEAD_LETTERED_FLUSH_S = 0.5
"""The longest a shard holds a dead-lettered record's count as applied only in memory (its ordinary writes:
``FLUSH_INTERVAL_S``): a crash meanwhile sends it to the dead-letter topic again. Not a flush for each such
record: a flood of them would write a RocksDB file each."""

logger = logging.getLogger(__name__)

class ShardIngest(PathHandler, Restoring):
    """Applies encoded documents and tombstones to the partition's shard index; owns the shards of
    its partitions and restores each before it serves (declared: ``Restoring``)."""

    def __init__(self, *, states: ShardStates, topics: FlowTopics, filter_by: Sequence[str] = (),
                 source: str | None = None, given_dim: int | None = None) -> None:
        """:param source: the topic it applies, its changelog: ``encoded``, or in a flow without a model
            the one the documents arrive on (``ingest``, or ``segmented``).
        :param given_dim: in a flow without a model, the documents' vectors are checked here (numeric,
            finite, this many values), as the encoder would check them; None: the encoder did.
        """
        self._states = states
        self._topics = topics
        self._filter_by = tuple(filter_by)
        self._source = source or topics.encoded
        self._ingest = topics.ingest
        """Its name, asked of every record (``FlowTopics`` composes it at each call)."""
        self._given_dim = given_dim
        self._unpublished: set[int] = set()
        """Partitions whose lexical statistics are to be published whole at the next tick (just opened)."""
        self._dead_lettered: set[int] = set()
        """Partitions whose shard counts a dead-lettered record as applied in memory only, not flushed yet."""

    def assigned(self, partitions: Sequence[int]) -> dict[int, int]:
        starts = {}
        for partition in partitions:
            checkpoint = self._states.open(partition)
            self._unpublished.add(partition)
            if checkpoint.encoded_offset >= 0:
                starts[partition] = checkpoint.encoded_offset + 1
                logger.info(f"shard {partition}: resuming from its stored offset {starts[partition]} of "
                            f"{self._source}, no rebuild", extra={"partition": partition,
                                                                          "ingest_offset": checkpoint.ingest_offset})
            else:
                starts[partition] = OFFSET_BEGINNING
                logger.info(f"shard {partition}: empty, restoring from the beginning of {self._source}",
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
                                     f"{self._source} (high watermark {high})")
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
                                 f"{self._source} (log start {low}, high watermark {high})")
        return low if low >= 0 else OFFSET_BEGINNING

    def _skip_to_log_start(self, partition: int, checkpoint: ShardCheckpoint, low: int) -> int:
        """Keep the state, note the records lost to it, and resume at the log start ``low``."""
        first = checkpoint.encoded_offset + 1
        lost = low - first
        reason = (f"records {first}..{low - 1} of {self._source} were deleted (retention or delete_records) "
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
                       f"restarted): rebuilding the shard from the beginning of {self._source}{kept}",
                       extra={"partition": partition, "missing": documents})

    def _note(self, partition: int, checkpoint: ShardCheckpoint) -> CompoundIndexer:
        """Store a checkpoint at once (no change applied), so a restart resumes from it."""
        index = self._states.get(partition)
        if index is None:
            raise RuntimeError(f"shard {partition} is not open on this process")
        index.apply(changes=[], checkpoint=checkpoint.to_bytes())
        index.flush()  # a rebuild's note of what may be missing would not come back after a crash
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
            self._unpublished.discard(partition)
            self._dead_lettered.discard(partition)  # the close flushes it
            self._states.close(partition)

    def close(self) -> None:
        self._states.close_all()

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        by_partition: dict[int, list[Inbound]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        outputs: list[Output] = []
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
                    doc, stored = self._checked(record)
                    changes.append(Change(doc.id, self._only_indexed_fields(doc), stored))
            changed = self._apply(partition, changes, part).lexical_changed
            outputs += self._lexical_statistics(partition, changed)
        return outputs

    def _lexical_statistics(self, partition: int, keys: Iterable[tuple[str, str]] | None, *,
                            tombstones: bool = True) -> list[Output]:
        """The shard's own lexical statistics for ``keys`` (all it holds if None) as absolute records on
        partition p of ``<flow>.lexical-stats``: a zero is a tombstone, so that compaction forgets it.
        A crash between the store's write and these records is healed by the whole set sent on open."""
        index = self._states.get(partition)
        if index is None or not index.config.lexical:
            return []
        outputs = []
        for key, (count, tokens) in sorted(index.lexical_counts(index.lexical_keys() if keys is None else keys).items()):
            if not tombstones and count == tokens == 0:
                continue
            value, headers = LEXICAL_COUNT.encode_record(LexicalCount(count, tokens))
            outputs.append(Output(self._topics.lexical_stats, None if count == tokens == 0 else value,
                                  lexical_key(*key), partition, headers))
        return outputs

    def _checked(self, record: Inbound) -> tuple[Document, bytes | None]:
        """The record's document and its stored form (``decode_stored_document``: no second encoding);
        read straight from ingest (no stage before the shard), it is also checked for what a stage would
        have: its partition and, without a model, its vectors."""
        check_partition(record, self._ingest, self._topics.partitions)
        doc, stored = decode_stored_document(record)
        return doc if self._given_dim is None else require_given_vectors(doc, self._given_dim), stored

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
        """Count the bad record as applied, so a restart does not dead-letter it twice; flushed to disk at the next
        tick half a second after the last flush at the latest (``DEAD_LETTERED_FLUSH_S``), not ``FLUSH_INTERVAL_S``."""
        self._apply(record.partition, [], [record])
        self._dead_lettered.add(record.partition)
        return []

    def tick(self) -> list[Output]:
        """The whole lexical statistics of the partitions opened since the last tick, each set between a
        begin and an end marker (``LEXICAL_SNAPSHOT_BEGIN``): readers forget the keys it did not refresh. And each
        shard's RocksDB flushed where a write has waited long enough in memory (``CompoundIndexer.flush_if_due``)."""
        for partition in self._states.partitions():
            if (index := self._states.get(partition)) is not None and index.flush_if_due(
                    interval_s=DEAD_LETTERED_FLUSH_S if partition in self._dead_lettered else None):
                self._dead_lettered.discard(partition)
        outputs = []
        for partition in sorted(self._unpublished):
            snapshot = self._lexical_statistics(partition, None, tombstones=False)
            index = self._states.get(partition)
            if index is None or not index.config.lexical:
                continue
            value, headers = LEXICAL_COUNT.encode_record(LexicalCount(len(snapshot)))
            outputs += [Output(self._topics.lexical_stats, value, LEXICAL_SNAPSHOT_BEGIN, partition, headers),
                        *snapshot, Output(self._topics.lexical_stats, value, LEXICAL_SNAPSHOT_END, partition, headers)]
        self._unpublished.clear()
        return outputs

    def _apply(self, partition: int, changes: list[Change], batch: Sequence[Inbound]) -> ApplyResult:
        """Apply ``changes`` with the batch's checkpoint: its last encoded offset, and the highest
        ingest offset it carries (not the last's: a stage's output order need not follow ingest's)."""
        last = batch[-1]
        index = self._states.get(partition)
        if index is None:
            raise RuntimeError(f"shard {partition} is not open on this process")
        previous = self._states.checkpoint(partition)
        checkpoint = dataclasses.replace(
            previous, encoded_offset=last.offset,
            ingest_offset=max(previous.ingest_offset, *(ingest_offset_of(r, self._ingest) for r in batch)),
        )
        result = index.apply(changes=changes, checkpoint=checkpoint.to_bytes())
        self._states.set_checkpoint(partition, checkpoint)
        INDEX_VECTORS.labels(self._topics.flow, str(partition)).set(index.vector_count)
        return result
