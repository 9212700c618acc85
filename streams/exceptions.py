"""Errors of the runtime; all derive from the one StreamsearchError."""

from processors.exceptions import StreamsearchError

__all__ = [
    "StreamsearchError",
    "SerdeError",
    "FlowConfigError",
    "BrokerError",
    "DeliveryError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
]


class SerdeError(StreamsearchError):
    """A record is not valid Avro for the expected schema."""


class FlowConfigError(StreamsearchError):
    """A flow YAML is malformed or names something that does not exist."""


class BrokerError(StreamsearchError):
    """The Kafka broker is unreachable or refused an operation."""


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
