"""Two namespaces of settings: ``STREAMSEARCH_KAFKA_*`` is librdkafka pass-through and nothing else; the
product's own settings live elsewhere (``STREAMSEARCH_LOCAL_KAFKA_*`` for the local broker). A setting
librdkafka does not take is named, with where it came from, in one line that does not blame the network."""

import subprocess
import sys
from pathlib import Path

import pytest

from streams.exceptions import KafkaConfigError
from streams.kafka.settings import LIBRDKAFKA_LOGGER, KafkaSettings
from streams.local.apache_kafka import kafka_libs_dir
from streams.local.brokers import LocalBroker


class TestPassThrough:
    def test_librdkafka_settings_pass_with_dots(self) -> None:
        settings = KafkaSettings.from_env({"linger.ms": 5}, environ={
            "KAFKA_BOOTSTRAP_SERVERS": "h:9092", "STREAMSEARCH_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "STREAMSEARCH_KAFKA_CLIENT_ID": "app", "STREAMSEARCH_LOG_LEVEL": "DEBUG"})
        base = settings.base()
        assert (base.pop("logger"), callable(base.pop("error_cb"))) == (LIBRDKAFKA_LOGGER, True)  # ours: not librdkafka's
        assert base == {"bootstrap.servers": "h:9092", "linger.ms": 5, "security.protocol": "PLAINTEXT", "client.id": "app"}

    def test_settings_valid_only_together_pass(self) -> None:
        KafkaSettings.from_env(environ={"STREAMSEARCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                        "STREAMSEARCH_KAFKA_SASL_MECHANISM": "PLAIN",
                                        "STREAMSEARCH_KAFKA_SASL_USERNAME": "u", "STREAMSEARCH_KAFKA_SASL_PASSWORD": "p"})

    @pytest.mark.parametrize("old, new", [("STREAMSEARCH_KAFKA_LIBS", "STREAMSEARCH_LOCAL_KAFKA_LIBS"),
                                          ("STREAMSEARCH_KAFKA_HEAP", "STREAMSEARCH_LOCAL_KAFKA_HEAP")])
    def test_the_old_local_broker_names_are_refused_naming_the_new_one(self, old: str, new: str) -> None:
        with pytest.raises(KafkaConfigError) as caught:
            KafkaSettings.from_env(environ={old: "/somewhere"})
        message = str(caught.value)
        assert message.startswith(f"{old}: No such configuration property")
        assert new in message and "passed to librdkafka" in message

    def test_an_unknown_property_names_its_variable(self) -> None:
        with pytest.raises(KafkaConfigError, match=r"^STREAMSEARCH_KAFKA_LINGER_MSX: No such configuration property"):
            KafkaSettings.from_env(environ={"STREAMSEARCH_KAFKA_LINGER_MSX": "5"})

    def test_an_invalid_value_names_its_variable(self) -> None:
        with pytest.raises(KafkaConfigError, match=r"^STREAMSEARCH_KAFKA_ACKS: Invalid value"):
            KafkaSettings.from_env(environ={"STREAMSEARCH_KAFKA_ACKS": "maybe"})

    def test_a_flow_kafka_key_is_named_as_such(self) -> None:
        with pytest.raises(KafkaConfigError, match=r"^the flow's kafka: fetch.wait.max.msec: No such configuration"):
            KafkaSettings.from_env({"fetch.wait.max.msec": 5}, environ={})


def test_the_local_broker_reads_its_own_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSEARCH_LOCAL_KAFKA_LIBS", str(tmp_path / "jars"))
    assert kafka_libs_dir() == tmp_path / "jars"
    monkeypatch.setenv("STREAMSEARCH_KAFKA_LIBS", str(tmp_path / "old"))  # no longer read by the broker
    assert kafka_libs_dir() == tmp_path / "jars"


def _cli(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env})


@pytest.mark.kafka
def test_every_command_takes_the_local_broker_settings_and_names_a_bad_one(broker: LocalBroker, tmp_path: Path) -> None:
    """The README's ``STREAMSEARCH_LOCAL_KAFKA_LIBS`` leaves commands working (they reach the broker and
    say the flow is unknown); the old name fails every command in one line naming it, not the network."""
    (tmp_path / "docs.jsonl").write_text('{"id": "d", "text": "some text"}\n')
    commands = (["status", "--flow", "nosuch"], ["index", "docs.jsonl", "--flow", "nosuch"],
                ["search", "hello", "--flow", "nosuch"], ["dead-letters", "--flow", "nosuch"])
    good = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "STREAMSEARCH_LOCAL_KAFKA_LIBS": str(kafka_libs_dir()),
            "STREAMSEARCH_LOCAL_KAFKA_HEAP": "-Xmx256m"}
    for command in commands:
        result = _cli(tmp_path, *command, env=good)
        assert result.returncode == 1 and result.stderr.startswith("streamsearch: error: no flow 'nosuch'"), \
            (command, result.stderr)
    bad = {**good, "STREAMSEARCH_KAFKA_LIBS": str(kafka_libs_dir())}
    for command in commands:
        result = _cli(tmp_path, *command, env=bad)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, (command, result.stderr)
        assert lines[0].startswith('streamsearch: error: STREAMSEARCH_KAFKA_LIBS: No such configuration property: "libs"')
        assert "cannot reach" not in lines[0] and "STREAMSEARCH_LOCAL_KAFKA_LIBS" in lines[0]
