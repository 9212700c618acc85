"""One input path of a running stage: how it is opened, and what runs its records."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence

from confluent_kafka import Consumer, Message

from streams.exceptions import ProducerFailedError
from streams.kafka.consumer import gather, latency_fetch_wait_ms, make_consumer
from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from streams.runtime.checkpoint import Checkpoint, TransactionalCheckpoint
from streams.runtime.failures import DeadLetterTopic, Failures
from streams.runtime.inflight import InFlightLog
from streams.runtime.keepalive import KeepAlive
from streams.runtime.metrics import BATCH_SECONDS
from streams.runtime.outputs import Outputs
from streams.runtime.reporting import MEMBER
from streams.runtime.restore import RestoreHooks
from streams.runtime.spec import Inbound, Output, PathSpec, StageSpec

__all__ = ["REPLICA_ENV", "InputPath", "open_path", "transactional_id"]

REPLICA_ENV = "STREAMSEARCH_REPLICA"
"""The name the supervisor gives a stage process: the same for every restart of one replica, unique
among the replicas of every supervisor running (its transactional id is built from it)."""


class InputPath:
    """A path's consumer and producer, the checkpoint that commits them and the crash-loop breaker's
    notes; the loop adds what runs its records (``failures``, and what its handler declares it needs)."""

    failures: Failures
    """Set by :func:`open_path`: what fails is produced with the path's producer."""
    outputs: Outputs
    """Set by :func:`open_path`: checks what :meth:`emit` produces against what its topics take."""

    def __init__(self, spec: PathSpec, consumer: Consumer, producer: StageProducer,
                 checkpoint: Checkpoint | None = None, inflight: InFlightLog | None = None) -> None:
        self.spec = spec
        self.consumer = consumer
        self.producer = producer
        self.checkpoint = checkpoint or Checkpoint(consumer, producer)
        if (held := spec.awaits_writes) is not None:
            self.checkpoint.holds = held.parked_offsets  # a held request's offset is committed once answered
        self.inflight = inflight
        self.processed = 0
        self.keepalive: KeepAlive | None = None
        """Runs a stateless handler's batch while the path's thread keeps its consumer in the group."""
        self.restore: RestoreHooks | None = None
        """Tells a restoring handler what the consumer sees."""
        self.assigned: set[int] | None = None
        """The partitions of ``spec.topic`` this path's consumer holds, kept by the rebalance callbacks that assign
        them (``Rebalance``: the index path, and a path that follows it); None where librdkafka alone knows. Read
        instead of ``consumer.assignment()``, a round trip to librdkafka's main thread, which a busy consumer
        answers late: 0.3 ms of each query batch's gather, and 3 % of an index stage's main thread applying a
        bulk insert (py-spy, ``benchmarks/query_hops.py``: the restore watch asked every 0.1 s)."""

    def keep_assignment(self) -> None:
        """From now on the loop's rebalance callbacks tell this path what they assign (:meth:`took`,
        :meth:`gave_up`); a path of several topics is left to librdkafka."""
        if not self.spec.also_reads:
            self.assigned = set()

    def took(self, partitions: Iterable[int]) -> None:
        self.checkpoint.expedite()  # a partition's first commit at once: a rewind then never goes back to its start
        if self.assigned is not None:
            self.assigned |= set(partitions)

    def gave_up(self, partitions: Iterable[int]) -> None:
        if self.assigned is not None:
            self.assigned -= set(partitions)

    def assignment(self) -> set[tuple[str, int]]:
        """(topic, partition) of what this path's consumer is assigned: ``assigned`` where the loop keeps it,
        else librdkafka's."""
        if self.assigned is not None:
            return {(self.spec.topic, partition) for partition in self.assigned}
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def gather(self, messages: Sequence[Message]) -> list[Message]:
        """What arrives for this path's other assigned partitions within ``PathSpec.gather_ms``, stopping as soon
        as every one has a record (or the batch is full)."""
        return gather(self.consumer, messages, partitions={partition for _, partition in self.assignment()},
                      max_records=self.spec.batch_size, wait_s=self.spec.gather_ms / 1000)

    def emit(self, outputs: Sequence[Output]) -> None:
        """Produce a handler's outputs with the path's producer, in its transaction with ``exactly_once``.

        :raises PayloadTooLargeError: if an output is larger than its topic takes.
        """
        if not outputs:
            return
        if self.transactional:
            self.checkpoint.begin()  # type: ignore[attr-defined]
        self.outputs.produce(self.producer, outputs)

    def tick(self) -> None:
        """The handler's timers (expired requests, parked searches), then the path's commit."""
        try:
            self.emit(self.spec.handler.tick())
        except ProducerFailedError as exc:
            self.checkpoint.recover(exc)
        self.checkpoint.commit()

    def close(self, *, commit: bool) -> None:
        """Commit what was processed (``commit``), then close the consumer (it leaves the group), the producer
        and the keep-alive worker, whatever the commit raised."""
        try:
            if commit:
                self.checkpoint.commit(asynchronous=False)
        finally:
            self.consumer.close()
            self.producer.close()
            if self.keepalive is not None:
                self.keepalive.close()

    @property
    def transactional(self) -> bool:
        return isinstance(self.checkpoint, TransactionalCheckpoint)

    def lettered(self, killers: Sequence[Inbound]) -> None:
        """Records that killed the stage were dead-lettered: delivered before the rest of the batch runs,
        and noted, so that a later crash does not send them twice."""
        self.producer.flush()
        assert self.inflight is not None
        self.inflight.lettered(killers)


def open_path(stage: StageSpec, spec: PathSpec, settings: KafkaSettings, *, outputs: Outputs, letters: DeadLetterTopic,
              transactional: bool = False, keepalive_s: float, watch_every_s: float) -> InputPath:
    """A path with its own consumer and producer: a path's commit flushes its own outputs only, never
    the other path's or a status report (one waiting for a failover of its partition's leader would
    hold the commit). ``transactional``: its outputs and offsets commit in one transaction."""
    wait = spec.fetch_wait_ms if spec.fetch_wait_ms is not None else latency_fetch_wait_ms(settings)
    consumer = make_consumer(settings, group_id=spec.group_id, **{
        "fetch.wait.max.ms": wait, **spec.consumer_config, **stage.consumer_overrides})
    transactions = {"transactional.id": transactional_id(stage), "transaction.timeout.ms": 15000} \
        if transactional else {}
    producer = StageProducer(settings, max_payload_bytes=stage.max_payload_bytes, **transactions)
    producer.connect()  # its producer id acquired before the path's first output, not 0.5 s after it
    checkpoint = TransactionalCheckpoint(consumer, producer, flow=stage.flow, stage=stage.name) if transactional \
        else Checkpoint(consumer, producer, flow=stage.flow, stage=stage.name, interval_s=spec.commit_interval_s)
    inflight = InFlightLog(stage.inflight_dir, spec.group_id) if stage.inflight_dir is not None else None
    path = InputPath(spec, consumer, producer, checkpoint, inflight=inflight)
    path.outputs = outputs
    if spec.partition_aware is None and not spec.follow_index_path:
        # A stateful handler runs inline, and so does one that reads its state (a shard's search): rebalances
        # open and close that state, and a keep-alive poll of the index consumer during a long search batch
        # could close a shard under the search reading it.
        path.keepalive = KeepAlive(stage.name, keepalive_s)
    if spec.restoring is not None:
        path.restore = RestoreHooks(spec.restoring, consumer, stage=stage.name, watch_every_s=watch_every_s,
                                    assignment=path.assignment)
    path.failures = Failures(spec.handler, stage.failure_policy, emit=path.emit,
                             keep=functools.partial(_keep, letters, producer, checkpoint), flow=stage.flow, stage=stage.name,
                             timed=BATCH_SECONDS.labels(stage.flow, stage.name, spec.topic).time)
    return path


def transactional_id(stage: StageSpec) -> str:
    """Unique per live producer, stable across the restarts of one supervised replica.

    Unique: two producers with one id fence each other (two runs of one flow, on two hosts or
    added for capacity, would kill each other's stages in turn). Stable: a replica the supervisor
    restarts after a kill -9 aborts its predecessor's open transaction at once (``init_transactions``)
    instead of downstream read_committed readers waiting ``transaction.timeout.ms`` for it. Zombies
    are not fenced by the id but by the group generation the offsets carry into the transaction
    (KIP-447, Kafka >= 2.5: ``send_offsets_to_transaction`` with the consumer's group metadata), so
    the id need not follow the input partitions. Unsupervised: this process (host and pid)."""
    return f"{stage.flow}.{stage.name}.{os.environ.get(REPLICA_ENV) or MEMBER}"


def _keep(letters: DeadLetterTopic, producer: StageProducer, checkpoint: Checkpoint, record: Inbound,
          error: Exception) -> None:
    """Dead-letter ``record``, and have the batch's commit wait for that letter's delivery."""
    letters.keep(producer, record, error)
    checkpoint.expedite()
