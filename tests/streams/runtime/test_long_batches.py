"""A batch that takes longer than max.poll.interval.ms does not evict the stage from its group."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import TopicPartition

from streams.kafka.admin import ensure_topics
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.consumer import make_consumer
from streams.runtime.loop import StageLoop
from streams.runtime.spec import Inbound, Output, PathSpec, StageSpec
from streams.wire.topics import TopicShape
from tests.fixtures import read_all

pytestmark = pytest.mark.kafka

POLL_INTERVAL_MS = 6000
WORK_S = 15.0  # one batch's work: 2.5 times the poll interval


class _Slow:
    """A stateless handler whose batch takes ``WORK_S`` (a model over a huge document, say)."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.seen: Counter[bytes] = Counter()

    def process(self, records: list[Inbound]) -> list[Output]:
        self.seen.update(r.key for r in records)
        time.sleep(WORK_S)  # the workload itself, not a wait for anything
        return [Output(self.sink, value=r.value, key=r.key, partition=0) for r in records]

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return []

    def tick(self) -> list[Output]:
        return []


def test_a_batch_longer_than_the_poll_interval_runs_once_and_commits(kafka_settings: KafkaSettings) -> None:
    name = f"slow{uuid.uuid4().hex[:6]}"
    source, sink = f"{name}.in", f"{name}.out"
    ensure_topics(kafka_settings, [TopicShape(source, 1), TopicShape(sink, 1), TopicShape(f"{name}.dead-letter", 1)])
    feeder = StageProducer(kafka_settings)
    for key in ("a", "b", "c"):
        feeder.produce(source, value=key.encode(), key=key, partition=0)
    feeder.flush()
    handler = _Slow(sink)
    overrides = {"max.poll.interval.ms": POLL_INTERVAL_MS, "session.timeout.ms": POLL_INTERVAL_MS,
                 "heartbeat.interval.ms": 1000}
    spec = StageSpec(flow=name, name="slow", dead_letter_topic=f"{name}.dead-letter",
                     index_path=PathSpec(source, f"{name}.stage", handler, batch_size=10), consumer_overrides=overrides)
    loop = StageLoop(spec, kafka_settings)
    loop._start()
    try:
        deadline = time.monotonic() + 120
        while loop.processed < 3:
            assert time.monotonic() < deadline, "the batch was not processed"
            loop.step()
    finally:
        loop._close()
    assert handler.seen == Counter({b"a": 1, b"b": 1, b"c": 1}), "each record processed once: never evicted"
    assert [m.key() for m in read_all(kafka_settings, sink, 1)] == [b"a", b"b", b"c"]
    consumer = make_consumer(kafka_settings, group_id=f"{name}.stage")
    try:
        assert consumer.committed([TopicPartition(source, 0)], timeout=10)[0].offset == 3
    finally:
        consumer.close()
