"""The dead-letter headers: what the stage loop writes is what a reader parses back."""

from __future__ import annotations

from streams.wire import headers as h
from streams.wire.dead_letters import NO_INGEST_OFFSET, dead_letter_headers, dead_letter_of


def test_a_letter_reads_back_the_stage_the_reason_the_source_and_the_original_headers() -> None:
    original = {h.INGEST_OFFSET: b"41", h.SCHEMA: b"abc"}
    built = dead_letter_headers(original, stage="encode", error=ValueError("x" * 5000), topic="f.segmented",
                                partition=1, offset=7)
    letter = dead_letter_of(3, b"key", b"value", dict(built), ingest_topic="f.ingest")
    assert (letter.offset, letter.key, letter.value) == (3, b"key", b"value")
    assert (letter.stage, letter.error_class, letter.message) == ("encode", "ValueError", "x" * 2000)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("f.segmented", 1, 7)
    assert letter.original_headers == tuple(original.items())
    assert letter.ingest_offset == 41  # traced back through the record's ingest-offset header


def test_a_letter_from_the_ingest_topic_is_its_own_ingest_offset_and_garbled_headers_read_as_unknown() -> None:
    built = dict(dead_letter_headers({}, stage="segment", error=KeyError("k"), topic="f.ingest", partition=0, offset=0))
    assert dead_letter_of(0, None, None, built, ingest_topic="f.ingest").ingest_offset == 0
    garbled = {h.DEAD_LETTER_OFFSET: b"not a number", h.DEAD_LETTER_STAGE: b"\xff"}
    letter = dead_letter_of(9, None, None, garbled, ingest_topic="f.ingest")
    assert (letter.source_offset, letter.ingest_offset, letter.error_class) == (-1, NO_INGEST_OFFSET, "?")
    assert letter.stage == "\ufffd"
