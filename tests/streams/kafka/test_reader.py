"""``streams.kafka.reader`` on a real broker: where "the end" is, with transactions, and when it is not reached."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from streams.exceptions import ReadTimeoutError
from streams.kafka.admin import ensure_topics
from streams.kafka.producer import StageProducer
from streams.kafka.reader import TopicReader, read_to_end, tail
from streams.kafka.settings import KafkaSettings
from streams.wire.topics import TopicShape

pytestmark = pytest.mark.kafka


def _topic(settings: KafkaSettings, partitions: int = 1) -> str:
    name = f"reader-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [TopicShape(name, partitions)])
    return name


def _write(settings: KafkaSettings, topic: str, values: list[bytes], partition: int = 0) -> None:
    producer = StageProducer(settings)
    for value in values:
        producer.produce(topic, value=value, partition=partition)
    producer.flush()
    producer.close()


def _group() -> str:
    return f"reader-test.{uuid.uuid4().hex[:8]}"


def test_a_read_returns_every_record_up_to_the_end_when_it_started_and_no_more(kafka_settings: KafkaSettings) -> None:
    topic = _topic(kafka_settings, partitions=2)
    _write(kafka_settings, topic, [b"a0", b"a1", b"a2"], partition=0)  # partition 1 stays empty
    with TopicReader(kafka_settings, group_id=_group()) as reader:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in (0, 1)])
        read = []
        for fetched in reader.to_end(timeout=30, max_records=1):
            if fetched.records and not read:
                _write(kafka_settings, topic, [b"later"], partition=0)  # written once the read has begun
            read.extend(msg.value() for msg in fetched.records)
    assert read == [b"a0", b"a1", b"a2"]


def test_a_read_from_an_offset_or_up_to_a_given_end(kafka_settings: KafkaSettings) -> None:
    topic = _topic(kafka_settings)
    _write(kafka_settings, topic, [b"0", b"1", b"2", b"3"])
    start = [TopicPartition(topic, 0, 1)]
    assert [m.value() for m in read_to_end(kafka_settings, start, group_id=_group(), timeout=30)] == [b"1", b"2", b"3"]
    assert [m.value() for m in read_to_end(kafka_settings, start, group_id=_group(), timeout=30,
                                           until={(topic, 0): 3})] == [b"1", b"2"]
    at_end = [TopicPartition(topic, 0, 4)]
    assert list(read_to_end(kafka_settings, at_end, group_id=_group(), timeout=30, until={(topic, 0): 4})) == []


def test_read_committed_ends_past_commit_markers_and_before_an_open_transaction(kafka_settings: KafkaSettings) -> None:
    """The marker's offset is never received, and an open transaction holds the end back: the read
    ends at the partition's end event instead of waiting for its timeout."""
    topic = _topic(kafka_settings)
    producer = StageProducer(kafka_settings, **{"transactional.id": f"reader-{uuid.uuid4().hex[:8]}"})
    producer.raw.begin_transaction()
    producer.produce(topic, value=b"committed", partition=0)
    producer.raw.commit_transaction(30)
    producer.raw.begin_transaction()
    producer.produce(topic, value=b"open", partition=0)
    producer.flush()
    try:
        read = [m.value() for m in read_to_end(kafka_settings, [TopicPartition(topic, 0, 0)], group_id=_group(),
                                               timeout=20, read_committed=True)]
    finally:
        producer.raw.abort_transaction(30)
    assert read == [b"committed"]
    assert [m.value() for m in read_to_end(kafka_settings, [TopicPartition(topic, 0, 0)], group_id=_group(),
                                           timeout=20, read_committed=True)] == [b"committed"]


def test_a_partition_that_never_ends_raises_a_typed_error_naming_it(kafka_settings: KafkaSettings) -> None:
    missing = f"reader-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ReadTimeoutError, match=rf"could not read {missing}\[0\] to its end within 2s") as raised:
        list(read_to_end(kafka_settings, [TopicPartition(missing, 0, 0)], group_id=_group(), timeout=2))
    assert raised.value.unfinished == {(missing, 0)}


def test_tail_follows_new_records_until_stopped(kafka_settings: KafkaSettings) -> None:
    topic = _topic(kafka_settings)
    stop = threading.Event()
    seen: list[bytes] = []
    for fetched in tail(kafka_settings, [TopicPartition(topic, 0, 0)], group_id=_group(), stop=stop):
        if fetched.ends == [(topic, 0)]:  # read up to its (empty) end: what comes now is new
            _write(kafka_settings, topic, [b"new"])
        seen.extend(m.value() for m in fetched.records)
        if seen:
            stop.set()
    assert seen == [b"new"]


def test_the_fetched_end_is_known_from_the_high_watermark_before_the_end_event(kafka_settings: KafkaSettings) -> None:
    """A client waiting for ``<flow>.versions`` to be read: with a long poll the end-of-partition event comes
    only after a fetch at the end has waited its time; the high watermark of the fetch that brought the
    records says it at once."""
    topic = _topic(kafka_settings)
    _write(kafka_settings, topic, [b"a", b"b", b"c"])
    with TopicReader(kafka_settings, group_id=_group(), **{"fetch.wait.max.ms": 30_000}) as reader:
        reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        assert not reader.at_fetched_end(topic, 0)  # no fetch yet: unknown, not "empty"
        values: list[bytes] = []
        stop = threading.Event()
        deadline = time.monotonic() + 25  # before the 30 s poll would end the wait anyway
        for fetched in reader.follow(stop, timeout=0.1):
            assert time.monotonic() < deadline, f"the end unknown after 25 s, {values} read"
            values += [msg.value() for msg in fetched.records]
            assert (topic, 0) not in fetched.ends or values == [b"a", b"b", b"c"]
            if reader.at_fetched_end(topic, 0):
                break
            assert len(values) < 3, "all read, yet the end unknown"
        assert values == [b"a", b"b", b"c"]
