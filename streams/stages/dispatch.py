"""One input path serving several topics: each record goes to the handler of its topic.

A flow without a model has no encode stage to fan its queries out, and a process of its own for
that would be a hop and a consumer that do nothing else: the join stage's consumer subscribes to
``<flow>.query`` beside ``<flow>.partials`` (``PathSpec.also_reads``) and this handler sends each
record to the fan-out or the fan-in. Kafka Streams' sub-topologies sharing one consumer are the idea.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from streams.runtime.spec import Inbound, Output, PathHandler

__all__ = ["ByTopic"]


class ByTopic(PathHandler):
    """Dispatches a batch's records by topic, order kept within a topic; outputs of the first topic's
    handler come first (the fan-out before the fan-in: a request's opening part before its shards')."""

    def __init__(self, handlers: Mapping[str, PathHandler]) -> None:
        """:param handlers: the handler of each topic, in the order their outputs are emitted."""
        self._handlers = dict(handlers)

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        by_topic: dict[str, list[Inbound]] = {topic: [] for topic in self._handlers}
        for record in records:
            by_topic[self._topic_of(record)].append(record)
        return [out for topic, part in by_topic.items() if part for out in self._handlers[topic].process(part)]

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return self._handlers[self._topic_of(record)].on_failure(record, error)

    def tick(self) -> list[Output]:
        return [out for handler in self._handlers.values() for out in handler.tick()]

    def _topic_of(self, record: Inbound) -> str:
        if record.topic not in self._handlers:  # the consumer subscribes to these topics only
            raise ValueError(f"a record of {record.topic!r} on a path reading {', '.join(self._handlers)}")
        return record.topic
