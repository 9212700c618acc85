"""The crash-loop breaker: a record that kills the stage process (abort, segfault) is dead-lettered
after it has crashed the stage a few times, with the signal; nothing else is skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from streams.client.dead_letters import read_dead_letters
from streams.kafka.admin import ensure_topics
from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from streams.runtime.inflight import InFlightLog
from streams.wire.topics import FlowTopics, TopicShape
from tests.fixtures import read_all

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[3]

# A stage whose processor kills the process on two markers: what a native library's crash looks like.
STAGE = """
import os, sys, time, ctypes
from pathlib import Path
from confluent_kafka import TopicPartition
from streams.kafka.settings import KafkaSettings
from streams.runtime.loop import StageLoop
from streams.runtime.spec import Output, PathSpec, StageSpec

bootstrap, name, inflight = sys.argv[1:4]

class Crashy:
    def process(self, records):
        for r in records:
            if r.value == b"abort":
                os.abort()
            if r.value == b"segv":
                ctypes.string_at(0)
        return [Output(name + ".out", value=r.value, key=r.key, partition=0) for r in records]
    def on_failure(self, record, error):
        return []
    def tick(self):
        return []

spec = StageSpec(flow=name, name="crashy", dead_letter_topic=name + ".dead-letter",
                 index_path=PathSpec(name + ".in", name + ".stage", Crashy(), batch_size=10),
                 inflight_dir=Path(inflight),
                 # A short session: each restart waits for the dead member's session to expire.
                 consumer_overrides={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
loop = StageLoop(spec, KafkaSettings(bootstrap))
loop._start()
source = TopicPartition(name + ".in", 0)
deadline = time.monotonic() + 60
try:
    while time.monotonic() < deadline:  # until this process has consumed to the end of its input
        loop.step()
        low, high = loop._index.consumer.get_watermark_offsets(source, timeout=5, cached=False)
        if loop._index.consumer.position([source])[0].offset >= high:
            break
    else:
        sys.exit("not at the end of the input after 60 s")
finally:
    loop._close()
"""


def test_records_that_kill_the_stage_are_dead_lettered_with_their_signal_and_nothing_else_is_lost(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    name = f"crash{uuid.uuid4().hex[:6]}"
    topics = FlowTopics(name, 1)
    ensure_topics(kafka_settings, [TopicShape(f"{name}.in", 1), TopicShape(f"{name}.out", 1),
                                   TopicShape(topics.dead_letter, 1)])
    producer = StageProducer(kafka_settings)
    values = ["a", "abort", "b", "segv", "c"]
    for value in values:
        producer.produce(f"{name}.in", value=value.encode(), key=f"key-{value}", partition=0)
    producer.flush()

    exits = []
    for _ in range(12):  # the test is the supervisor: restart the stage until it exits cleanly
        run = subprocess.run([sys.executable, "-c", STAGE, kafka_settings.bootstrap_servers, name, str(tmp_path)],
                             check=False, capture_output=True, text=True, timeout=180, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        exits.append(run.returncode)
        if run.returncode == 0:
            break
        assert run.returncode in (-signal.SIGABRT, -signal.SIGSEGV), run.stderr[-2000:]
    assert exits[-1] == 0, exits
    # abort: crash, crash (batch), crash (alone) -> dead letter; then the same for segv.
    assert exits.count(-signal.SIGABRT) == 3 and exits.count(-signal.SIGSEGV) == 3, exits

    letters = read_dead_letters(kafka_settings, topics)
    assert [(letter.key, letter.source_offset) for letter in letters] == [(b"key-abort", 1), (b"key-segv", 3)]
    assert letters[0].error_class == "CrashLoopError"
    assert letters[0].message == "crashed the stage 3 times (Aborted)", letters[0].message
    assert letters[1].message == "crashed the stage 3 times (Segmentation fault)", letters[1].message
    delivered = [m.value() for m in read_all(kafka_settings, f"{name}.out", 1)]
    assert sorted(set(delivered)) == [b"a", b"b", b"c"]  # nothing else skipped (a replayed output may repeat)
    notes = {path.name: path.read_bytes() for path in tmp_path.glob("*.json")}
    assert not any(note.strip() for note in notes.values()), f"no note is left once the input is through: {notes}"


def test_an_exception_of_the_process_itself_is_not_counted_as_a_crash(tmp_path: Path) -> None:
    """A stage that stops on its own exception (a broker outage) drops its notes: its records are
    not suspected of killing it."""

    class Record:
        def __init__(self, offset: int) -> None:
            self.topic, self.partition, self.offset = "t", 0, offset

    log = InFlightLog(tmp_path, "g")
    log.begin([Record(5), Record(6)])
    log.abandon()
    assert not list(tmp_path.glob("*.json"))
    # A note left by a dead process (another pid) over the same offsets counts as a crash.
    (tmp_path / "g__t__0.json").write_text('{"first": 5, "last": 5, "crashes": 1, "pid": 1}')
    verdict = log.begin([Record(5), Record(6)])
    assert verdict.poisoned == {("t", 0, 5): "crashed the stage 2 times (no fault report: killed, e.g. SIGKILL or "
                                            "out of memory)"}
    assert not verdict.isolate
