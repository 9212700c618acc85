"""The serving version a client follows: the record on ``<flow>.versions`` that names which index
version answers searches (``streams/ops/versions.py`` writes it, at a reindex or an operator's switch).
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Message

from streams.wire.serde import SERVING_VERSION

__all__ = ["SERVING_KEY", "ServingVersion", "serving_of"]

SERVING_KEY = b"serving"


@dataclass(frozen=True, slots=True)
class ServingVersion:
    version: int
    since_ms: int
    previous: int | None = None
    reason: str = ""


def serving_of(msg: Message) -> ServingVersion | None:
    """The serving record in a message of ``<flow>.versions``, or None for anything else."""
    if msg.error() is not None or msg.key() != SERVING_KEY or msg.value() is None:
        return None
    record = SERVING_VERSION.decode(msg.value())
    return ServingVersion(record["version"], record["since_ms"], record["previous"], record["reason"])
