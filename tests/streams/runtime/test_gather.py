"""A path with ``gather_ms`` holds a batch for its other assigned partitions' records (``InputPath.gather``):
the copies of one fanned-out query then reach the shards of one process in one batch, searched side by side."""

from __future__ import annotations

import threading
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from streams.kafka.admin import ensure_topics
from streams.kafka.consumer import consume_batch, make_consumer
from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from streams.runtime.paths import InputPath
from streams.runtime.spec import PathSpec
from streams.wire.topics import TopicShape
from tests.streams.runtime.handlers import NoOutputs

pytestmark = pytest.mark.kafka


def _write(settings: KafkaSettings, topic: str, partition: int, value: bytes) -> None:
    producer = StageProducer(settings)
    producer.produce(topic, value=value, partition=partition)
    producer.flush()
    producer.close()


def _path(settings: KafkaSettings, partitions: int, gather_ms: float) -> tuple[InputPath, str]:
    """A path that reads a new topic of ``partitions``, all assigned to its consumer."""
    topic = f"gather-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicShape(topic, partitions)])
    spec = PathSpec(topic, f"gather-test.{uuid.uuid4().hex[:8]}", NoOutputs(), gather_ms=gather_ms)
    consumer = make_consumer(settings, group_id=spec.group_id)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    return InputPath(spec, consumer, StageProducer(settings)), topic


def _first(path: InputPath) -> list[Message]:
    """The first poll that returns records (the topic may take a moment to be fetched)."""
    for _ in range(100):
        if messages := consume_batch(path.consumer, max_records=path.spec.batch_size, timeout=0.5):
            return messages
    raise AssertionError("nothing consumed in 50 s")


def test_a_record_of_another_assigned_partition_written_meanwhile_joins_the_batch(kafka_settings: KafkaSettings) -> None:
    path, topic = _path(kafka_settings, partitions=2, gather_ms=60_000)
    _write(kafka_settings, topic, 0, b"copy for shard 0")
    first = _first(path)
    assert [msg.partition() for msg in first] == [0]
    sibling = threading.Thread(target=_write, args=(kafka_settings, topic, 1, b"copy for shard 1"))
    sibling.start()  # written while the batch is being gathered, as a fan-out's second copy may arrive
    try:
        gathered = path.gather(first)
    finally:
        sibling.join()
        path.consumer.close()
    assert [(msg.partition(), msg.value()) for msg in gathered] == [(1, b"copy for shard 1")]


def test_a_batch_that_covers_every_assigned_partition_takes_nothing_more(kafka_settings: KafkaSettings) -> None:
    path, topic = _path(kafka_settings, partitions=2, gather_ms=60_000)
    _write(kafka_settings, topic, 0, b"a")
    _write(kafka_settings, topic, 1, b"b")
    batch = _first(path)
    while {msg.partition() for msg in batch} != {0, 1}:
        batch += _first(path)
    _write(kafka_settings, topic, 0, b"next")
    try:
        assert path.gather(batch) == []  # at once: the 60 s window is not waited out
        assert [msg.value() for msg in _first(path)] == [b"next"]  # left for the next batch
    finally:
        path.consumer.close()


def test_a_record_without_a_sibling_is_held_no_longer_than_the_window(kafka_settings: KafkaSettings) -> None:
    path, topic = _path(kafka_settings, partitions=2, gather_ms=50)
    _write(kafka_settings, topic, 1, b"only shard 1 asked")
    try:
        assert path.gather(_first(path)) == []
    finally:
        path.consumer.close()


def test_a_path_that_follows_the_index_path_gathers_for_the_partitions_mirrored_to_it(
        kafka_settings: KafkaSettings) -> None:
    """The shard's search path: the partitions it waits for are those the index path's rebalance mirrored to it
    (``InputPath.assigned``), not asked of librdkafka on every batch."""
    path, topic = _path(kafka_settings, partitions=2, gather_ms=60_000)
    path.assigned = {0}  # the consumer holds both partitions; the index path gave this process shard 0 only
    _write(kafka_settings, topic, 0, b"copy for shard 0")
    first = _first(path)
    other = threading.Thread(target=_write, args=(kafka_settings, topic, 1, b"not this process's shard"))
    other.start()  # a gather for every partition of the consumer would wait for it and take it
    try:
        assert path.gather(first) == []  # at once: no partition of its own is missing
    finally:
        other.join()
        path.consumer.close()
