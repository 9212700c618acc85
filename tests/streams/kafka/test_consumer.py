"""``streams.kafka.consumer.latency_fetch_wait_ms`` against real brokers: a long poll where the broker answers
a fetch as soon as a record arrives, the short wait where every hop waits it out, and where nothing answers."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from streams.kafka import consumer as kafka_consumer
from streams.kafka.admin import ensure_topics
from streams.kafka.consumer import EMBEDDED_FETCH_WAIT_MS, LONG_POLL_FETCH_WAIT_MS, latency_fetch_wait_ms, make_consumer
from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from streams.local.brokers import BrokerKind, start_local_broker
from streams.wire.topics import TopicShape

pytestmark = pytest.mark.kafka


def test_the_session_broker_gets_the_wait_that_suits_it(kafka_settings: KafkaSettings, broker_kind: BrokerKind) -> None:
    expected = LONG_POLL_FETCH_WAIT_MS if broker_kind is BrokerKind.KAFKA else EMBEDDED_FETCH_WAIT_MS
    assert latency_fetch_wait_ms(kafka_settings) == expected


def test_the_embedded_broker_gets_the_short_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_ID", "a-kafka-habit")  # Tansu reads it unless given its id
    _, tansu = start_local_broker(BrokerKind.TANSU, tmp_path)
    try:
        assert latency_fetch_wait_ms(KafkaSettings(tansu.bootstrap_servers)) == EMBEDDED_FETCH_WAIT_MS
    finally:
        tansu.stop()


def test_a_broker_that_does_not_answer_gets_the_short_wait_and_is_asked_again_later() -> None:
    settings = KafkaSettings("127.0.0.1:1")
    assert latency_fetch_wait_ms(settings) == EMBEDDED_FETCH_WAIT_MS
    assert settings.bootstrap_servers not in kafka_consumer._latency_waits


def test_on_apache_kafka_a_long_poll_answers_as_soon_as_a_record_arrives(kafka_settings: KafkaSettings,
                                                                        broker_kind: BrokerKind) -> None:
    """Why the long wait costs no latency there: the fetch the consumer has waiting completes on the append.
    The embedded broker holds it for the whole wait (``shared/EMBEDDED_BROKER.md``): why it gets the short one.
    Both bounds are far from what either broker does (a record answers in milliseconds, or after the wait)."""
    topic = f"long-poll-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [TopicShape(topic, 1)])
    wait_ms = 30_000 if broker_kind is BrokerKind.KAFKA else 3_000
    consumer = make_consumer(kafka_settings, group_id=f"long-poll.{uuid.uuid4().hex[:8]}",
                             **{"fetch.wait.max.ms": wait_ms})
    producer = StageProducer(kafka_settings)
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.1)
        assert consumer.assignment(), "no assignment within 30 s"
        consumer.poll(0.5)  # the consumer's fetch is now waiting at the broker for up to wait_ms
        producer.produce(topic, value=b"now")
        producer.flush()
        sent = time.monotonic()
        message = consumer.poll(wait_ms / 1000 + 5)
        waited = time.monotonic() - sent
        assert message is not None and message.value() == b"now"
        if broker_kind is BrokerKind.KAFKA:
            assert waited < wait_ms / 2000, f"the record took {waited:.1f} s: the broker held the fetch"
        else:
            assert waited > wait_ms / 3000, f"the record took {waited:.1f} s: the broker no longer holds a fetch"
    finally:
        consumer.close()
        producer.close()
