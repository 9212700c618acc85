"""What a restoring handler is told of its consumer: the watermarks it sees, the end of a partition,
and an offset out of range. The shard restores before it serves (``streams/stages/shard/``); the loop
only reports what the consumer sees and goes where the handler says."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.runtime.spec import Restoring

__all__ = ["RestoreHooks"]

logger = logging.getLogger(__name__)


class RestoreHooks:
    """One restoring handler and the consumer of its path."""

    def __init__(self, handler: Restoring, consumer: Consumer, *, stage: str, watch_every_s: float,
                 assignment: Callable[[], set[tuple[str, int]]]) -> None:
        """:param assignment: (topic, partition) the consumer holds (``InputPath.assignment``: kept by the loop,
            not asked of a busy librdkafka)."""
        self._handler = handler
        self._consumer = consumer
        self._assignment = assignment
        self._stage = stage
        self._every_s = watch_every_s
        self._next_watch = 0.0

    def watch(self) -> None:
        """Tell the handler the watermarks its consumer saw, a few times a second."""
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + self._every_s
        for topic, partition in sorted(self._assignment()):
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            seek_to = self._handler.watermarks(partition, low, high)
            if seek_to is not None:
                self._consumer.seek(TopicPartition(topic, partition, seek_to))
                logger.info("seeked", extra={"stage": self._stage, "topic": topic, "partition": partition,
                                             "offset": seek_to})

    def ends(self, partitions: Sequence[int]) -> None:
        """The consumer reached the end of ``partitions`` (after the batch: the records before the end are applied)."""
        for partition in partitions:
            self._handler.end_reached(partition)

    def out_of_range(self, topic: str, partition: int) -> None:
        """The broker answered OFFSET_OUT_OF_RANGE; with ``auto.offset.reset: error`` librdkafka then
        stops fetching the partition, and a seek fails (``_STATE``, "Failed to seek"): the handler
        chooses where to go on from the log start and end the broker reports now, and the partition
        is assigned again at that offset (incrementally: the group's assignment is unchanged)."""
        where = TopicPartition(topic, partition)
        try:
            low, high = self._consumer.get_watermark_offsets(where, timeout=10, cached=False)
        except KafkaException as exc:
            logger.warning("watermarks not available", extra={"stage": self._stage, "error": str(exc)})
            low, high = -1, -1
        offset = self._handler.out_of_range(partition, low, high)
        self._consumer.incremental_unassign([where])
        self._consumer.incremental_assign([TopicPartition(topic, partition, offset)])
        logger.info("assigned again after out of range", extra={"stage": self._stage, "topic": topic,
                                                                "partition": partition, "offset": offset})
