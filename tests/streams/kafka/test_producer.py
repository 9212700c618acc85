"""What a producer is configured with (no broker: librdkafka reads its settings at construction)."""

from streams.client.client import Client
from streams.kafka.producer import BATCH_LINGER_MS, StageProducer
from streams.kafka.settings import KafkaSettings

SETTINGS = KafkaSettings("127.0.0.1:1")


def test_a_producer_that_flushes_lingers_and_one_that_never_flushes_does_not() -> None:
    assert StageProducer(SETTINGS)._config["linger.ms"] == BATCH_LINGER_MS > 0
    assert StageProducer(SETTINGS, linger_ms=0)._config["linger.ms"] == 0


def test_the_clients_searches_leave_at_once_and_its_writes_gather() -> None:
    client = Client("flow", settings=SETTINGS)
    assert client._searches._config["linger.ms"] == 0  # never flushed: a lingering search waits linger.ms
    assert client._producer._config["linger.ms"] == BATCH_LINGER_MS  # each index() ends with a flush
