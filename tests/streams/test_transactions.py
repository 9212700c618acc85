"""``processing_guarantee: exactly_once``: the transactional path.

Begin, produce, send the offsets into the transaction, commit; on failure abort and rewind, so
the batch runs again. On Apache Kafka a read_committed reader never sees the aborted attempt;
Tansu accepts transactions but shows aborted records (``shared/EMBEDDED_BROKER.md``), which
upserts by id make harmless: on it the test asserts that known gap instead.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from streams.admin import ensure_topics
from streams.checkpoint import TransactionalCheckpoint
from streams.kafka import KafkaSettings, StageProducer, consume_batch, make_consumer
from streams.local.brokers import BrokerKind
from streams.topics import TopicShape

pytestmark = pytest.mark.kafka


def _poll_until(consumer, count: int, timeout: float = 20.0) -> list:  # type: ignore[no-untyped-def]
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        records.extend(m for m in consume_batch(consumer, max_records=count, timeout=0.5) if m.error() is None)
    return records


def _committed(consumer, topic: str) -> int:  # type: ignore[no-untyped-def]
    [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    return tp.offset


def test_a_batch_commits_outputs_and_offsets_in_one_transaction_and_reruns_after_an_abort(
        kafka_settings: KafkaSettings, broker_kind: BrokerKind) -> None:
    source, sink = f"tx-in-{uuid.uuid4().hex[:6]}", f"tx-out-{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka_settings, [TopicShape(source, 1), TopicShape(sink, 1)])
    feeder = StageProducer(kafka_settings)
    for i in range(6):
        feeder.produce(source, value=f"record {i}".encode(), partition=0)
    feeder.flush()

    group = f"tx-{uuid.uuid4().hex[:6]}"
    consumer = make_consumer(kafka_settings, group_id=group)
    consumer.assign([TopicPartition(source, 0, 0)])
    producer = StageProducer(kafka_settings, **{"transactional.id": f"{group}.0"})
    checkpoint = TransactionalCheckpoint(consumer, producer, flow="tx", stage="test")
    try:
        first = _poll_until(consumer, 3)[:3]
        checkpoint.begin()
        for msg in first:
            producer.produce(sink, value=msg.value().upper(), partition=0)
            checkpoint.record(source, 0, msg.offset())
        checkpoint.abort()  # a failure mid-batch: nothing committed, the consumer rewinds
        assert _committed(consumer, source) < 0

        again = _poll_until(consumer, 6)
        assert [m.offset() for m in again] == list(range(6)), "the aborted batch runs again from the start"
        checkpoint.begin()
        for msg in again:
            producer.produce(sink, value=msg.value().upper(), partition=0)
            checkpoint.record(source, 0, msg.offset())
        checkpoint.commit()
        assert _committed(consumer, source) == 6, "offsets committed by send_offsets_to_transaction"
    finally:
        consumer.close()
        producer.close()

    reader = make_consumer(kafka_settings, group_id=f"reader-{uuid.uuid4().hex[:6]}",
                           **{"isolation.level": "read_committed"})
    reader.assign([TopicPartition(sink, 0, 0)])
    try:
        values = [m.value() for m in _poll_until(reader, 9, timeout=10)]
    finally:
        reader.close()
    committed = [f"RECORD {i}".encode() for i in range(6)]
    if broker_kind is BrokerKind.KAFKA:
        assert values == committed, "read_committed isolation: the aborted attempt is invisible"
    else:
        assert values == committed[:3] + committed, "Tansu shows the aborted attempt (known gap)"
