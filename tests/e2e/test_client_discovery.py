"""The README's client snippet in the obvious setup: right after `streamsearch run` in the same
directory, ``Client("hello")`` finds the local broker as the CLI does, and fails fast otherwise."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from processors.document import Document
from streams.client import Client
from streams.exceptions import BrokerError
from streams.local.brokers import LocalBroker
from streams.local.runtime import BOOTSTRAP_FILE

pytestmark = pytest.mark.kafka


def test_the_client_finds_the_broker_a_run_in_this_directory_started(broker: LocalBroker, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.chdir(tmp_path)
    BOOTSTRAP_FILE.parent.mkdir(parents=True)
    BOOTSTRAP_FILE.write_text(broker.bootstrap_servers + "\n")
    with Client("hello") as client:
        assert client.settings.bootstrap_servers == broker.bootstrap_servers


def test_without_a_broker_the_client_fails_at_once_with_one_clear_error(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BrokerError, match="no broker: set KAFKA_BOOTSTRAP_SERVERS or start a flow"):
        Client("hello")
    BOOTSTRAP_FILE.parent.mkdir(parents=True)
    BOOTSTRAP_FILE.write_text("127.0.0.1:1")  # a run that is gone
    started = time.monotonic()
    with pytest.raises(BrokerError, match="cannot reach Kafka at 127.0.0.1:1"):
        with Client("hello") as client:
            client.index([Document(id="d", text="Some text.")])
    with pytest.raises(BrokerError, match="cannot reach Kafka at 127.0.0.1:1"):
        with Client("hello") as client:
            client.search("some text")
    assert time.monotonic() - started < 30  # two calls, each within 10 s: not a 30 s delivery timeout each
