"""The only code that commits consumer offsets, always after the outputs are delivered."""

from __future__ import annotations

import logging
from typing import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from streams.runtime.metrics import TRANSACTIONS

from streams.kafka.producer import StageProducer

__all__ = ["Checkpoint", "TransactionalCheckpoint"]

logger = logging.getLogger(__name__)


class Checkpoint:
    """Offsets consumed since the last commit, for one consumer.

    Order, every time: (1) flush the producer and fail if anything is undelivered, (2) commit
    the consumed offsets + 1. State stores write their offsets inside their own write batch
    while processing, so for them the group commit is informational (lag, monitoring).
    """

    def __init__(self, consumer: Consumer, producer: StageProducer) -> None:
        self._consumer = consumer
        self._producer = producer
        self._offsets: dict[tuple[str, int], int] = {}

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
            the input is processed again after a restart (at-least-once).
        """
        if not self._offsets:
            if self._producer.pending:
                self._producer.flush()
            return
        self._producer.flush()
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in self._offsets.items()]
        self._offsets.clear()
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            # A commit can fail during a rebalance; the next owner reprocesses: upserts are idempotent.
            logger.warning("commit failed", extra={"error": str(exc)})

    def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit what was processed on partitions about to leave, synchronously."""
        leaving = {(tp.topic, tp.partition) for tp in partitions}
        if any(key in leaving for key in self._offsets):
            self.commit(asynchronous=False)


class TransactionalCheckpoint(Checkpoint):
    """``processing_guarantee: exactly_once``: a batch's outputs and its consumed offsets
    commit in one Kafka transaction (begin, produce, ``send_offsets_to_transaction``, commit).

    On any failure the transaction is aborted and the consumer rewinds to the last committed
    offsets, so the batch runs again in a new transaction. Downstream read_committed consumers
    then never see the aborted attempt, on Apache Kafka; the embedded broker shows aborted
    records anyway (``shared/EMBEDDED_BROKER.md``), which upserts by id make harmless.
    """

    def __init__(self, consumer: Consumer, producer: StageProducer, *, flow: str = "", stage: str = "") -> None:
        super().__init__(consumer, producer)
        self._open = False
        self._labels = (flow, stage)

    def begin(self) -> None:
        if not self._open:
            self._producer.raw.begin_transaction()
            self._open = True

    def commit(self, *, asynchronous: bool = True) -> None:
        """Send the offsets into the transaction and commit it; abort and rewind on failure."""
        if not self._open:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in self._offsets.items()]
        try:
            if offsets:
                self._producer.raw.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 30)
            self._producer.raw.commit_transaction(30)
        except KafkaException as exc:
            if exc.args and exc.args[0].fatal():  # fenced by a newer instance: this process must go
                raise
            logger.warning("transaction failed, aborting", extra={"error": str(exc)})
            self.abort()
            return
        finally:
            self._offsets.clear()
        self._open = False
        TRANSACTIONS.labels(*self._labels, "commit").inc()

    def abort(self) -> None:
        """Abort the open transaction and rewind to the committed offsets: the batch runs again."""
        self._offsets.clear()
        if self._open:
            try:
                self._producer.raw.abort_transaction(30)
            finally:
                self._open = False
                TRANSACTIONS.labels(*self._labels, "abort").inc()
        assignment = self._consumer.assignment()
        if not assignment:
            return
        for tp in self._consumer.committed(assignment, timeout=30):
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
