"""The index path's rebalances mirror its partitions onto the query path that follows it, and the loop keeps
that assignment itself (``InputPath.mirrored``): a gather reads it on every query batch."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import TopicPartition

from streams.kafka.consumer import make_consumer
from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from streams.runtime.paths import InputPath
from streams.runtime.rebalance import Rebalance
from streams.runtime.spec import PathSpec
from tests.streams.runtime.handlers import NoOutputs

pytestmark = pytest.mark.kafka


def _path(settings: KafkaSettings, topic: str, *, follow: bool) -> InputPath:
    spec = PathSpec(topic, f"mirror-test.{uuid.uuid4().hex[:8]}", NoOutputs(), follow_index_path=follow)
    return InputPath(spec, make_consumer(settings, group_id=spec.group_id), StageProducer(settings))


def test_the_following_path_holds_what_the_index_path_was_assigned_and_released(kafka_settings: KafkaSettings) -> None:
    index, query = _path(kafka_settings, "m.ingest", follow=False), _path(kafka_settings, "m.search", follow=True)
    rebalance = Rebalance("index")
    rebalance.subscribe(index, query)
    try:
        assert query.mirrored == set() and index.mirrored is None
        rebalance._on_assign(index.consumer, [TopicPartition("m.ingest", 0), TopicPartition("m.ingest", 1)])
        assert query.assignment() == {("m.search", 0), ("m.search", 1)}
        assert query.assignment() == {(tp.topic, tp.partition) for tp in query.consumer.assignment()}
        rebalance._on_lost(index.consumer, [TopicPartition("m.ingest", 1)])
        assert query.assignment() == {("m.search", 0)}
        assert query.assignment() == {(tp.topic, tp.partition) for tp in query.consumer.assignment()}
        assert index.assignment() == {("m.ingest", 0)}  # not mirrored: librdkafka's own
    finally:
        for path in (index, query):
            path.consumer.close()
            path.producer.close()
