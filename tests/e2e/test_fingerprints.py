"""Records whose ``ss-schema`` header names another schema are refused where a client and an operator
read them, on Apache Kafka: a reply on a client's reply topic, the serving record on ``<flow>.versions``.
Before, these two readers ignored the header and took any bytes that parsed for their record."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import TopicPartition

from streams.client import Client
from streams.exceptions import SerdeError
from streams.kafka.admin import ensure_topics
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.consumer import consume_batch, make_consumer
from streams.ops.versions import SERVING_KEY, read_serving
from streams.wire import headers as h
from streams.wire.codec import SEARCH_REPLY, SERVING_VERSION
from streams.wire.records import SearchReply, ServingVersion
from streams.wire.topics import FlowTopics

pytestmark = pytest.mark.kafka

FOREIGN = (h.SCHEMA, b"123456789")
"""The fingerprint of no schema this release reads (a newer release's, a forger's)."""


@pytest.fixture
def topics(kafka_settings: KafkaSettings) -> FlowTopics:
    """The topics of a flow nobody runs: the test plays its stages."""
    topics = FlowTopics(f"fp-{uuid.uuid4().hex[:8]}", 1)
    ensure_topics(kafka_settings, topics.shapes())
    return topics


def _produce(settings: KafkaSettings, topic: str, key: bytes, value: bytes, headers: tuple[h.Header, ...]) -> None:
    producer = StageProducer(settings)
    try:
        producer.produce(topic, key=key, value=value, headers=headers)
        producer.flush(30)
    finally:
        producer.close()


def _request_id(settings: KafkaSettings, topic: str) -> str:
    """The id of the one search request on ``topic``."""
    consumer = make_consumer(settings, group_id=f"{topic}.reader")
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        for _ in range(300):
            for msg in consume_batch(consumer, max_records=10, timeout=0.1):
                if msg.error() is None:
                    return msg.key().decode()
    finally:
        consumer.close()
    raise AssertionError(f"no request on {topic}")


def test_a_reply_with_a_foreign_fingerprint_does_not_answer_a_search(kafka_settings: KafkaSettings,
                                                                     topics: FlowTopics) -> None:
    with Client(topics.flow, settings=kafka_settings, timeout_s=60) as client:
        future = client.search_async("which reply counts?")
        request_id = _request_id(kafka_settings, topics.query)
        forged = SearchReply(request_id, [], False, [], [], [], warnings=["forged"])
        _produce(kafka_settings, client.reply_topic, request_id.encode(), SEARCH_REPLY.encode_record(forged)[0], (FOREIGN,))
        genuine = SearchReply(request_id, [], False, [], [], [], warnings=["genuine"])
        _produce(kafka_settings, client.reply_topic, request_id.encode(), *SEARCH_REPLY.encode_record(genuine))
        # One partition: the forged reply was read before the genuine one.
        assert future.result(timeout=60).warnings == ["genuine"]


def test_a_serving_record_with_a_foreign_fingerprint_is_refused(kafka_settings: KafkaSettings,
                                                                topics: FlowTopics) -> None:
    value, _ = SERVING_VERSION.encode_record(ServingVersion(7, 1, 1, "forged"))
    _produce(kafka_settings, topics.versions, SERVING_KEY, value, (FOREIGN,))
    with pytest.raises(SerdeError, match="record written with schema 123456789, expected streamsearch.ServingVersion"):
        read_serving(kafka_settings, topics.flow)
    with Client(topics.flow, settings=kafka_settings, timeout_s=60) as client:
        client.search_async("q")  # starts following <flow>.versions; returns once it was read to its end
        assert client.topics.version == 1  # not moved to the version the forged record names
