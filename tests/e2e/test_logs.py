"""Logs people can read: a repeated line is said once in a while with how often (``RepeatLimit``),
and librdkafka's lines go through logging, never raw ``%3|...`` lines on stderr (issue 21)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from streams.kafka.admin import ensure_topics
from streams.flow.parse import load_flow
from streams.kafka.settings import LIBRDKAFKA_LOGGER, KafkaSettings
from streams.local.apache_kafka import install_kafka
from streams.local.brokers import BrokerKind, start_local_broker
from streams.local.supervisor import LocalFlow
from streams.logs import RepeatLimit
from tests.e2e.fixtures import RAW_LIBRDKAFKA_LINE, sentence_flow_yaml


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(message: str, level: int = logging.ERROR, name: str = "librdkafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 0, message, (), None)


REFUSED = "FAIL [rdkafka#consumer-{}] [thrd:127.0.0.1:9092/bootstrap]: Connect to ipv4#127.0.0.1:9092 failed: " \
          "Connection refused (after {}ms in state CONNECT)"


def test_a_storm_of_one_kind_is_one_line_per_interval_with_the_count_it_stands_for() -> None:
    clock = Clock()
    limit = RepeatLimit(10.0, clock=clock)
    shown = []
    for tick in range(400):  # 40 a second for 10 s, from two clients, after 0..3 ms
        clock.now = tick / 40
        line = record(REFUSED.format(tick % 2 + 1, tick % 4))
        if limit.filter(line):
            shown.append((clock.now, getattr(line, "suppressed", 0)))
    clock.now = 10.0
    last = record(REFUSED.format(9, 0))
    assert limit.filter(last) and last.suppressed == 399
    assert shown == [(0.0, 0)]


def test_other_kinds_and_levels_pass_while_one_kind_is_held_back() -> None:
    clock = Clock()
    limit = RepeatLimit(10.0, clock=clock)
    assert limit.filter(record(REFUSED.format(1, 0)))
    assert not limit.filter(record(REFUSED.format(2, 0)))
    assert limit.filter(record("GETPID [rdkafka#producer-1] Failed to acquire idempotence PID", logging.WARNING))
    assert limit.filter(record(REFUSED.format(1, 0), logging.WARNING))  # another level: another kind
    assert limit.filter(record(REFUSED.format(1, 0), name="streams.runtime.loop"))  # another logger: another kind


def test_kinds_remembered_are_bounded() -> None:
    clock = Clock()
    limit = RepeatLimit(10.0, kinds=2, clock=clock)
    for text in ("a", "b", "c"):
        assert limit.filter(record(text))
    assert limit.filter(record("a"))  # forgotten, the oldest: shown again
    assert not limit.filter(record("c"))


class Counter(logging.Filter):
    """Counts what librdkafka hands to the logger, before any filter decides."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.refused += "Connection refused" in record.getMessage()
        return True


def test_librdkafka_lines_reach_the_logs_once_not_stderr_raw(capfd: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A client of an address where nothing listens retries every 10 ms: librdkafka's FAIL lines and
    its _TRANSPORT errors (error_cb) come through logging, one of each kind, never on stderr."""
    counter = Counter()
    LIBRDKAFKA_LOGGER.filters.insert(0, counter)
    producer = Producer({**KafkaSettings("127.0.0.1:1").base(), "reconnect.backoff.ms": 10,
                         "reconnect.backoff.max.ms": 10})
    try:
        producer.produce("anything", b"x")  # wants metadata: connects, and is refused
        deadline = time.monotonic() + 30
        while counter.refused < 20:
            assert time.monotonic() < deadline, counter.refused
            producer.poll(0.1)
    finally:
        LIBRDKAFKA_LOGGER.removeFilter(counter)
        producer.purge()
        producer.flush(0)
    refused = [r for r in caplog.records if r.name == "librdkafka" and "Connection refused" in r.getMessage()]
    assert sorted(r.levelname for r in refused) == ["ERROR", "WARNING"], refused  # %3|FAIL, then error_cb's
    assert [getattr(r, "code", None) for r in refused if r.levelname == "WARNING"] == ["_TRANSPORT"]
    assert not [line for line in capfd.readouterr().err.splitlines() if RAW_LIBRDKAFKA_LINE.match(line)]


@pytest.mark.kafka
def test_a_stage_whose_broker_is_gone_says_so_once_in_a_while(tmp_path: Path) -> None:
    """Issue 21: after the broker a joined run used stopped, its stage logs took ~40 raw
    connection-refused lines a second. Now they are structured lines, each kind held back for
    10 s and then shown once with the count of those it stands for."""
    install_kafka()  # a no-op after `make install`; never a skip
    _, broker = start_local_broker(BrokerKind.KAFKA, tmp_path / "kafka")
    try:
        path = tmp_path / "flow.yml"
        path.write_text(sentence_flow_yaml().replace("{name}", "gone") + f"state_dir: {tmp_path / 'state'}\n")
        flow = load_flow(path)
        ensure_topics(KafkaSettings(broker.bootstrap_servers), flow.topics.shapes(), topic_settings=flow.topic_settings,
                      max_payload_bytes=flow.max_payload_bytes)
        with LocalFlow(flow, flow_path=path, bootstrap_servers=broker.bootstrap_servers, stages=["segment"]) as stages:
            log = stages.log_path("segment")
            wait_for_line(log, "partitions assigned")
            broker.stop()
            wait_for_line(log, "suppressed=")
    finally:
        broker.stop()
    lines = log.read_text().splitlines()
    assert not [line for line in lines if RAW_LIBRDKAFKA_LINE.match(line)], lines[-20:]
    refused = [line for line in lines if "Connection refused" in line]
    assert refused and all(" librdkafka: " in line for line in refused), refused


def wait_for_line(log: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text()):
        assert time.monotonic() < deadline, f"no {text!r} in {log}:\n{log.read_text()[-3000:] if log.exists() else ''}"
        time.sleep(0.2)
