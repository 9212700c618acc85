"""The stage loop: poll -> decode -> process -> produce -> commit, for every stage.

A stage has up to two input paths, each with its own consumer and producer: the index path
(ingest, segmented, encoded) and the query path (query, search, partials). When the paths share
no state (the encode stage), the query path runs in a thread of its own, so a query never waits
behind the index path: its backlog, a long batch, or a commit that waits for a broker failover
(a transaction of ``exactly_once``, a flush). When they do (the shard: its search reads what its
ingest writes, and one rebalance moves both), one thread serves both, the query consumer polled
first and the one the loop blocks on when idle. Stages differ only in their ``StageSpec``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.wire.dead_letters import dead_letter_headers
from streams.runtime.checkpoint import Checkpoint, TransactionalCheckpoint
from streams.kafka.admin import max_message_bytes
from processors.exceptions import InvalidParameterError
from streams.exceptions import DeliveryError, GroupMembershipLost, PayloadTooLargeError
from streams.runtime.inflight import CrashLoopError, InFlightLog
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import UNKNOWN_TOPIC_ERRORS, Header, StageProducer, record_size
from streams.kafka.consumer import consume_batch, headers_of, make_consumer
from streams.wire.topics import RECORD_OVERHEAD_BYTES
from streams.runtime.metrics import (BATCH_SECONDS, CONSUMER_LAG, DEAD_LETTERS, RECORDS_IN, RECORDS_OUT, REJECTED_REQUESTS,
                             UNDELIVERABLE_REPLIES, serve_metrics)
from streams.runtime.reply_topics import ReplyTopics
from streams.wire.serde import STAGE_STATUS

__all__ = ["Inbound", "Output", "PathHandler", "PathSpec", "StageLoop", "StageSpec"]

logger = logging.getLogger(__name__)

MEMBER = f"{socket.gethostname()}:{os.getpid()}"
"""This process, in status reports."""

REPLICA_ENV = "STREAMSEARCH_REPLICA"
"""The name the supervisor gives a stage process: the same for every restart of one replica, unique
among the replicas of every supervisor running (its transactional id is built from it)."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A consumed record, detached from librdkafka."""

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


class PathHandler(Protocol):
    """What a stage does with one input path.

    ``process`` may raise for a batch: the loop then retries each record alone, and sends
    the one that still fails to the dead-letter topic with ``on_failure``'s extra outputs.
    """

    def process(self, records: Sequence[Inbound]) -> list[Output]: ...

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]: ...

    def tick(self) -> list[Output]: ...


class PartitionAware(Protocol):
    """A handler that owns per-partition state (the shard)."""

    def assigned(self, partitions: Sequence[int]) -> dict[int, int]:
        """Open state for new partitions; return the offset to resume each from (-2 = beginning)."""
        ...

    def revoked(self, partitions: Sequence[int]) -> None: ...


class Restoring(PartitionAware, Protocol):
    """A stateful handler that restores before it serves, from what the consumer sees."""

    def watermarks(self, partition: int, low: int, high: int) -> int | None:
        """The watermarks of the last fetch response; returns an offset to seek to, if any."""
        ...

    def end_reached(self, partition: int) -> None: ...

    def out_of_range(self, partition: int, low: int, high: int) -> int:
        """The broker said the position is out of range; given the log start and end offsets it
        reports now (< 0: unknown), returns the offset to go on from."""
        ...


@dataclass(frozen=True, slots=True)
class PathSpec:
    """One input path: its topic, consumer group and handler.

    :param follow_index_path: assign this path's partitions to mirror the index path's
        assignment (co-partitioning: shard p answers search partition p), no subscription.
    :param fetch_wait_ms: the consumer's ``fetch.wait.max.ms``: short on query paths
        (latency), longer on index paths (fewer idle fetches for the broker to serve).
    :param consumer_config: librdkafka settings of this path's consumer (the user's win).
    """

    topic: str
    group_id: str
    handler: PathHandler
    batch_size: int = 64
    follow_index_path: bool = False
    fetch_wait_ms: int = 5
    consumer_config: dict[str, object] = field(default_factory=dict)


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


class _Path:
    def __init__(self, spec: PathSpec, consumer: Consumer, producer: StageProducer,
                 checkpoint: Checkpoint | None = None, inflight: InFlightLog | None = None) -> None:
        self.spec = spec
        self.consumer = consumer
        self.producer = producer
        self.checkpoint = checkpoint or Checkpoint(consumer, producer)
        self.inflight = inflight
        self.had_partitions = False
        self.empty_since: float | None = None
        self.processed = 0
        self.worker: concurrent.futures.ThreadPoolExecutor | None = None
        """Runs a stateless handler's batch while the path's thread keeps its consumer in the group."""

    @property
    def transactional(self) -> bool:
        return isinstance(self.checkpoint, TransactionalCheckpoint)


class StageLoop:
    """Runs one stage until stopped; safe to stop from a signal handler or another thread."""

    IDLE_POLL_S = 0.02
    WATCH_EVERY_S = 0.1
    KEEPALIVE_S = 2.0
    REPORT_EVERY_S = 5.0
    """Lag, status and membership checks."""
    ORPHANED_AFTER_S = 60.0

    def __init__(self, spec: StageSpec, settings: KafkaSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.producer = StageProducer(settings, max_payload_bytes=spec.max_payload_bytes)
        """Status reports only: a record of a report waiting for a broker failover holds no path's flush."""
        self._stop = threading.Event()
        self._index: _Path | None = None
        self._query: _Path | None = None
        self._query_thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self.dead_letters = 0
        self._index_has_backlog = False
        self._next_lag_report = 0.0
        self._status_processed = 0
        self._status_at = time.monotonic()
        self._next_watch = 0.0
        self._failed = False
        self._topic_limits: dict[str, int] = {}
        self._callback_error: BaseException | None = None
        self._fault_report: IO[str] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    @property
    def processed(self) -> int:
        return sum(path.processed for path in (self._index, self._query) if path is not None)

    def run(self) -> None:
        """Subscribe and loop until ``stop``; commits and leaves the group on the way out."""
        self._start()
        if self._index is not None and self._query is not None and not self._query.spec.follow_index_path:
            self._query_thread = threading.Thread(target=self._serve_queries, name="query-path", daemon=True)
            self._query_thread.start()
        logger.info("stage running", extra={"stage": self.spec.name, "flow": self.spec.flow})
        try:
            while not self._stop.is_set():
                self.step()
            if self._thread_error is not None:
                raise self._thread_error
        except BaseException:
            self._failed = True  # what is pending may be undelivered: leave it uncommitted
            self._join_query_thread()
            for path in (self._index, self._query):
                if path is not None and path.inflight is not None:
                    path.inflight.abandon()  # an exception of ours, not a record that killed the process
            raise
        finally:
            self._join_query_thread()
            self._close()

    def _serve_queries(self) -> None:
        """The query path's own loop (paths that share no state): whatever the index path waits for
        (a transaction's commit during a broker failover, a flush, a long batch), queries go on. An
        exception stops the stage: the main thread raises it."""
        assert self._query is not None
        next_report = 0.0
        try:
            while not self._stop.is_set():
                self._poll(self._query, self.IDLE_POLL_S)
                self._emit(self._query, self._query.spec.handler.tick())
                self._query.checkpoint.commit()
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + self.REPORT_EVERY_S
                    self._report_lag()
                    self._watch_membership()
        except BaseException as exc:  # noqa: BLE001 - raised by run() in the main thread
            logger.exception("query path failed", extra={"stage": self.spec.name})
            self._thread_error = exc
            self._stop.set()

    def _paths_of_this_thread(self) -> list[_Path]:
        """The paths whose consumer the calling thread polls. A consumer is used by one thread only:
        confluent-kafka's ``assignment()`` waits for ever while another thread polls the consumer."""
        if threading.current_thread() is self._query_thread:
            return [self._query] if self._query is not None else []
        owned = (self._index,) if self._query_thread is not None else (self._index, self._query)
        return [path for path in owned if path is not None]

    def _join_query_thread(self) -> None:
        if self._query_thread is not None:
            self._stop.set()
            self._query_thread.join()

    def _consumer(self, path: PathSpec) -> Consumer:
        overrides = {"fetch.wait.max.ms": path.fetch_wait_ms, **path.consumer_config, **self.spec.consumer_overrides}
        return make_consumer(self.settings, group_id=path.group_id, **overrides)

    def _inflight(self, path: PathSpec) -> InFlightLog | None:
        return InFlightLog(self.spec.inflight_dir, path.group_id) if self.spec.inflight_dir is not None else None

    def _start(self) -> None:
        serve_metrics(self.spec.metrics_port)
        if self.spec.inflight_dir is not None:
            self._fault_report = InFlightLog(self.spec.inflight_dir, "").enable_fault_reports()
        if self.spec.query_path is not None:
            qspec = self.spec.query_path
            self._query = _Path(qspec, self._consumer(qspec), self._own_producer(), inflight=self._inflight(qspec))
            if not qspec.follow_index_path:
                self._query.consumer.subscribe([qspec.topic], on_revoke=self._guarded(self._on_revoke_query))
        if self.spec.index_path is not None:
            ispec = self.spec.index_path
            consumer = self._consumer(ispec)
            if self.spec.exactly_once:
                producer = StageProducer(self.settings, max_payload_bytes=self.spec.max_payload_bytes,
                                         **{"transactional.id": self._transactional_id(),
                                            "transaction.timeout.ms": 15000})
                self._index = _Path(ispec, consumer, producer, TransactionalCheckpoint(
                    consumer, producer, flow=self.spec.flow, stage=self.spec.name), inflight=self._inflight(ispec))
            else:
                self._index = _Path(ispec, consumer, self._own_producer(), inflight=self._inflight(ispec))
            self._index.consumer.subscribe(
                [ispec.topic], on_assign=self._guarded(self._on_assign), on_revoke=self._guarded(self._on_revoke),
                on_lost=self._guarded(self._on_lost),
            )

    def _own_producer(self) -> StageProducer:
        """A path's producer: a path's commit flushes its own outputs only, never the other path's or a
        status report (one waiting for a failover of its partition's leader would hold the commit)."""
        return StageProducer(self.settings, max_payload_bytes=self.spec.max_payload_bytes)

    def _transactional_id(self) -> str:
        """Unique per live producer, stable across the restarts of one supervised replica.

        Unique: two producers with one id fence each other (two runs of one flow, on two hosts or
        added for capacity, would kill each other's stages in turn). Stable: a replica the supervisor
        restarts after a kill -9 aborts its predecessor's open transaction at once (``init_transactions``)
        instead of downstream read_committed readers waiting ``transaction.timeout.ms`` for it. Zombies
        are not fenced by the id but by the group generation the offsets carry into the transaction
        (KIP-447, Kafka >= 2.5: ``send_offsets_to_transaction`` with the consumer's group metadata), so
        the id need not follow the input partitions. Unsupervised: this process (host and pid)."""
        return f"{self.spec.flow}.{self.spec.name}.{os.environ.get(REPLICA_ENV) or MEMBER}"

    def step(self) -> None:
        """One round: queries first (blocking briefly when idle), then ingest, then timers. Queries
        only when this thread serves them (see :meth:`_serve_queries`)."""
        busy = False
        query = self._query if self._query_thread is None else None
        if query is not None:
            idle_wait = 0.0 if self._index is not None and self._index_has_backlog else self.IDLE_POLL_S
            busy = self._poll(query, idle_wait)
        if self._index is not None:
            self._index_has_backlog = self._poll(self._index, 0.0 if (busy or query) else self.IDLE_POLL_S)
            self._watch_watermarks(self._index)
        for path in (query, self._index):
            if path is not None:
                self._emit(path, path.spec.handler.tick())
                path.checkpoint.commit()
        if time.monotonic() >= self._next_lag_report:
            self._next_lag_report = time.monotonic() + self.REPORT_EVERY_S
            self._report_lag()
            self._publish_status()
            self._watch_membership()

    def _watch_membership(self) -> None:
        """Exit (the supervisor restarts the stage) when a consumer that had partitions has had none
        for :attr:`ORPHANED_AFTER_S`. Seen on Apache Kafka: a consumer whose group session timed
        out while its coordinator restarted never rejoined, and the stage sat idle for good. A
        replica that never had partitions (more replicas than partitions) is left alone.

        :raises GroupMembershipLost: naming the topic and how long it has been without partitions.
        """
        now = time.monotonic()
        for path in self._paths_of_this_thread():
            if path.spec.follow_index_path:
                continue
            if path.consumer.assignment():
                path.had_partitions, path.empty_since = True, None
            elif path.had_partitions:
                path.empty_since = path.empty_since or now
                if now - path.empty_since > self.ORPHANED_AFTER_S:
                    raise GroupMembershipLost(
                        f"the consumer of {path.spec.topic} (group {path.spec.group_id}) has had no partitions for "
                        f"{now - path.empty_since:.0f}s after it had some: restarting the stage to rejoin")

    def _publish_status(self) -> None:
        """What this process does, for ``streamsearch status``: members, throughput, shards."""
        if self.spec.status_topic is None:
            return
        now = time.monotonic()
        rate = (self.processed - self._status_processed) / max(now - self._status_at, 1e-3)
        self._status_processed, self._status_at = self.processed, now
        handler = self.spec.index_path.handler if self.spec.index_path else None
        report = {
            "stage": self.spec.name, "member": MEMBER, "ts_ms": int(time.time() * 1000),
            "processed": self.processed, "rate": rate, "dead_letters": self.dead_letters,
            "partitions": sorted(tp.partition for tp in self._index.consumer.assignment()) if self._index else [],
            "shards": handler.shard_status() if hasattr(handler, "shard_status") else [],
        }
        self.producer.produce(self.spec.status_topic, value=STAGE_STATUS.encode(report),
                              key=f"{self.spec.name}/{MEMBER}", headers=(STAGE_STATUS.header(),),
                              best_effort=True)  # the next report replaces a lost one

    def _report_lag(self) -> None:
        """Lag from the high watermark seen in fetch responses: the embedded broker's
        ListOffsets answer is wrong, the fetch response's is right (and Kafka's are both)."""
        for path in self._paths_of_this_thread():
            try:
                for tp in path.consumer.position(path.consumer.assignment()):
                    _, high = path.consumer.get_watermark_offsets(tp, cached=True)
                    if tp.offset >= 0 and high >= 0:
                        CONSUMER_LAG.labels(self.spec.flow, self.spec.name, tp.topic, str(tp.partition)).set(
                            max(0, high - tp.offset))
            except KafkaException as exc:
                logger.debug("lag not available", extra={"error": str(exc)})


    def _close(self) -> None:
        # The index consumer first: closing it revokes its partitions, and the revoke callback
        # unassigns the query partitions that mirror them on the query consumer, still open.
        for path in (self._index, self._query):
            if path is None:
                continue
            try:
                if not self._failed:
                    path.checkpoint.commit(asynchronous=False)
            finally:
                path.consumer.close()
                path.producer.close()
                if path.worker is not None:
                    path.worker.shutdown(wait=True)
        self.producer.close()
        if self._callback_error is not None:
            logger.error("rebalance callback failed during close", extra={"error": repr(self._callback_error)})
        if self.spec.inflight_dir is not None:
            InFlightLog(self.spec.inflight_dir, "").disable_fault_reports(self._fault_report)
        close = getattr(self.spec.index_path.handler if self.spec.index_path else None, "close", None)
        if close is not None:
            close()
        logger.info("stage stopped", extra={"stage": self.spec.name, "processed": self.processed})

    # -- one batch -------------------------------------------------------------------------

    def _poll(self, path: _Path, timeout: float) -> bool:
        messages = consume_batch(path.consumer, max_records=path.spec.batch_size, timeout=timeout)
        self._raise_callback_error()
        records, ends, out_of_range = [], [], []
        for msg in messages:
            err = msg.error()
            if err is None:
                records.append(Inbound.of(msg))
            elif err.code() == KafkaError._PARTITION_EOF:
                ends.append(msg.partition())
            elif err.code() == KafkaError._AUTO_OFFSET_RESET and hasattr(path.spec.handler, "out_of_range"):
                out_of_range.append((msg.topic(), msg.partition()))
            else:
                logger.warning("consume error", extra={"stage": self.spec.name, "error": str(err)})
        if records:
            self._take(path, records)
        for topic, partition in out_of_range:  # after the batch: the handler judges what it has applied
            self._out_of_range(path, topic, partition)
        end_reached = getattr(path.spec.handler, "end_reached", None)
        for partition in ends if end_reached is not None else ():
            end_reached(partition)  # after the batch: the records before the end are applied
        return bool(records)

    def _watch_watermarks(self, path: _Path) -> None:
        """Tell a restoring handler the watermarks its consumer saw, a few times a second."""
        watermarks = getattr(path.spec.handler, "watermarks", None)
        now = time.monotonic()
        if watermarks is None or now < self._next_watch:
            return
        self._next_watch = now + self.WATCH_EVERY_S
        for tp in path.consumer.assignment():
            try:
                low, high = path.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            seek_to = watermarks(tp.partition, low, high)
            if seek_to is not None:
                self._seek(path, tp.topic, tp.partition, seek_to)

    def _out_of_range(self, path: _Path, topic: str, partition: int) -> None:
        """The broker answered OFFSET_OUT_OF_RANGE; with ``auto.offset.reset: error`` librdkafka then
        stops fetching the partition, and a seek fails (``_STATE``, "Failed to seek"): the handler
        chooses where to go on from the log start and end the broker reports now, and the partition
        is assigned again at that offset (incrementally: the group's assignment is unchanged)."""
        where = TopicPartition(topic, partition)
        try:
            low, high = path.consumer.get_watermark_offsets(where, timeout=10, cached=False)
        except KafkaException as exc:
            logger.warning("watermarks not available", extra={"stage": self.spec.name, "error": str(exc)})
            low, high = -1, -1
        offset = path.spec.handler.out_of_range(partition, low, high)
        path.consumer.incremental_unassign([where])
        path.consumer.incremental_assign([TopicPartition(topic, partition, offset)])
        logger.info("assigned again after out of range", extra={"stage": self.spec.name, "topic": topic,
                                                                "partition": partition, "offset": offset})

    def _seek(self, path: _Path, topic: str, partition: int, offset: int) -> None:
        path.consumer.seek(TopicPartition(topic, partition, offset))
        logger.info("seeked", extra={"stage": self.spec.name, "topic": topic, "partition": partition, "offset": offset})

    def _take(self, path: _Path, records: list[Inbound]) -> None:
        """Process, dead-letter what fails, note the offsets and commit (in one transaction
        with ``exactly_once``)."""
        if path.transactional:
            path.checkpoint.begin()  # type: ignore[attr-defined]
        RECORDS_IN.labels(self.spec.flow, self.spec.name, path.spec.topic).inc(len(records))
        verdict = path.inflight.begin(records) if path.inflight is not None else None
        accepted, killers, oversized = [], [], []
        for record in records:
            size = len(record.value or b"")
            where = (record.topic, record.partition, record.offset)
            killer = verdict.poisoned.get(where) if verdict else None
            if killer is not None:
                if where not in verdict.lettered:  # type: ignore[union-attr]
                    self._dead_letter(path, record, CrashLoopError(killer))
                    killers.append(record)
            elif size > self.spec.max_payload_bytes:
                oversized.append((record, size))
            else:
                accepted.append(record)
        if killers and path.inflight is not None and not path.transactional:
            path.producer.flush()  # delivered before the rest runs: a later crash must not send them twice
            path.inflight.lettered(killers)
        self._process(path, accepted, isolate=verdict.isolate if verdict else False)
        # After the batch's outputs: a watermark marker must not overtake the records before it
        # (a shard would claim an ingest offset whose predecessors it has not applied).
        for record, size in oversized:
            self._dead_letter(path, record, PayloadTooLargeError(
                f"{size} bytes exceeds max_payload_bytes={self.spec.max_payload_bytes}"))
        for record in records:
            path.checkpoint.record(record.topic, record.partition, record.offset)
        path.processed += len(records)
        try:
            path.checkpoint.commit()
        except DeliveryError as exc:
            self._dead_letter_refused(path, accepted, exc)
            path.checkpoint.commit()
        if path.inflight is not None:
            path.inflight.end(records)

    def _dead_letter_refused(self, path: _Path, records: Sequence[Inbound], error: DeliveryError) -> None:
        """The broker refused some outputs of this batch for good (too large, not authorised):
        dead-letter the inputs they came from (outputs carry their input's key), then commit.

        :raises DeliveryError: when a failure is transient or cannot be traced to an input: the
            stage stops without committing, and the batch runs again after a restart.
        """
        if not error.failures or not all(f.permanent for f in error.failures):
            raise error
        refused = {f.key: f for f in error.failures}
        culprits = [r for r in records if r.key in refused]
        if not culprits:
            raise error
        for record in culprits:
            failure = refused[record.key]
            self._dead_letter(path, record, PayloadTooLargeError(
                f"the broker refused the output for {failure.topic}: {failure.error.str()} "
                f"({failure.size} bytes; the topic takes up to {self._topic_limit(failure.topic)})"))

    def _process(self, path: _Path, records: list[Inbound], *, isolate: bool = False) -> None:
        """Process a batch; if it raises, or ``isolate`` (it killed the process before), record by
        record, dead-lettering the one that fails."""
        if not records:
            return
        if isolate:
            logger.warning("processing record by record: this batch killed the stage before",
                           extra={"stage": self.spec.name, "records": len(records)})
            for record in records:
                if path.inflight is not None:
                    path.inflight.begin_record(record)
                try:
                    self._emit(path, path.spec.handler.process([record]))
                except Exception as exc:
                    self._fail(path, record, exc)
            return
        try:
            with BATCH_SECONDS.labels(self.spec.flow, self.spec.name, path.spec.topic).time():
                self._emit(path, self._call(path, records))
            return
        except Exception as exc:  # isolate the bad record below; nothing is lost
            if len(records) == 1:
                self._fail(path, records[0], exc)
                return
            logger.info("batch failed, retrying record by record", extra={"stage": self.spec.name, "error": str(exc)})
        for record in records:
            try:
                self._emit(path, path.spec.handler.process([record]))
            except Exception as exc:
                self._fail(path, record, exc)

    def _call(self, path: _Path, records: list[Inbound]) -> list[Output]:
        """``handler.process(records)``, keeping this member in its groups however long it runs.

        A batch can take longer than ``max.poll.interval.ms`` (a 0.5 MB document of short sentences
        on 2 cores): the member would be evicted, its commit refused and the batch run again,
        forever. So a stateless handler runs in a worker thread while this thread pauses the
        consumers it polls and polls them every :attr:`KEEPALIVE_S` (no records come from paused
        partitions; the poll serves the interval, heartbeats and rebalances); a query path in its own
        thread goes on meanwhile. A stateful handler (the shard) runs inline: rebalance callbacks open
        and close its state, and its batches are bounded anyway.
        """
        handler = path.spec.handler
        if hasattr(handler, "assigned"):
            return handler.process(records)
        if path.worker is None:
            path.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="process")
        future = path.worker.submit(handler.process, records)
        try:
            return future.result(timeout=self.KEEPALIVE_S)
        except concurrent.futures.TimeoutError:
            pass
        consumers = [p.consumer for p in self._paths_of_this_thread()]
        for consumer in consumers:
            consumer.pause(consumer.assignment())  # drops what was prefetched: fetched again on resume
        logger.info("long batch: polling paused consumers to stay in the group",
                    extra={"stage": self.spec.name, "records": len(records)})
        try:
            while True:
                try:
                    return future.result(timeout=self.KEEPALIVE_S)
                except concurrent.futures.TimeoutError:
                    for consumer in consumers:
                        self._keep_alive(consumer)
        finally:
            for consumer in consumers:
                consumer.resume(consumer.assignment())

    @staticmethod
    def _keep_alive(consumer: Consumer) -> None:
        """Poll a paused consumer; a record from a partition assigned meanwhile (not paused) is put back."""
        msg = consumer.poll(0)
        if msg is None or msg.error() is not None:
            return
        where = TopicPartition(msg.topic(), msg.partition(), msg.offset())
        consumer.pause([where])
        consumer.seek(where)

    def _fail(self, path: _Path, record: Inbound, error: Exception) -> None:
        """A record that failed alone: a request the flow refuses is answered (the handler's error
        reply) and counted, not dead-lettered, since nothing was lost; anything else is dead-lettered."""
        if not isinstance(error, InvalidParameterError):
            self._dead_letter(path, record, error)
            return
        REJECTED_REQUESTS.labels(self.spec.flow, self.spec.name, type(error).__name__).inc()
        logger.debug("request rejected", extra={"stage": self.spec.name, "error": f"{type(error).__name__}: {error}"})
        try:
            self._emit(path, path.spec.handler.on_failure(record, error))
        except Exception:
            logger.exception("on_failure raised", extra={"stage": self.spec.name})

    def _emit(self, path: _Path, outputs: Sequence[Output]) -> None:
        """Produce a handler's outputs: all checked before any is produced (a failed batch is retried
        record by record); replies only to usable reply topics (others are counted and dropped).

        :raises PayloadTooLargeError: if an output is larger than its topic takes.
        """
        if not outputs:
            return
        if path.transactional:
            path.checkpoint.begin()  # type: ignore[attr-defined]
        sendable = []
        for out in outputs:
            if out.reply and self.spec.reply_topics is not None and not self.spec.reply_topics.usable(out.topic):
                self._undeliverable_reply(out.topic, "no such reply topic of this flow")
                continue
            size = record_size(out.key, out.value, out.headers)
            # A client creates its reply topic with the flow's payload limit; asking each one's
            # max.message.bytes would remember every client that ever searched.
            limit = self._default_limit if out.reply else self._topic_limit(out.topic)
            if size > limit and out.reply:  # from a deadline tick too: never an exception there
                self._undeliverable_reply(out.topic, f"reply of {size} bytes, over {limit}")
                continue
            if size > limit:
                raise PayloadTooLargeError(
                    f"output record for {out.topic} is {size} bytes, over the topic's max.message.bytes={limit}")
            sendable.append(out)
        for out in sendable:
            RECORDS_OUT.labels(self.spec.flow, self.spec.name).inc()
            path.producer.produce(out.topic, value=out.value, key=out.key, partition=out.partition, headers=out.headers,
                                  on_delivery=self._reply_delivered if out.reply else None, best_effort=out.reply)

    @property
    def _default_limit(self) -> int:
        return self.spec.max_payload_bytes + RECORD_OVERHEAD_BYTES

    def _reply_delivered(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:  # e.g. the client deleted its topic meanwhile
            if self.spec.reply_topics is not None and error.code() in UNKNOWN_TOPIC_ERRORS:
                self.spec.reply_topics.gone(msg.topic())  # not on a timeout in a failover: the client is there
            self._undeliverable_reply(msg.topic(), error.str())

    def _undeliverable_reply(self, topic: str, reason: str) -> None:
        UNDELIVERABLE_REPLIES.labels(self.spec.flow, self.spec.name).inc()
        logger.info("reply not sent", extra={"stage": self.spec.name, "topic": topic[:300], "reason": reason})

    def _topic_limit(self, topic: str) -> int:
        """The largest record ``topic`` takes: its ``max.message.bytes`` (asked once per topic), else
        the flow's payload limit plus record overhead."""
        if topic not in self._topic_limits:
            try:
                limit = max_message_bytes(self.settings, topic)
            except Exception as exc:  # an unanswered describe must not stop the stage
                logger.debug("topic limit unknown", extra={"topic": topic, "error": str(exc)})
                limit = None
            self._topic_limits[topic] = limit or self._default_limit
        return self._topic_limits[topic]

    def _dead_letter(self, path: _Path, record: Inbound, error: Exception) -> None:
        """Keep the bad record, with why and where it came from, and let the handler react."""
        self.dead_letters += 1
        DEAD_LETTERS.labels(self.spec.flow, self.spec.name, type(error).__name__).inc()
        logger.warning(
            "dead letter",
            extra={
                "stage": self.spec.name,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": f"{type(error).__name__}: {error}",
            },
        )
        headers = dead_letter_headers(record.headers, stage=self.spec.name, error=error, topic=record.topic,
                                      partition=record.partition, offset=record.offset)
        value = record.value if len(record.value or b"") <= self.spec.max_payload_bytes else None
        path.producer.produce(self.spec.dead_letter_topic, value=value, key=record.key, headers=headers)
        try:
            self._emit(path, path.spec.handler.on_failure(record, error))
        except Exception:
            logger.exception("on_failure raised", extra={"stage": self.spec.name})

    # -- rebalance -------------------------------------------------------------------------

    def _guarded(self, callback: Callable[[Consumer, list[TopicPartition]], None]
                 ) -> Callable[[Consumer, list[TopicPartition]], None]:
        """A rebalance callback that never lets an exception into librdkafka (it would surface as
        a SystemError far from its cause): the error is kept and raised by the loop after the poll."""

        def call(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            try:
                callback(consumer, partitions)
            except BaseException as exc:  # noqa: BLE001 - re-raised by _raise_callback_error
                logger.exception("rebalance callback failed", extra={"stage": self.spec.name})
                self._callback_error = self._callback_error or exc

        return call

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._index is not None
        handler = self._index.spec.handler
        numbers = [tp.partition for tp in partitions]
        starts = handler.assigned(numbers) if hasattr(handler, "assigned") else {}
        for tp in partitions:
            if tp.partition in starts:
                tp.offset = starts[tp.partition]
        consumer.incremental_assign(partitions)
        if self._query is not None and self._query.spec.follow_index_path:
            self._query.consumer.incremental_assign([TopicPartition(self._query.spec.topic, p) for p in numbers])
        logger.info("partitions assigned", extra={"stage": self.spec.name, "partitions": numbers})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._index is not None
        self._index.checkpoint.revoke(partitions)
        self._release(consumer, partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(consumer, partitions)

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._index is not None
        numbers = [tp.partition for tp in partitions]
        if self._query is not None and self._query.spec.follow_index_path:
            self._query.consumer.incremental_unassign([TopicPartition(self._query.spec.topic, p) for p in numbers])
        handler = self._index.spec.handler
        if hasattr(handler, "revoked"):
            handler.revoked(numbers)
        consumer.incremental_unassign(partitions)
        logger.info("partitions revoked", extra={"stage": self.spec.name, "partitions": numbers})

    def _on_revoke_query(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._query is not None
        self._query.checkpoint.revoke(partitions)


def now_ms() -> int:
    return int(time.time() * 1000)
