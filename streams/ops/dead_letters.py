"""Re-driving dead letters after a fix (reading them: ``streams/client/dead_letters.py``)."""

from __future__ import annotations

import logging

from confluent_kafka import TopicPartition

from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.consumer import make_consumer
from streams.wire.dead_letters import DeadLetter
from streams.wire.topics import FlowTopics

__all__ = ["redrive", "redriven_up_to"]

logger = logging.getLogger(__name__)


def _redrive_group(topics: FlowTopics) -> str:
    return f"{topics.prefix}.dead-letters.redrive"


def redriven_up_to(settings: KafkaSettings, topics: FlowTopics) -> int:
    """The dead-letter offset up to which letters were re-driven (a consumer group's committed
    offset, so it lives in Kafka with the letters); 0 when none was."""
    consumer = make_consumer(settings, group_id=_redrive_group(topics))
    try:
        [tp] = consumer.committed([TopicPartition(topics.dead_letter, 0)], timeout=10)
    finally:
        consumer.close()
    return max(tp.offset, 0)


def redrive(settings: KafkaSettings, letters: list[DeadLetter], *, topics: FlowTopics | None = None) -> int:
    """Put records back on their source topic and partition (order and co-partitioning kept),
    with their original key and headers, for the stage to process again after a fix.

    :param topics: the flow's topics: remember, once they are delivered, that these letters were
        re-driven (``redriven_up_to``), so that the next re-drive does not send them again.
    :returns: how many were re-driven; letters without a payload (oversized ones) are skipped.
    """
    producer = StageProducer(settings)
    sent = 0
    for letter in letters:
        if letter.value is None or not letter.source_topic:
            logger.warning("not re-driven: no payload kept", extra={"offset": letter.offset})
            continue
        producer.produce(letter.source_topic, value=letter.value, key=letter.key, partition=letter.source_partition,
                         headers=letter.original_headers)
        sent += 1
    producer.flush()
    if topics is not None and letters:
        consumer = make_consumer(settings, group_id=_redrive_group(topics))
        try:
            consumer.commit(offsets=[TopicPartition(topics.dead_letter, 0, max(le.offset for le in letters) + 1)],
                            asynchronous=False)
        finally:
            consumer.close()
    return sent
