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
    """A produced record was not delivered."""


class PayloadTooLargeError(StreamsearchError):
    """A record exceeds the configured payload limit."""


class RequestTimeoutError(StreamsearchError):
    """No reply arrived before the request's deadline (plus grace)."""
