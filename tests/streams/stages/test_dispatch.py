"""One path, several topics: each record reaches its topic's handler, and a failure is answered by it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from streams.runtime.spec import Inbound, Output
from streams.stages.dispatch import ByTopic


class Echo:
    """Answers each record with one output naming itself, and on failure with its error."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[int] = []

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        self.seen += [r.offset for r in records]
        return [Output(self.name, str(r.offset).encode()) for r in records]

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return [Output(self.name, str(error).encode())]

    def tick(self) -> list[Output]:
        return [Output(self.name, b"tick")]


def record(topic: str, offset: int) -> Inbound:
    return Inbound(topic, 0, offset, None, b"x", {})


def test_records_go_to_their_topics_handler_in_order_and_the_first_topics_outputs_come_first() -> None:
    fanout, join = Echo("fanout"), Echo("join")
    handler = ByTopic({"f.query": fanout, "f.partials": join})
    outputs = handler.process([record("f.partials", 1), record("f.query", 2), record("f.partials", 3),
                               record("f.query", 4)])
    assert (fanout.seen, join.seen) == ([2, 4], [1, 3])
    assert [(o.topic, o.value) for o in outputs] == [("fanout", b"2"), ("fanout", b"4"), ("join", b"1"),
                                                      ("join", b"3")]
    assert [o.topic for o in handler.tick()] == ["fanout", "join"]


def test_a_failed_record_is_answered_by_its_topics_handler() -> None:
    handler = ByTopic({"f.query": Echo("fanout"), "f.partials": Echo("join")})
    assert handler.on_failure(record("f.partials", 9), ValueError("bad")) == [Output("join", b"bad")]


def test_a_record_of_another_topic_is_refused() -> None:
    with pytest.raises(ValueError, match="'f.ingest' on a path reading f.query"):
        ByTopic({"f.query": Echo("fanout")}).process([record("f.ingest", 0)])
