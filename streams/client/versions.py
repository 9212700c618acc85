"""The serving version a client follows: the record on ``<flow>.versions`` that names which index
version answers searches (``streams/ops/versions.py`` writes it, at a reindex or an operator's switch).
"""

from __future__ import annotations

from confluent_kafka import Message

from streams.kafka.consumer import headers_of
from streams.wire.codec import SERVING_VERSION
from streams.wire.records import ServingVersion

__all__ = ["SERVING_KEY", "ServingVersion", "serving_of"]

SERVING_KEY = b"serving"


def serving_of(msg: Message) -> ServingVersion | None:
    """The serving record in a message of ``<flow>.versions``, or None for anything else.

    :raises SerdeError: for a serving record written with another schema, or malformed.
    """
    if msg.error() is not None or msg.key() != SERVING_KEY or msg.value() is None:
        return None
    return SERVING_VERSION.decode_record(msg.value(), headers_of(msg))
