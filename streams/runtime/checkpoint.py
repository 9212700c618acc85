"""The only code that commits consumer offsets, always after the outputs are delivered."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.exceptions import ProducerFailedError
from streams.runtime.metrics import PRODUCER_RECREATIONS, TRANSACTIONS

from streams.kafka.producer import StageProducer, kafka_error

__all__ = ["Checkpoint", "TransactionalCheckpoint", "MAX_RECREATIONS"]

logger = logging.getLogger(__name__)

MAX_RECREATIONS = 3
"""Fresh producers that may fail in a row (no commit between them) before the process gives up and
exits, for its supervisor to restart it: a cause that outlives a new client is not the client's."""


class Checkpoint:
    """Offsets consumed since the last commit, for one consumer.

    Order, every time: (1) flush the producer and fail if anything is undelivered, (2) commit
    the consumed offsets + 1. State stores write their offsets inside their own write batch
    while processing, so for them the group commit is informational (lag, monitoring).

    A producer that failed for good (a fatal error) is replaced in-process and the consumer rewinds
    to its committed offsets (:meth:`recover`): the process lives on, unless ``MAX_RECREATIONS``
    fresh producers fail in a row.
    """

    def __init__(self, consumer: Consumer, producer: StageProducer, *, flow: str = "", stage: str = "",
                 interval_s: float = 0.0) -> None:
        """:param interval_s: the least time between two asynchronous commits (``PathSpec.commit_interval_s``)."""
        self._consumer = consumer
        self._producer = producer
        self._interval_s = interval_s
        self._next_commit = 0.0
        """``time.monotonic()`` from which an asynchronous commit is due again."""
        self._offsets: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        """What this checkpoint last committed per partition: a held partition is not committed again at the
        same offset at every round. Compared for equality only: a consumer that moved backwards (a shard
        rebuilt from the beginning, an offset reset) commits its lower offset as before."""
        self._labels = (flow, stage)
        self._recreations = 0
        """Producers replaced since the last commit."""
        self.holds: Callable[[], Mapping[tuple[str, int], int]] | None = None
        """Per (topic, partition), the offset of the earliest record the handler still holds unanswered (a search
        parked for a write: ``AwaitsWrites.parked_offsets``). A commit stops there, so that a new owner of the
        partition reads that record again: the old owner drops what it held when the partition leaves it. None:
        the handler holds nothing."""

    def expedite(self) -> None:
        """Make the next commit a real one, whatever the interval: after a dead letter (the shard notes its record
        as applied, and a later flush of that note must not reach the disk before the letter is delivered), a new
        assignment (a rewind would otherwise go back to the partition's start), a rewind."""
        self._next_commit = 0.0

    @property
    def empty(self) -> bool:
        return not self._offsets

    def record(self, topic: str, partition: int, offset: int) -> None:
        """Note a record as processed (its outputs are queued in the producer)."""
        key = (topic, partition)
        if offset > self._offsets.get(key, -1):
            self._offsets[key] = offset

    def commit(self, *, asynchronous: bool = True) -> None:
        """Flush outputs, then commit; an empty checkpoint commits nothing, but still sends the
        outputs a timer queued (a parked search answered by ``tick``) instead of letting them linger.

        :raises DeliveryError: if an output was not delivered; offsets stay uncommitted, so
            the input is processed again after a restart (at-least-once). With an interval, an output of an
            earlier batch since the last commit may be the one.
        """
        if asynchronous and self._interval_s and time.monotonic() < self._next_commit:
            return  # the outputs meanwhile go as the producer batches them; delivery is checked at the commit
        targets = self._targets()
        due = {key: target for key, target in targets.items() if target != self._committed.get(key)}
        if not due:
            self._offsets = self._held(targets)
            if self._producer.pending:
                self._producer.flush()
            return
        self._producer.flush()
        self._offsets = self._held(targets)
        self._committed.update(due)
        self._recreations = 0
        self._next_commit = time.monotonic() + self._interval_s
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in due.items()],
                                  asynchronous=asynchronous)
        except KafkaException as exc:
            # A commit can fail during a rebalance; the next owner reprocesses: upserts are idempotent.
            logger.warning("commit failed", extra={"error": str(exc)})

    def _targets(self) -> dict[tuple[str, int], int]:
        """The offset to commit per partition noted: past its last record processed, or at the earliest one still
        held (``holds``), whose partition stays noted until it is answered."""
        held = self.holds() if self.holds is not None and self._offsets else {}
        return {key: min(offset + 1, held.get(key, offset + 1)) for key, offset in self._offsets.items()}

    def _held(self, targets: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """What stays noted after a commit: the partitions whose target stops at a held record."""
        return {key: offset for key, offset in self._offsets.items() if targets[key] <= offset}

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit what was processed on partitions about to leave, synchronously, then forget them."""
        leaving = {(tp.topic, tp.partition) for tp in partitions}
        try:
            if any(key in leaving for key in self._offsets):
                self.commit(asynchronous=False)
        finally:  # undelivered outputs raise: the partitions still leave, and their next owner reprocesses
            self.forget(leaving)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop what is noted of partitions this consumer no longer holds (revoked, lost): a held record's offset
        is never committed over its new owner's."""
        for key in partitions:
            self._offsets.pop(key, None)
            self._committed.pop(key, None)

    def recover(self, error: ProducerFailedError) -> None:
        """The producer took no record (``StageProducer.produce``): replace it and rewind, so the batch
        runs again with a fresh one."""
        self._recreate(error.error)
        self.rewind()

    def rewind(self) -> None:
        """Forget what was processed since the last commit and seek back to the committed offsets:
        the records run again."""
        self._offsets.clear()
        self.expedite()  # the rerun's commit confirms it
        assignment = self._consumer.assignment()
        if not assignment:
            return
        for tp in self._consumer.committed(assignment, timeout=30):
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
            self._committed.pop((tp.topic, tp.partition), None)  # the broker's word from here on

    def _recreate(self, error: KafkaError) -> None:
        """Drop the producer, unflushed; the next use creates a fresh one. A fatal error means this
        client is unusable, not that this process is a zombie: a transactional id is this replica's
        alone, and a consumer group's newer generation fences a zombie's offsets (KIP-447) whatever
        producer sends them, so replacing the producer and rerunning from the committed offsets is
        right even then.

        :raises ProducerFailedError: the ``MAX_RECREATIONS``-th fresh producer in a row failed too.
        """
        self._recreations += 1
        if self._recreations > MAX_RECREATIONS:
            raise ProducerFailedError(f"the producer still fails after {MAX_RECREATIONS} replacements in a row "
                                      f"({error.name()}: {error.str()}): this process must go", error)
        PRODUCER_RECREATIONS.labels(*self._labels, error.name()).inc()
        logger.warning("producer failed for good, replacing it; the batch runs again",
                       extra={"flow": self._labels[0], "stage": self._labels[1], "error": error.str(),
                              "code": error.name(), "fatal": error.fatal(), "attempt": self._recreations})
        self._producer.recreate()


class TransactionalCheckpoint(Checkpoint):
    """``processing_guarantee: exactly_once``: a batch's outputs and its consumed offsets
    commit in one Kafka transaction (begin, produce, ``send_offsets_to_transaction``, commit).

    On any failure the transaction is aborted and the consumer rewinds to the last committed
    offsets, so the batch runs again in a new transaction. Downstream read_committed consumers
    then never see the aborted attempt, on Apache Kafka; the embedded broker shows aborted
    records anyway (``shared/EMBEDDED_BROKER.md``), which upserts by id make harmless.

    As librdkafka sorts a transaction's errors: retriable (a commit that timed out) is tried again;
    abortable (``txn_requires_abort``) is aborted; fatal (the producer was fenced, or its coordinator
    lost the transaction in a failover) replaces the producer with a fresh one of the same
    ``transactional.id``, whose ``init_transactions`` aborts the old transaction. Either way the
    consumer rewinds and the batch runs again, in this process.
    """

    COMMIT_ATTEMPTS = 3
    """``commit_transaction`` calls for one transaction while its errors are retriable."""

    SEND_OFFSETS_TIMEOUT_S = 30.0
    """The timeout given to ``send_offsets_to_transaction``."""

    UNCHECKED_TIMEOUT_GRACE_S = 5.0
    """How long past its own timeout a librdkafka call may take before we stop waiting for it."""

    def __init__(self, consumer: Consumer, producer: StageProducer, *, flow: str = "", stage: str = "") -> None:
        super().__init__(consumer, producer, flow=flow, stage=stage)
        self._open = False

    def begin(self) -> None:
        """Begin a transaction, with a fresh producer while the current one cannot (a fatal error, or
        creating it failed: its ``init_transactions`` waits for the coordinator, up to 30 s)."""
        while not self._open:
            try:
                self._producer.raw.begin_transaction()
                self._open = True
            except KafkaException as exc:
                self._recreate(kafka_error(exc))

    def commit(self, *, asynchronous: bool = True) -> None:
        """Send the offsets into the transaction and commit it; abort or replace the producer, and
        rewind, on failure."""
        if not self._open:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in self._offsets.items()]
        try:
            if offsets:
                self._send_offsets(offsets)
            self._commit_transaction()
        except KafkaException as exc:
            self._failed(kafka_error(exc))
            return
        finally:
            self._offsets.clear()
        self._open = False
        self._recreations = 0
        TRANSACTIONS.labels(*self._labels, "commit").inc()

    def _send_offsets(self, offsets: list[TopicPartition]) -> None:
        """``send_offsets_to_transaction``, bounded by us: librdkafka (2.16 and before) never checks this
        call's timeout while it looks for the group coordinator (librdkafka #5456), and when that
        coordinator's broker died and left the metadata nothing wakes the lookup again (#5511): the
        call, and with it the stage, then waits forever. Seen when the broker that coordinated both the
        stage's group and its transactions was killed. Past the timeout the producer is left behind
        (its thread may never return) and counted as failed for good: a fresh producer of the same
        ``transactional.id`` fences it and aborts its transaction, and the batch runs again.

        :raises KafkaException: the call's own error, or ``_TIMED_OUT`` (fatal) when it did not return.
        """
        raw, metadata = self._producer.raw, self._consumer.consumer_group_metadata()
        _bounded(lambda: raw.send_offsets_to_transaction(offsets, metadata, self.SEND_OFFSETS_TIMEOUT_S),
                 self.SEND_OFFSETS_TIMEOUT_S + self.UNCHECKED_TIMEOUT_GRACE_S, "send_offsets_to_transaction")

    def _commit_transaction(self) -> None:
        for attempt in range(1, self.COMMIT_ATTEMPTS + 1):
            try:
                self._producer.raw.commit_transaction(30)
                return
            except KafkaException as exc:
                if not kafka_error(exc).retriable() or attempt == self.COMMIT_ATTEMPTS:
                    raise
                logger.warning("transaction commit failed, retrying", extra={"error": str(exc), "attempt": attempt})

    def recover(self, error: ProducerFailedError) -> None:
        """The producer took no record of the open transaction: abort it, or replace the producer."""
        self._failed(error.error)

    def _failed(self, error: KafkaError) -> None:
        """The open transaction failed: abort it (or, fatal, replace the producer), then rewind."""
        if error.fatal() or error.code() == KafkaError._FATAL:
            self._open = False
            TRANSACTIONS.labels(*self._labels, "abort").inc()
            self._recreate(error)
            self.rewind()
            return
        logger.warning("transaction failed, aborting", extra={"error": error.str(), "code": error.name()})
        self.abort()

    def abort(self) -> None:
        """Abort the open transaction and rewind to the committed offsets: the batch runs again. A
        producer that cannot abort is replaced: the fresh one's ``init_transactions`` aborts it."""
        if self._open:
            try:
                self._producer.raw.abort_transaction(30)
            except KafkaException as exc:
                self._recreate(kafka_error(exc))
            finally:
                self._open = False
                TRANSACTIONS.labels(*self._labels, "abort").inc()
        self.rewind()


def _bounded(call: Callable[[], None], timeout_s: float, name: str) -> None:
    """Run ``call`` in a daemon thread and wait at most ``timeout_s`` for it.

    :raises KafkaException: whatever ``call`` raised; or, when it has not returned in time, a fatal
        ``_TIMED_OUT`` (the caller must drop the client the call is still blocked in).
    """
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
            raised.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        logger.warning("a librdkafka call ignored its timeout; leaving its producer behind",
                       extra={"call": name, "waited_s": timeout_s})
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{name} did not return within {timeout_s}s "
                                        "(librdkafka #5456)", fatal=True))
    if raised:
        raise raised[0]
