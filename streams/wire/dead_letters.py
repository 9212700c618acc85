"""What a dead letter is on ``<flow>.dead-letter``: the record a stage could not process, kept with
headers that say which stage refused it, why, and where it came from.

Built by the stage loop, parsed by whoever reads the topic (the client's read-your-writes wait, the
operator's ``streamsearch dead-letters``): one declaration of the headers for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from streams.wire import headers as h

__all__ = ["DeadLetter", "NO_INGEST_OFFSET", "MAX_MESSAGE_CHARS", "dead_letter_headers", "dead_letter_of"]

NO_INGEST_OFFSET = -1
"""A letter's ``ingest_offset`` when it traces back to no ingest record (a request, a foreign record)."""

MAX_MESSAGE_CHARS = 2000
"""How much of the error's message a letter keeps."""

_WHY_AND_WHERE = frozenset({h.DEAD_LETTER_STAGE, h.DEAD_LETTER_ERROR_CLASS, h.DEAD_LETTER_MESSAGE, h.DEAD_LETTER_TOPIC,
                            h.DEAD_LETTER_PARTITION, h.DEAD_LETTER_OFFSET})
"""The headers a dead letter adds to the record's own."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record a stage could not process, with why and where it came from."""

    offset: int
    key: bytes | None
    value: bytes | None
    stage: str
    error_class: str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    original_headers: tuple[h.Header, ...]
    ingest_offset: int = NO_INGEST_OFFSET
    """The offset of the ingest record it derives from, in partition ``source_partition``: its own
    offset when it was read from the ingest topic, else its ``ss-ingest-offset`` header (the index
    path is co-partitioned). What tells a writer which of its documents were dead-lettered."""


def dead_letter_headers(original: Mapping[str, bytes], *, stage: str, error: Exception, topic: str, partition: int,
                        offset: int) -> list[h.Header]:
    """The record's own headers, then why ``stage`` refused it and where it was read (so that it can be
    re-driven to the same partition)."""
    return [(k, v) for k, v in original.items()] + [
        (h.DEAD_LETTER_STAGE, stage.encode()),
        (h.DEAD_LETTER_ERROR_CLASS, type(error).__name__.encode()),
        (h.DEAD_LETTER_MESSAGE, str(error)[:MAX_MESSAGE_CHARS].encode()),
        (h.DEAD_LETTER_TOPIC, topic.encode()),
        h.int_header(h.DEAD_LETTER_PARTITION, partition),
        h.int_header(h.DEAD_LETTER_OFFSET, offset),
    ]


def dead_letter_of(offset: int, key: bytes | None, value: bytes | None, headers: Mapping[str, bytes],
                   ingest_topic: str) -> DeadLetter:
    """The letter at ``offset`` of the dead-letter topic; a header missing or garbled reads as unknown
    (``?``, -1), never as an error: whatever is on the topic is listed.

    :param ingest_topic: the flow's ingest topic, to trace the letter back to the ingest record.
    """
    text = {name: raw.decode(errors="replace") for name, raw in headers.items()}
    source_offset = _or(h.read_int(headers, h.DEAD_LETTER_OFFSET), -1)  # offset 0 is an offset, not "none"
    from_ingest = text.get(h.DEAD_LETTER_TOPIC) == ingest_topic
    ingest_offset = source_offset if from_ingest else _or(h.read_int(headers, h.INGEST_OFFSET), NO_INGEST_OFFSET)
    return DeadLetter(
        offset=offset, key=key, value=value,
        stage=text.get(h.DEAD_LETTER_STAGE, "?"), error_class=text.get(h.DEAD_LETTER_ERROR_CLASS, "?"),
        message=text.get(h.DEAD_LETTER_MESSAGE, ""), source_topic=text.get(h.DEAD_LETTER_TOPIC, ""),
        source_partition=_or(h.read_int(headers, h.DEAD_LETTER_PARTITION), 0),
        source_offset=source_offset,
        original_headers=tuple((k, v) for k, v in headers.items() if k not in _WHY_AND_WHERE),
        ingest_offset=ingest_offset,
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
