"""The loop keeps what its rebalance callbacks assign (``InputPath.assigned``): the index path's partitions and
their mirror on the query path that follows it, read by every query batch's gather and the restore watch instead
of asking librdkafka."""

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


def test_the_paths_hold_what_the_index_path_was_assigned_and_released_as_librdkafka_does(kafka_settings: KafkaSettings) -> None:
    index, query = _path(kafka_settings, "m.ingest", follow=False), _path(kafka_settings, "m.search", follow=True)
    rebalance = Rebalance("index")
    rebalance.subscribe(index, query)
    try:
        assert query.assigned == index.assigned == set()
        rebalance._on_assign(index.consumer, [TopicPartition("m.ingest", 0), TopicPartition("m.ingest", 1)])
        assert query.assignment() == {("m.search", 0), ("m.search", 1)}
        assert query.assignment() == {(tp.topic, tp.partition) for tp in query.consumer.assignment()}
        rebalance._on_lost(index.consumer, [TopicPartition("m.ingest", 1)])
        assert query.assignment() == {("m.search", 0)}
        assert query.assignment() == {(tp.topic, tp.partition) for tp in query.consumer.assignment()}
        assert index.assignment() == {("m.ingest", 0)}
        assert index.assignment() == {(tp.topic, tp.partition) for tp in index.consumer.assignment()}
    finally:
        for path in (index, query):
            path.consumer.close()
            path.producer.close()


def test_a_path_of_several_topics_is_left_to_librdkafka(kafka_settings: KafkaSettings) -> None:
    spec = PathSpec("m.partials", f"mirror-test.{uuid.uuid4().hex[:8]}", NoOutputs(), also_reads=("m.query",))
    path = InputPath(spec, make_consumer(kafka_settings, group_id=spec.group_id), StageProducer(kafka_settings))
    try:
        path.keep_assignment()
        path.consumer.assign([TopicPartition("m.partials", 0), TopicPartition("m.query", 0)])
        path.took([0])  # partition numbers alone cannot say which topic
        assert path.assigned is None
        assert path.assignment() == {("m.partials", 0), ("m.query", 0)}
    finally:
        path.consumer.close()
        path.producer.close()
