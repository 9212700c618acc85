"""The local broker choice: ``--broker kafka|tansu|auto`` and what ``auto`` takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.exceptions import BrokerError
from streams.local import apache_kafka
from streams.local.apache_kafka import KafkaNode, install_kafka, kafka_available, kafka_libs_dir
from streams.local.brokers import BrokerKind, resolve_kind


def test_auto_takes_apache_kafka_when_java_and_the_jars_are_there() -> None:
    install_kafka()  # what make install did
    assert kafka_available()
    assert resolve_kind("auto") is BrokerKind.KAFKA


def test_auto_falls_back_to_tansu_without_the_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSEARCH_LOCAL_KAFKA_LIBS", str(tmp_path / "empty"))
    assert kafka_libs_dir() == tmp_path / "empty"
    assert not kafka_available()
    assert resolve_kind("auto") is BrokerKind.TANSU
    assert resolve_kind("kafka") is BrokerKind.KAFKA  # asked for explicitly: no silent fallback
    with pytest.raises(BrokerError, match="not installed"):
        KafkaNode(tmp_path / "node").prepare(cluster_id="x")


def test_auto_falls_back_to_tansu_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apache_kafka, "java_version", lambda: None)
    assert resolve_kind("auto") is BrokerKind.TANSU
    monkeypatch.setattr(apache_kafka, "java_version", lambda: 11)
    assert resolve_kind("auto") is BrokerKind.TANSU


def test_the_labels_say_what_survives_a_stop() -> None:
    assert "nothing survives a stop" in BrokerKind.TANSU.label
    assert BrokerKind.KAFKA.label.startswith("Apache Kafka ")
