"""A stage whose consumer lost its partitions and never got them back exits to be restarted.

A consumer stuck outside its group cannot be produced on demand by a broker (it took a session
timeout during a coordinator restart, on Apache Kafka), so the consumer here is a recording fake."""

from __future__ import annotations

import pytest

from streams.exceptions import GroupMembershipLost
from streams.kafka.settings import KafkaSettings
from streams.runtime.loop import StageLoop
from streams.runtime.paths import InputPath as _Path
from streams.runtime.spec import PathSpec, StageSpec
from tests.streams.runtime.handlers import NoOutputs


class _Consumer:
    def __init__(self) -> None:
        self.partitions: list[int] = []

    def assignment(self) -> list[int]:
        return self.partitions


def _loop(consumer: _Consumer) -> StageLoop:
    spec = StageSpec(flow="f", name="segment", dead_letter_topic="f.dead-letter",
                     index_path=PathSpec("f.ingest", "f.segment", NoOutputs()))
    loop = StageLoop(spec, KafkaSettings("127.0.0.1:1"))
    loop._index = _Path(spec.index_path, consumer, loop.producer)  # type: ignore[arg-type]
    return loop


def test_a_consumer_that_lost_its_partitions_for_good_stops_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = _Consumer()
    loop = _loop(consumer)
    clock = [1000.0]
    monkeypatch.setattr("streams.runtime.loop.time.monotonic", lambda: clock[0])
    loop._watch_membership()  # never had partitions: an idle extra replica, left alone
    clock[0] += 1000
    loop._watch_membership()
    consumer.partitions = [0, 1]
    loop._watch_membership()
    consumer.partitions = []  # lost them (a session timeout)
    loop._watch_membership()
    clock[0] += StageLoop.ORPHANED_AFTER_S - 1
    loop._watch_membership()  # a rebalance may take a while: not yet
    consumer.partitions = [1]  # back: the clock restarts
    loop._watch_membership()
    consumer.partitions = []
    loop._watch_membership()
    clock[0] += StageLoop.ORPHANED_AFTER_S + 1
    with pytest.raises(GroupMembershipLost, match="f.ingest .group f.segment. has had no partitions for 61s"):
        loop._watch_membership()
