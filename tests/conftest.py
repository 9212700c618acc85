"""Session-wide fixtures: the broker is started here, never skipped for.

``STREAMSEARCH_TEST_BROKER=kafka`` (the default) runs the suite on Apache Kafka (KRaft, one node,
from the jars ``make install`` resolves); ``tansu`` on the memory-only broker of the local default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from streams.kafka.settings import KafkaSettings
from streams.local.brokers import BrokerKind, LocalBroker, start_local_broker

pytest_plugins = ["tests.e2e.fixtures"]

TEST_BROKER = BrokerKind(os.environ.get("STREAMSEARCH_TEST_BROKER", BrokerKind.KAFKA.value))
if TEST_BROKER is BrokerKind.AUTO:
    raise pytest.UsageError("STREAMSEARCH_TEST_BROKER must be kafka or tansu, not auto: a run must say what it tested")


def pytest_report_header() -> str:
    return f"broker: {TEST_BROKER.value} (STREAMSEARCH_TEST_BROKER)"


@pytest.fixture(scope="session")
def broker_kind() -> BrokerKind:
    return TEST_BROKER


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The session's broker; KAFKA_BOOTSTRAP_SERVERS points at it so that every LocalRuntime the
    tests start uses it instead of starting its own."""
    if TEST_BROKER is BrokerKind.KAFKA:
        from streams.local.apache_kafka import install_kafka

        install_kafka()  # a no-op after `make install`; never a skip
    _, running = start_local_broker(TEST_BROKER, Path(tmp_path_factory.mktemp("session-broker")))
    previous = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = running.bootstrap_servers
    try:
        yield running
    finally:
        running.stop()
        if previous is None:
            os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        else:
            os.environ["KAFKA_BOOTSTRAP_SERVERS"] = previous


@pytest.fixture(scope="session")
def kafka_settings(broker: LocalBroker) -> KafkaSettings:
    return KafkaSettings(broker.bootstrap_servers)
