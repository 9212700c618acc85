"""Rebuild a flow's shards by replaying ``<flow>.encoded``: no re-encoding, same result.

The encoded topic is the index's changelog (compacted, keyed by document id, embeddings
included), so applying it again through the shard's own ``ShardIngest`` gives the same
ids, vectors and search results as the index that consumed it live: upserts by id and
tombstones make replaying every version harmless. Replay runs with the index stage stopped
(the stage holds each shard's RocksDB lock), or into another ``--state-dir``. A running index
stage needs no command: a shard without local state restores itself the same way.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from tqdm import tqdm

from streams.exceptions import ReadTimeoutError, StreamsearchError
from streams.flow.spec import FlowSpec
from streams.kafka.settings import KafkaSettings
from streams.kafka.reader import TopicReader
from streams.stages.shard.ingest import ShardIngest
from streams.runtime.loop import Inbound
from streams.stages.shard.states import ShardStates

__all__ = ["ReplayResult", "replay_index"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ReplayResult:
    """What a replay applied, per shard, and how long it took."""

    records: int = 0
    seconds: float = 0.0
    documents: dict[int, int] = field(default_factory=dict)
    vectors: dict[int, int] = field(default_factory=dict)


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
    states = ShardStates(root=flow.state_dir, flow=topics.prefix, config=flow.stage("index").config)
    ingest = ShardIngest(states=states, topics=topics, filter_by=flow.stage("index").filter_by)
    partitions = list(range(topics.partitions))
    reader = TopicReader(settings, group_id=f"{topics.prefix}.replay.{uuid.uuid4().hex[:8]}",
                         **{"fetch.wait.max.ms": 100})
    result = ReplayResult()
    started = time.monotonic()
    try:
        starts = _open_shards(ingest, states, partitions, rebuild=from_timestamp_ms is None)
        if from_timestamp_ms is not None:
            starts = _offsets_at(reader.consumer, topics.encoded, partitions, from_timestamp_ms)
        reader.assign([TopicPartition(topics.encoded, p, starts[p]) for p in partitions])
        result.records = _apply_to_end(reader, ingest, topics.encoded, batch_size, progress, started + timeout_s)
        for partition in partitions:
            index = states.get(partition)
            assert index is not None
            result.documents[partition] = index.stats().documents
            result.vectors[partition] = index.vector_count
    finally:
        reader.close()
        ingest.close()
    result.seconds = time.monotonic() - started
    return result


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


def _apply_to_end(reader: TopicReader, ingest: ShardIngest, topic: str, batch_size: int, progress: bool,
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
                    _apply(ingest, records)
                    applied += len(records)
                    bar.update(len(records))
                bar.total = applied + reader.remaining()
                bar.refresh()
        except ReadTimeoutError as exc:
            raise StreamsearchError(f"replay did not reach the end of partitions {sorted(p for _, p in exc.unfinished)} "
                                    "in time") from exc
    return applied


def _apply(ingest: ShardIngest, records: list[Inbound]) -> None:
    """As the stage does: a batch that fails is applied record by record, and a record that
    still fails is skipped and logged (the live stage sent it to the dead-letter topic)."""
    try:
        ingest.process(records)
        return
    except Exception:  # isolate the bad record below
        pass
    for record in records:
        try:
            ingest.process([record])
        except Exception as exc:
            logger.warning("replay skipped a bad record", extra={
                "partition": record.partition, "offset": record.offset, "error": f"{type(exc).__name__}: {exc}"})
            ingest.on_failure(record, exc)
