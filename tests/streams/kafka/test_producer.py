"""What a producer is configured with, and how its faults are sorted (no broker: librdkafka reads its
settings at construction)."""

from confluent_kafka import KafkaError

from streams.client.client import Client
from streams.kafka.producer import BATCH_LINGER_MS, StageProducer, producer_failed
from streams.kafka.settings import KafkaSettings

SETTINGS = KafkaSettings("127.0.0.1:1")


def test_a_producer_that_flushes_lingers_and_one_that_never_flushes_does_not() -> None:
    assert StageProducer(SETTINGS)._config["linger.ms"] == BATCH_LINGER_MS > 0
    assert StageProducer(SETTINGS, linger_ms=0)._config["linger.ms"] == 0


def test_the_clients_searches_leave_at_once_and_its_writes_gather() -> None:
    client = Client("flow", settings=SETTINGS)
    assert client._searches._config["linger.ms"] == 0  # never flushed: a lingering search waits linger.ms
    assert client._producer._config["linger.ms"] == BATCH_LINGER_MS  # each index() ends with a flush


def test_a_producer_fault_is_told_apart_from_a_records() -> None:
    """Fatal, or a transaction to abort: the producer is recovered. Anything else is the record's."""
    assert producer_failed(KafkaError(KafkaError._FENCED, fatal=True))
    assert producer_failed(KafkaError(KafkaError._FATAL))  # what produce() says of a fatally failed producer
    assert producer_failed(KafkaError(KafkaError._STATE))  # a transaction in an abortable state
    assert producer_failed(KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, txn_requires_abort=True))
    assert not producer_failed(KafkaError(KafkaError._UNKNOWN_PARTITION))
    assert not producer_failed(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))


def test_a_recreated_producer_is_a_fresh_client_with_nothing_pending() -> None:
    producer = StageProducer(SETTINGS)
    producer.produce("t", value=b"x")
    first = producer.raw
    producer.recreate()
    assert not producer.pending and producer.raw is not first
