"""Helpers for tests in more than one folder (a helper lives in the fixtures module of the nearest
folder that holds every test using it; see tests/README.md): a topic read to its end on the session
broker, and Avro bytes written by hand where no encoder would write them."""

from __future__ import annotations

import struct
import time
import uuid

from confluent_kafka import KafkaError, Message, TopicPartition

from streams.kafka.clients import KafkaSettings, consume_batch, make_consumer


def read_all(settings: KafkaSettings, topic: str, partitions: int, **config: object) -> list[Message]:
    """Every record of ``topic`` from the beginning to the high watermark (as of the fetch)."""
    consumer = make_consumer(settings, group_id=f"read-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True, **config})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Message] = []
    ended: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(ended) < partitions:
            assert time.monotonic() < deadline, f"{topic} not read to its end in 60 s"
            for msg in consume_batch(consumer, max_records=500, timeout=0.5):
                error, partition = msg.error(), msg.partition()
                if error is None:
                    records.append(msg)
                elif error.code() == KafkaError._PARTITION_EOF and partition is not None:
                    ended.add(partition)
    finally:
        consumer.close()
    return records


DEFAULT_PREFIX = b"\x00" * 12 + struct.pack("<d", 1.0) + b"\x00" * 3 + b"\x02"
"""An all-default Document (empty id and mime type, every option null, no tags, scores or
location) up to its ``chunks`` array, which holds one item: the next such Document."""


def nested(depth: int) -> bytes:
    """A Document ``depth`` levels deep, each the only chunk of the one above, closed properly."""
    innermost = DEFAULT_PREFIX[:-1] + b"\x00\x00"  # no chunks, no matches
    return DEFAULT_PREFIX * (depth - 1) + innermost + b"\x00\x00" * (depth - 1)  # end of chunks, no matches
