"""What a producer is configured with, and how its faults are sorted (no broker: librdkafka reads its
settings at construction)."""

import gc
import threading
import time
import weakref

import pytest
from confluent_kafka import KafkaError, Message

from streams.client.client import Client
from streams.exceptions import DeliveryError
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


def test_records_waiting_for_their_delivery_reports_hold_no_object_the_collector_tracks() -> None:
    """A pending record holds its report handler: a closure per record was four tracked objects, tens of thousands
    at once in a client ingesting in bulk, whose full collections (up to 146 ms) its queries waited through."""
    producer = StageProducer(SETTINGS)  # nothing listens there: every record stays pending
    reports = producer.report(lambda err, msg: None)
    producer.produce("t", value=b"x")  # connects (the client's own objects)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(2_000):
        producer.produce("t", value=b"x", key=str(i), on_delivery=reports if i % 2 else None)
    gc.collect()
    assert len(gc.get_objects()) - before < 500  # what else the client logs meanwhile; a closure each: 8,000
    producer.recreate()


@pytest.mark.parametrize("best_effort", [False, True])
def test_one_report_serves_many_records_and_their_failures_are_raised_at_flush(best_effort: bool) -> None:
    producer = StageProducer(SETTINGS, **{"message.timeout.ms": 200})
    told: list[tuple[int, bytes | None]] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        told.append((err.code() if err is not None else 0, msg.key()))

    reports = producer.report(delivered, best_effort=best_effort)
    for key in (b"a", b"b", b"c"):
        producer.produce("t", value=b"x", key=key, on_delivery=reports)
    producer.produce("t", value=b"x", key=b"plain")  # no callback: its failure is noted too
    with pytest.raises(DeliveryError) as raised:
        producer.flush(timeout=10)
    assert sorted(told) == [(KafkaError._MSG_TIMED_OUT, key) for key in (b"a", b"b", b"c")]
    failed = sorted(failure.key for failure in raised.value.failures)
    assert failed == ([b"plain"] if best_effort else [b"a", b"b", b"c", b"plain"])


def test_a_report_is_its_own_producers_and_a_dropped_producer_is_freed_at_once() -> None:
    """A report holds its producer's failures, not the producer: no cycle keeps a producer dropped unclosed (and
    its librdkafka client) until a full collection."""
    producer, other = StageProducer(SETTINGS), StageProducer(SETTINGS)
    with pytest.raises(ValueError, match="this producer's own"):
        producer.produce("t", value=b"x", on_delivery=other.report())
    with pytest.raises(ValueError, match="best_effort"):
        producer.produce("t", value=b"x", on_delivery=producer.report(), best_effort=True)
    dropped = weakref.ref(other)
    del other
    assert dropped() is None


def test_concurrent_first_records_make_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP bridge's thread pool may send a fresh client's first writes side by side: each thread made a
    client, and the one dropped took its queued records with it. A client that takes a while to make (as a
    transactional one does, ``init_transactions`` waiting on the network without the GIL) widens the window."""

    def slow_client(config: dict[str, object]) -> object:
        time.sleep(0.05)
        return object()

    monkeypatch.setattr("streams.kafka.producer.Producer", slow_client)
    producer = StageProducer(SETTINGS)
    start = threading.Barrier(8)
    made: list[object] = []

    def first_use() -> None:
        start.wait()
        made.append(producer.raw)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 8 and len({id(client) for client in made}) == 1
