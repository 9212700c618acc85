"""What a stage is, declared before it runs: its paths, their handlers, and the records they see and make.

The Topology idea of Kafka Streams: a ``StageSpec`` names the topics, consumer groups and handlers of
a stage, and the loop (``streams/runtime/loop.py``) runs any of them the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Message

from streams.kafka.consumer import headers_of
from streams.wire.headers import Header
from streams.runtime.reply_topics import ReplyTopics

__all__ = ["AwaitsWrites", "FailurePolicy", "Inbound", "Output", "PartitionAware", "PathHandler", "PathSpec", "Restoring",
           "StageSpec"]


@dataclass(slots=True)
class Inbound:
    """A consumed record, detached from librdkafka. Treat it as immutable: it is not frozen only because one is
    made for every record consumed, and a frozen dataclass's ``__init__`` took 1.05 µs where this one takes 0.22
    (8 fields, Python 3.11)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int = 0
    log_append_time: bool = False
    """Whether ``timestamp_ms`` is the broker's (LogAppendTime), not the producer's (CreateTime)."""

    @classmethod
    def of(cls, msg: Message) -> Inbound:
        kind, timestamp = msg.timestamp()
        return cls(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), headers_of(msg),
                   timestamp, kind == TIMESTAMP_LOG_APPEND_TIME)


@dataclass(frozen=True, slots=True)
class Output:
    """A record to produce."""

    topic: str
    value: bytes | None
    key: bytes | str | None = None
    partition: int | None = None
    headers: tuple[Header, ...] = ()
    reply: bool = False
    """A reply to a client: sent only to an existing reply topic of the flow, best effort (a client
    that has gone loses nothing; its reply is counted, not retried, and no input is held back)."""
    deadline_ms: int | None = None
    """A reply's: its query's deadline (ms since the epoch, on the flow's clock where a stage set it, else as its
    header said), which bounds a lookup of its reply topic (``ReplyTopics.usable``); None: no bound beyond the
    lookup's own."""


class PathHandler(Protocol):
    """What a stage does with one input path.

    ``process`` may raise for a batch: the loop then retries each record alone, and sends
    the one that still fails to the dead-letter topic with ``on_failure``'s extra outputs.
    Any object with these three methods is one; a handler that does more declares it by
    subclassing :class:`PartitionAware` or :class:`Restoring`.
    """

    def process(self, records: Sequence[Inbound]) -> list[Output]: ...

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]: ...

    def tick(self) -> list[Output]: ...


class PartitionAware(abc.ABC):
    """A handler that owns per-partition state (the shard), declared by subclassing: the loop reads
    the declaration (:attr:`PathSpec.partition_aware`) and never probes a handler for methods.

    The loop then runs its batches inline, not in a worker thread (its rebalance callbacks open and
    close that state; ``streams/runtime/keepalive.py``), calls these hooks on the index path's
    rebalances, reports its partitions in status records and closes it when the stage stops.
    """

    @abc.abstractmethod
    def assigned(self, partitions: Sequence[int]) -> dict[int, int]:
        """Open state for new partitions; return the offset to resume each from (-2 = beginning)."""

    @abc.abstractmethod
    def revoked(self, partitions: Sequence[int]) -> None:
        """Close the state of partitions taken away (revoked or lost)."""

    @abc.abstractmethod
    def shard_status(self) -> list[dict[str, object]]:
        """Per open partition, what ``streamsearch status`` shows of it."""

    @abc.abstractmethod
    def close(self) -> None:
        """The stage stops: close every partition's state."""


class Restoring(PartitionAware):
    """A stateful handler that restores before it serves, from what the consumer sees
    (``streams/runtime/restore.py``), declared by subclassing."""

    @abc.abstractmethod
    def watermarks(self, partition: int, low: int, high: int) -> int | None:
        """The watermarks of the last fetch response; returns an offset to seek to, if any."""

    @abc.abstractmethod
    def end_reached(self, partition: int) -> None:
        """The consumer reached the end of ``partition`` (the records before it are applied)."""

    @abc.abstractmethod
    def out_of_range(self, partition: int, low: int, high: int) -> int:
        """The broker said the position is out of range; given the log start and end offsets it
        reports now (< 0: unknown), returns the offset to go on from."""


class AwaitsWrites(abc.ABC):
    """A query-path handler that holds requests until the index path has applied a write they name
    (read-your-writes: the shard's searches with ``min_offsets``), declared by subclassing.

    The loop then applies the writes first (``streams/runtime/loop.py``): a batch of requests of which one
    would be held is answered after what the index consumer has already fetched is applied, so that the
    held request's search runs beside the others (two shards of one process: side by side, not the held one
    after the other's search); and while one is held, the idle loop waits on the index consumer, not the
    query consumer, so the awaited write is applied as soon as it is fetched.
    """

    @property
    @abc.abstractmethod
    def awaiting_writes(self) -> bool:
        """Whether a request is held for a write not yet applied."""

    @abc.abstractmethod
    def answerable(self) -> bool:
        """Whether ``tick`` would answer (or drop) a held request now: its write applied, its partition gone or
        restoring, or its deadline near. Between the slices of an index batch, the loop runs ``tick`` only then."""

    @abc.abstractmethod
    def would_await(self, records: Sequence[Inbound]) -> bool:
        """Whether one of these requests names a write not yet applied (it would be held). Never raises: a
        record it cannot read is the handler's to refuse when it processes it."""

    @abc.abstractmethod
    def parked_offsets(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition), the offset of the earliest request held: the path's commits stop there
        (``Checkpoint.holds``), so that a new owner of the partition reads it again and answers it, where the
        old owner, the partition gone, drops it."""


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """What a record that fails alone is, as the stage decides (the loop knows no processor's errors;
    Kafka Streams' exception handlers are the same idea): a request the flow refuses, answered with
    the handler's error reply and counted since nothing is lost, or a loss, dead-lettered.
    Applied by ``streams/runtime/failures.py``, in the stage loop and in replay alike."""

    rejected: tuple[type[Exception], ...] = ()
    """The errors that refuse a request; any other failure is dead-lettered."""

    def rejects(self, error: Exception) -> bool:
        return isinstance(error, self.rejected)


@dataclass(frozen=True, slots=True)
class PathSpec:
    """One input path: its topic, consumer group and handler.

    :param follow_index_path: assign this path's partitions to mirror the index path's
        assignment (co-partitioning: shard p answers search partition p), no subscription.
    :param fetch_wait_ms: the consumer's ``fetch.wait.max.ms``: longer on index paths (fewer idle fetches
        for the broker to serve); None, a query path's default, asks the broker
        (``streams.kafka.consumer.latency_fetch_wait_ms``: short only where the wait is each hop's latency).
    :param consumer_config: librdkafka settings of this path's consumer (the user's win).
    :param also_reads: more topics the same consumer subscribes to (one group, one handler that tells
        records apart by topic), so a small stage serves two topics without a second consumer.
    :param gather_ms: after a poll returned records, how long to wait for records of the path's other
        assigned partitions before processing the batch (0: not at all). A query fanned out to every shard
        is one record per partition; they often come in two fetches, and in two batches the shards of one
        process searched one after the other instead of side by side.
    :param slice_records: with a query path served by the same thread (one that ``follow_index_path``),
        process a batch in slices of this many records and serve the queries that arrived between them:
        a search waits for one slice, not for a whole batch (0: whole batches). A batch still commits once.
    :param commit_interval_s: the least time between two of this path's asynchronous commits (0: after every
        batch): for a handler whose state stores the offsets it applied, the group's are for lag and monitoring
        only, as Kafka Streams' ``commit.interval.ms``. A revoke and a close still commit what was processed.
    """

    topic: str
    group_id: str
    handler: PathHandler
    batch_size: int = 64
    follow_index_path: bool = False
    fetch_wait_ms: int | None = None
    consumer_config: dict[str, object] = field(default_factory=dict)
    also_reads: tuple[str, ...] = ()
    gather_ms: float = 0.0
    slice_records: int = 0
    commit_interval_s: float = 0.0

    @property
    def topics(self) -> list[str]:
        """Every topic this path's consumer subscribes to."""
        return [self.topic, *self.also_reads]

    @property
    def partition_aware(self) -> PartitionAware | None:
        """The handler, if it declares that it owns per-partition state."""
        return self.handler if isinstance(self.handler, PartitionAware) else None

    @property
    def restoring(self) -> Restoring | None:
        """The handler, if it declares that it restores before it serves."""
        return self.handler if isinstance(self.handler, Restoring) else None

    @property
    def awaits_writes(self) -> AwaitsWrites | None:
        """The handler, if it declares that it holds requests for writes of the index path."""
        return self.handler if isinstance(self.handler, AwaitsWrites) else None


@dataclass(frozen=True, slots=True)
class StageSpec:
    """A stage, fully described before it runs."""

    flow: str
    name: str
    dead_letter_topic: str
    index_path: PathSpec | None = None
    query_path: PathSpec | None = None
    max_payload_bytes: int = 8 * 1024 * 1024
    consumer_overrides: dict[str, object] = field(default_factory=dict)
    metrics_port: int | None = None
    status_topic: str | None = None
    exactly_once: bool = False
    inflight_dir: Path | None = None
    """Where the crash-loop breaker notes in-flight offsets (``streams/runtime/inflight.py``); None: off."""
    reply_topics: ReplyTopics | None = None
    """Where replies may go (``Output.reply``); None: anywhere (stages under test)."""
    failure_policy: FailurePolicy = FailurePolicy()
    """Which failures refuse a request rather than lose a record; by default every one is dead-lettered."""
