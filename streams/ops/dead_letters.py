"""Reading the dead-letter topic and re-driving its records after a fix."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from streams.wire import headers as h
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.consumer import headers_of, make_consumer
from streams.kafka.reader import read_to_end
from streams.wire.topics import FlowTopics

__all__ = ["DeadLetter", "read_dead_letters", "redrive", "redriven_up_to"]

NO_INGEST_OFFSET = -1
"""A letter's ``ingest_offset`` when it traces back to no ingest record (a request, a foreign record)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record a stage could not process, with why and where it came from."""

    offset: int
    key: bytes | None
    value: bytes | None
    stage: str
    error_class: str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_headers: tuple[h.Header, ...]
    ingest_offset: int = NO_INGEST_OFFSET
    """The offset of the ingest record it derives from, in partition ``source_partition``: its own
    offset when it was read from the ingest topic, else its ``ss-ingest-offset`` header (the index
    path is co-partitioned). What tells a writer which of its documents were dead-lettered."""


def read_dead_letters(settings: KafkaSettings, topics: FlowTopics, *, from_offset: int = 0,
                      timeout: float = 15.0) -> list[DeadLetter]:
    """Every dead letter from ``from_offset`` up to the end of the topic.

    :raises ReadTimeoutError: if the end is not reached within ``timeout`` seconds.
    """
    start = TopicPartition(topics.dead_letter, 0, from_offset)
    return [_letter(msg.offset(), msg.key(), msg.value(), headers_of(msg), topics.ingest)
            for msg in read_to_end(settings, [start], group_id=f"{topics.flow}.dead-letters.{uuid.uuid4().hex[:8]}",
                                   timeout=timeout)]


def _letter(offset: int, key: bytes | None, value: bytes | None, headers: dict[str, bytes],
            ingest_topic: str) -> DeadLetter:
    text = {name: raw.decode(errors="replace") for name, raw in headers.items()}
    source_offset = _or(h.read_int(headers, h.DEAD_LETTER_OFFSET), -1)  # offset 0 is an offset, not "none"
    from_ingest = text.get(h.DEAD_LETTER_TOPIC) == ingest_topic
    ingest_offset = source_offset if from_ingest else _or(h.read_int(headers, h.INGEST_OFFSET), NO_INGEST_OFFSET)
    return DeadLetter(
        offset=offset, key=key, value=value,
        stage=text.get(h.DEAD_LETTER_STAGE, "?"), error_class=text.get(h.DEAD_LETTER_ERROR_CLASS, "?"),
        message=text.get(h.DEAD_LETTER_MESSAGE, ""), source_topic=text.get(h.DEAD_LETTER_TOPIC, ""),
        source_partition=_or(h.read_int(headers, h.DEAD_LETTER_PARTITION), 0),
        source_offset=source_offset,
        original_headers=tuple((k, v) for k, v in headers.items() if not k.startswith("ss-dl-")),
        ingest_offset=ingest_offset,
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


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
