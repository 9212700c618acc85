"""The only code that commits consumer offsets, always after the outputs are delivered."""

from __future__ import annotations

import logging
from typing import Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.kafka import StageProducer

__all__ = ["Checkpoint"]

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
        """Flush outputs, then commit; an empty checkpoint commits nothing.

        :raises DeliveryError: if an output was not delivered; offsets stay uncommitted, so
            the input is processed again after a restart (at-least-once).
        """
        if not self._offsets:
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
