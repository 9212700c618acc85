"""Session-wide fixtures: the embedded broker is started here, never skipped for."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from streams.broker import EmbeddedBroker
from streams.kafka import KafkaSettings

pytest_plugins = ["tests.streams.fixtures"]


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker for the whole session; KAFKA_BOOTSTRAP_SERVERS points at it so that
    every LocalRuntime the tests start uses it instead of starting its own."""
    with EmbeddedBroker() as running:
        previous = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = running.bootstrap_servers
        yield running
        if previous is None:
            os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        else:
            os.environ["KAFKA_BOOTSTRAP_SERVERS"] = previous


@pytest.fixture(scope="session")
def kafka_settings(broker: EmbeddedBroker) -> KafkaSettings:
    return KafkaSettings(broker.bootstrap_servers)
