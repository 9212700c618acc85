"""Errors of the runtime; all derive from the one StreamsearchError."""

from typing import TYPE_CHECKING, Protocol

from processors.exceptions import StreamsearchError

if TYPE_CHECKING:
    from confluent_kafka import KafkaError

__all__ = [
    "StreamsearchError",
    "SerdeError",
    "DecodeLimitError",
    "FlowConfigError",
    "StateConfigError",
    "EXIT_CONFIG",
    "BrokerError",
    "KafkaConfigError",
    "DeliveryError",
    "GroupMembershipLost",
    "ProducerFailedError",
    "ReadTimeoutError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "RequestExpiredError",
    "SearchError",
    "UnknownFlowError",
    "ReplyTopicError",
    "InvalidRecordError",
]


class SerdeError(StreamsearchError):
    """A record is not valid Avro for the expected schema."""


class DecodeLimitError(SerdeError):
    """A record nests Documents deeper, or holds more of them, than ``DecodeLimits`` allows."""


class FlowConfigError(StreamsearchError):
    """A flow YAML is malformed or names something that does not exist."""


class StateConfigError(FlowConfigError):
    """Stored state was built with other settings (a shard's dim or metric): a restart cannot fix it."""


EXIT_CONFIG = 78
"""A stage's exit status for a ``StateConfigError`` (sysexits' EX_CONFIG): its supervisor does not restart it."""


class BrokerError(StreamsearchError):
    """The Kafka broker is unreachable or refused an operation."""


class KafkaConfigError(StreamsearchError):
    """A librdkafka setting (from the environment or a flow's ``kafka:`` map) is unknown or invalid."""


class UnknownFlowError(BrokerError):
    """The broker has no such flow (no ``<flow>.ingest``) or not the version asked for: only
    ``streamsearch run`` creates a flow's topics, so a misspelt name fails here, not in a delivery."""


class GroupMembershipLost(BrokerError):
    """A stage's consumer lost its partitions and did not get any back: the process restarts to rejoin."""


class ProducerFailedError(BrokerError):
    """The producer refused a record for a reason of its own, not the record's: a fatal error (it is
    unusable and must be replaced) or a transaction that must be aborted. Never a record's failure:
    the stage recovers its producer and runs the batch again instead of dead-lettering its input.

    ``error`` is librdkafka's: ``fatal()``, ``txn_requires_abort()``.
    """

    def __init__(self, message: str, error: "KafkaError") -> None:
        super().__init__(message)
        self.error = error


class ReadTimeoutError(BrokerError):
    """Partitions were not read to their end in time (``streams.kafka.reader``).

    ``unfinished`` holds their (topic, partition): a caller that can do with part of a topic keeps
    what it read and knows which partitions it lacks.
    """

    def __init__(self, message: str, unfinished: frozenset[tuple[str, int]] = frozenset()) -> None:
        super().__init__(message)
        self.unfinished = unfinished


class DeliveryError(StreamsearchError):
    """A produced record was not delivered.

    ``failures`` holds each refused record's topic, partition, key and librdkafka error, so a
    stage can dead-letter the input behind a permanently refused output (too large, not
    authorised) and stop, without committing, on a transient one.
    """

    def __init__(self, message: str, failures: tuple = ()) -> None:  # type: ignore[type-arg]
        super().__init__(message)
        self.failures = failures


class PayloadTooLargeError(StreamsearchError):
    """A record exceeds the configured payload limit."""


class RequestTimeoutError(StreamsearchError):
    """No reply arrived before the request's deadline (plus grace)."""


class RequestExpiredError(RequestTimeoutError):
    """A stage took a request up only after its deadline (a backlog, a stage restarting): it
    answers with this error, naming by how much, instead of working for nobody."""


class _Answer(Protocol):
    """What a search error reads of a reply (``streams.wire.records.SearchReply``, not imported here)."""

    errors: list[str]


class SearchError(StreamsearchError):
    """The flow answered a search with errors and no results: an invalid request or one over a
    limit (the encode stage refuses it before it fans out), or a reply too large to send.

    ``errors`` are the reply's messages, ``reply`` the ``SearchReply`` itself.
    """

    def __init__(self, message: str, reply: _Answer | None = None) -> None:
        super().__init__(message)
        self.reply = reply
        self.errors: list[str] = list(reply.errors if reply is not None and reply.errors else [message])


class ReplyTopicError(StreamsearchError):
    """A query-path record names a ``reply_to`` that is not one of its flow's existing reply topics."""


class InvalidRecordError(StreamsearchError):
    """A record decodes, but holds what no stage of its flow writes (a shard the flow does not have)."""
