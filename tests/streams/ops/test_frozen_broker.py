"""A broker that accepts connections and never answers (a frozen process, a network partition): the reads
that explain a missing reply and report status give up within their own timeouts, not librdkafka's minute.

The listener below is such a broker: the kernel completes each TCP handshake, nobody reads a byte."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient

from streams.exceptions import BrokerError
from streams.kafka.admin import delete_topics
from streams.kafka.settings import KafkaSettings
from streams.ops.status import PROBE_TIMEOUT_S, _committed, _members, why_no_reply
from streams.wire.topics import FlowTopics

LIBRDKAFKA_REQUEST_TIMEOUT_S = 60.0
"""``socket.timeout.ms``: what an admin request without its own timeout waits for an answer."""


@pytest.fixture
def silent_broker() -> Iterator[KafkaSettings]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield KafkaSettings(f"127.0.0.1:{listener.getsockname()[1]}")


def _seconds(call) -> tuple[float, BaseException | None]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - returned for the test to judge
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_why_no_reply_says_the_broker_is_unavailable_instead_of_waiting_a_minute_a_read(
        silent_broker: KafkaSettings) -> None:
    took, error = _seconds(lambda: why_no_reply(silent_broker, FlowTopics("frozen", 2), 2.0))
    assert isinstance(error, BrokerError) and "cannot reach Kafka" in str(error), error
    assert took < PROBE_TIMEOUT_S + 10 < LIBRDKAFKA_REQUEST_TIMEOUT_S


def test_group_reads_give_up_within_their_timeout(silent_broker: KafkaSettings) -> None:
    admin = AdminClient(silent_broker.base())
    took, error = _seconds(lambda: _committed(admin, "g", "t", 2, timeout=1.0))
    assert error is not None and took < 15, (took, error)  # refused or timed out, not a minute
    counted: list[int] = []
    took, error = _seconds(lambda: counted.append(_members(admin, "g", timeout=1.0)))
    assert error is None and counted == [0] and took < 15, (took, error)  # nothing said: no members


def test_deleting_a_reply_topic_on_a_frozen_broker_gives_up(silent_broker: KafkaSettings) -> None:
    took, error = _seconds(lambda: delete_topics(silent_broker, ["reply.gone"]))
    assert error is None and took < 30 < LIBRDKAFKA_REQUEST_TIMEOUT_S, (took, error)  # logged, not raised
