"""A flow's dead letters, read from its dead-letter topic: what a stage could not process, and why.

The client reads them to name the documents of a write that will not become searchable
(``Client.wait_searchable``); ``streamsearch dead-letters`` lists and re-drives them
(``streams/ops/dead_letters.py``).
"""

from __future__ import annotations

import uuid

from confluent_kafka import TopicPartition

from streams.kafka.consumer import headers_of
from streams.kafka.reader import read_to_end
from streams.kafka.settings import KafkaSettings
from streams.wire.dead_letters import DeadLetter, dead_letter_of
from streams.wire.topics import FlowTopics

__all__ = ["read_dead_letters"]


def read_dead_letters(settings: KafkaSettings, topics: FlowTopics, *, from_offset: int = 0,
                      timeout: float = 15.0) -> list[DeadLetter]:
    """Every dead letter of ``topics``' version from ``from_offset`` up to the end of the topic.

    :raises ReadTimeoutError: if the end is not reached within ``timeout`` seconds.
    """
    start = TopicPartition(topics.dead_letter, 0, from_offset)
    return [dead_letter_of(msg.offset(), msg.key(), msg.value(), headers_of(msg), topics.ingest)
            for msg in read_to_end(settings, [start], group_id=f"{topics.flow}.dead-letters.{uuid.uuid4().hex[:8]}",
                                   timeout=timeout)]
