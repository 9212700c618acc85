"""Producing a handler's outputs: each checked against what its topic takes, replies only where a client waits.

A record over its topic's ``max.message.bytes`` would be refused by the broker after the batch's
offsets were noted; checked before any output of a batch is produced, it fails the batch, which is
then retried record by record (``streams/runtime/failures.py``) and only the culprit is dead-lettered.
A reply is best effort: one to a reply topic that is not usable (``ReplyTopics``) or too large is
counted and dropped, never retried, and holds no input back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import KafkaError, Message

from streams.exceptions import PayloadTooLargeError
from streams.kafka.admin import max_message_bytes
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import UNKNOWN_TOPIC_ERRORS, StageProducer, record_size
from streams.runtime.metrics import RECORDS_OUT, UNDELIVERABLE_REPLIES
from streams.runtime.spec import Output, StageSpec
from streams.wire.topics import RECORD_OVERHEAD_BYTES

__all__ = ["Outputs", "TopicLimits"]

logger = logging.getLogger(__name__)


class TopicLimits(dict[str, int]):
    """The largest record each topic takes: its ``max.message.bytes``, asked once per topic on first
    use, else (an unanswered describe must not stop the stage) the flow's payload limit plus record
    overhead, which is also every reply topic's (see :meth:`Outputs.produce`)."""

    def __init__(self, settings: KafkaSettings, max_payload_bytes: int) -> None:
        super().__init__()
        self._settings = settings
        self.default = max_payload_bytes + RECORD_OVERHEAD_BYTES

    def __missing__(self, topic: str) -> int:
        try:
            limit = max_message_bytes(self._settings, topic)
        except Exception as exc:  # an unanswered describe must not stop the stage
            logger.debug("topic limit unknown", extra={"topic": topic, "error": str(exc)})
            limit = None
        self[topic] = limit or self.default
        return self[topic]


class Outputs:
    """Checks and produces the outputs of one stage's handlers."""

    def __init__(self, spec: StageSpec, limits: TopicLimits) -> None:
        self._spec = spec
        self._limits = limits

    def produce(self, producer: StageProducer, outputs: Sequence[Output]) -> None:
        """Produce ``outputs``, all checked before any is produced (a failed batch is retried
        record by record); replies only to usable reply topics (others are counted and dropped).

        :raises PayloadTooLargeError: if an output is larger than its topic takes.
        """
        sendable = []
        for out in outputs:
            if out.reply and self._spec.reply_topics is not None and not self._spec.reply_topics.usable(
                    out.topic, deadline_ms=out.deadline_ms):
                self._undeliverable_reply(out.topic, "no such reply topic of this flow")
                continue
            size = record_size(out.key, out.value, out.headers)
            # A client creates its reply topic with the flow's payload limit; asking each one's
            # max.message.bytes would remember every client that ever searched.
            limit = self._limits.default if out.reply else self._limits[out.topic]
            if size > limit and out.reply:  # from a deadline tick too: never an exception there
                self._undeliverable_reply(out.topic, f"reply of {size} bytes, over {limit}")
                continue
            if size > limit:
                raise PayloadTooLargeError(
                    f"output record for {out.topic} is {size} bytes, over the topic's max.message.bytes={limit}")
            sendable.append(out)
        replies = producer.report(self._reply_delivered, best_effort=True) if any(out.reply for out in sendable) else None
        for out in sendable:
            RECORDS_OUT.labels(self._spec.flow, self._spec.name).inc()
            producer.produce(out.topic, value=out.value, key=out.key, partition=out.partition, headers=out.headers,
                             on_delivery=replies if out.reply else None)

    def _reply_delivered(self, error: KafkaError | None, msg: Message) -> None:
        if error is not None:  # e.g. the client deleted its topic meanwhile
            if self._spec.reply_topics is not None and error.code() in UNKNOWN_TOPIC_ERRORS:
                self._spec.reply_topics.gone(msg.topic())  # not on a timeout in a failover: the client is there
            self._undeliverable_reply(msg.topic(), error.str())

    def _undeliverable_reply(self, topic: str, reason: str) -> None:
        UNDELIVERABLE_REPLIES.labels(self._spec.flow, self._spec.name).inc()
        logger.info("reply not sent", extra={"stage": self._spec.name, "topic": topic[:300], "reason": reason})
