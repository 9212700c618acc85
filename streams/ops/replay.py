"""Rebuild a flow's shards by replaying ``<flow>.encoded``: no re-encoding, same result.

The encoded topic is the index's changelog (compacted, keyed by document id, embeddings
included), so applying it again through the shard's own ``ShardIngest`` gives the same
ids, vectors and search results as the index that consumed it live: upserts by id and
tombstones make replaying every version harmless. Replay runs with the index stage stopped
(the stage holds each shard's RocksDB lock), or into another ``--state-dir``. A running index
stage needs no command: a shard without local state restores itself the same way.

Records go through the stage's own failure path (``streams/runtime/failures.py``) with the index
stage's policy: what the live stage dead-lettered, replay skips and reports, never dies on. A record
that killed the live stage (its crash-loop breaker dead-lettered it) would kill replay too: the
dead-letter topic names it, and replay sets it apart unprocessed, as the stage did.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from tqdm import tqdm

from processors.index.compound import CompoundIndexer
from streams.exceptions import ReadTimeoutError, StreamsearchError
from streams.flow.spec import FlowSpec
from streams.kafka.settings import KafkaSettings
from streams.kafka.reader import TopicReader
from streams.client.dead_letters import read_dead_letters
from streams.runtime.failures import Failures
from streams.runtime.inflight import CrashLoopError, InFlightVerdict
from streams.stages.kinds import FAILURE_POLICY, INDEX, shard_ingest
from streams.stages.shard.ingest import ShardIngest
from streams.runtime.spec import Inbound, Output
from streams.stages.shard.states import ShardStates

__all__ = ["ReplayResult", "replay_index"]

logger = logging.getLogger(__name__)

REPLAY_PARTITION_FETCH_BYTES = 16 << 20
"""``max.partition.fetch.bytes`` of the replay's consumer (librdkafka's default: 1 MiB). A replay reads whole
partitions of large records (a 10-chunk document of 384-d vectors is 17 KB: 60 to a default fetch); with
decoding compiled it waited on fetches (``benchmarks/restore.py``: 30.7-32.2k chunks/s, 32.9-33.2k with
this). librdkafka's prefetch queue (``queued.max.messages.kbytes``, 64 MiB) still bounds what it holds."""

REPLAY_FETCH_QUEUE_BACKOFF_MS = 10
"""``fetch.queue.backoff.ms`` of the replay's consumer (librdkafka's default: 1,000). When a partition's prefetch
queue passes its bound, librdkafka postpones that partition's next fetch by this long; a replay empties the
64 MiB queue (~4,000 10-chunk records) in about a second, then waited out the rest of the postponement: two
stalls of 0.3-0.5 s per 100,000 chunks, timed inside the reader. With 10 ms they are gone, and the queue's bound
still holds (``benchmarks/restore.py``, two series in turns: time inside the reader 0.82-0.93 -> 0.15 s; 34.7k /
36.4k / 36.8k / 37.1k -> 46.4k / 46.6k / 42.6k / 37.2k chunks/s; peak RSS not higher)."""


@dataclass(slots=True)
class ReplayResult:
    """What a replay applied, per shard, and how long it took."""

    records: int = 0
    seconds: float = 0.0
    documents: dict[int, int] = field(default_factory=dict)
    vectors: dict[int, int] = field(default_factory=dict)
    skipped: int = 0
    """Records not applied: those the live stage dead-lettered (each logged with its reason)."""


def replay_index(flow: FlowSpec, settings: KafkaSettings, *, from_timestamp_ms: int | None = None,
                 progress: bool = True, batch_size: int = 512, timeout_s: float = 3600.0) -> ReplayResult:
    """Apply ``<flow>.encoded`` to every shard under the flow's state dir, to the end of each partition.

    Without ``from_timestamp_ms`` the shards are deleted and rebuilt from the beginning. With
    it, records from that time on are applied again over the current state (a repair; they
    are upserts, so records applied twice change nothing).

    :raises StreamsearchError: if a shard is held by a running index stage, or the topic has
        no record at that time, or the end of a partition is not reached within ``timeout_s``.
    """
    topics = flow.topics
    states = ShardStates(root=flow.state_dir, flow=topics.prefix, config=flow.stage(INDEX.name).config)
    ingest = shard_ingest(flow, states)
    result = ReplayResult()
    apply = _Records(ingest, flow, result, killers=_killers(settings, flow)).apply
    partitions = list(range(topics.partitions))
    changelog = flow.input_topic(INDEX.name)  # what the index stage reads is its shards' changelog
    reader = TopicReader(settings, group_id=f"{topics.prefix}.replay.{uuid.uuid4().hex[:8]}",
                         **{"fetch.wait.max.ms": 100, "max.partition.fetch.bytes": REPLAY_PARTITION_FETCH_BYTES,
                            "fetch.queue.backoff.ms": REPLAY_FETCH_QUEUE_BACKOFF_MS})
    started = time.monotonic()
    try:
        starts = _open_shards(ingest, states, partitions, rebuild=from_timestamp_ms is None)
        if from_timestamp_ms is not None:
            starts = _offsets_at(reader.consumer, changelog, partitions, from_timestamp_ms)
        reader.assign([TopicPartition(changelog, p, starts[p]) for p in partitions])
        with contextlib.ExitStack() as bulk:
            for partition in partitions:
                bulk.enter_context(_opened(states, partition).bulk_load())
            result.records = _apply_to_end(reader, apply, changelog, batch_size, progress, started + timeout_s)
        for partition in partitions:
            index = _opened(states, partition)
            result.documents[partition] = index.stats().documents
            result.vectors[partition] = index.vector_count
    finally:
        reader.close()
        ingest.close()
    result.seconds = time.monotonic() - started
    return result


def _opened(states: ShardStates, partition: int) -> CompoundIndexer:
    index = states.get(partition)
    assert index is not None, f"shard {partition} was opened by _open_shards"
    return index


def _open_shards(ingest: ShardIngest, states: ShardStates, partitions: list[int], *, rebuild: bool) -> dict[int, int]:
    """Open (or delete and recreate) every shard; the offsets to start from."""
    try:
        if rebuild:
            for partition in partitions:
                states.destroy(partition)
            return {p: OFFSET_BEGINNING for p in partitions}
        return ingest.assigned(partitions)
    except Exception as exc:  # rocksdict raises a plain exception naming the lock file
        if "lock" not in str(exc).lower():
            raise
        raise StreamsearchError(f"a shard under {states.path(0).parent} is open in a running index stage: stop it, "
                                "or replay into another --state-dir") from exc


def _offsets_at(consumer, topic: str, partitions: list[int], timestamp_ms: int) -> dict[int, int]:  # type: ignore[no-untyped-def]
    found = consumer.offsets_for_times([TopicPartition(topic, p, timestamp_ms) for p in partitions], timeout=30)
    starts = {}
    for tp in found:
        if tp.error is not None:
            raise StreamsearchError(f"no offset for {topic}[{tp.partition}] at {timestamp_ms}: {tp.error}")
        starts[tp.partition] = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING if tp.offset == -2 else tp.offset
    return starts


def _apply_to_end(reader: TopicReader, apply: Callable[[list[Inbound]], None], topic: str, batch_size: int, progress: bool,
                  deadline: float) -> int:
    """Consume and apply up to the end of every partition; a bar counts records."""
    applied = 0
    with tqdm(unit="rec", desc="replayed", disable=not progress) as bar:
        try:
            for fetched in reader.to_end(timeout=deadline - time.monotonic(), max_records=batch_size, poll_s=0.5):
                if fetched.errors:
                    raise StreamsearchError(f"replay of {topic}: {fetched.errors[0]}")
                records = [Inbound.of(msg) for msg in fetched.records]
                if records:
                    apply(records)
                    applied += len(records)
                    bar.update(len(records))
                bar.total = applied + reader.remaining()
                bar.refresh()
        except ReadTimeoutError as exc:
            raise StreamsearchError(f"replay did not reach the end of partitions {sorted(p for _, p in exc.unfinished)} "
                                    "in time") from exc
    return applied


def _killers(settings: KafkaSettings, flow: FlowSpec) -> dict[tuple[str, int, int], str]:
    """The records of ``<flow>.encoded`` that killed the live index stage (its crash-loop breaker
    dead-lettered them), by (topic, partition, offset), with the reason."""
    return {(letter.source_topic, letter.source_partition, letter.source_offset): letter.message
            for letter in read_dead_letters(settings, flow.topics)
            if letter.source_topic == flow.input_topic(INDEX.name) and letter.error_class == CrashLoopError.__name__}


class _Records:
    """Applies batches as the live index stage does, through its failure path and policy: a batch
    that fails is applied record by record; a record that still fails, is too large, or killed the
    stage is skipped and reported (the live stage sent it to the dead-letter topic already)."""

    def __init__(self, ingest: ShardIngest, flow: FlowSpec, result: ReplayResult,
                 killers: dict[tuple[str, int, int], str]) -> None:
        self._result = result
        self._max_payload_bytes = flow.max_payload_bytes
        self._verdict = InFlightVerdict(poisoned=killers, isolate=False)
        self._failures = Failures(ingest, FAILURE_POLICY, emit=self._no_outputs, keep=self._skip,
                                  flow=flow.topics.prefix, stage=INDEX.name)

    def apply(self, records: list[Inbound]) -> None:
        self._failures.take(records, max_payload_bytes=self._max_payload_bytes, verdict=self._verdict)

    @staticmethod
    def _no_outputs(outputs: Sequence[Output]) -> None:
        """The shard's outputs are its state: its handler produces no record, and replay has no producer."""

    def _skip(self, record: Inbound, error: Exception) -> None:
        self._result.skipped += 1
        logger.warning("replay skipped a bad record", extra={
            "partition": record.partition, "offset": record.offset, "error": f"{type(error).__name__}: {error}"})
