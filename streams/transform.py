"""The index path of the stateless stages (segment, encode): Documents in, Documents out.

Output goes to the same partition number as the input, keyed by root document id, so
partition p of ingest flows, in order, into shard p. Tombstones pass through: a delete
must reach the shard. Each output carries the source ingest offset.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from processors.document import Document, validate_document
from streams import headers as h
from streams.exceptions import SerdeError
from streams.serde import DOCUMENT
from streams.stage import Inbound, Output

__all__ = ["DocumentTransform", "ingest_offset_of"]

logger = logging.getLogger(__name__)


def ingest_offset_of(record: Inbound, ingest_topic: str) -> int:
    """The ingest offset a record derives from: its own on the ingest topic, else its header."""
    if record.topic == ingest_topic:
        return record.offset
    offset = h.read_int(record.headers, h.INGEST_OFFSET)
    return offset if offset is not None else -1


def decode_document(record: Inbound) -> Document:
    """Decode an index-path record, check that its key is its id, and validate it.

    :raises SerdeError: on malformed Avro, a foreign schema, or a key that is not the doc id.
    :raises InvalidDocumentError: for an id or text ``validate_document`` refuses (the stage
        dead-letters the record with that reason).
    """
    assert record.value is not None
    doc = DOCUMENT.decode(record.value, record.headers.get(h.SCHEMA))
    if record.key is not None and record.key.decode(errors="replace") != doc.id:
        raise SerdeError(f"record key {record.key!r} differs from document id {doc.id!r}")
    validate_document(doc)
    return doc


def is_marker(record: Inbound) -> bool:
    return record.headers.get(h.KIND) == h.WATERMARK


class DocumentTransform:
    """Runs a processor over the documents of a batch and forwards them, order kept."""

    def __init__(
        self, *, run: Callable[[Sequence[Document]], Sequence[Document]], output_topic: str, ingest_topic: str
    ) -> None:
        self._run = run
        self._output_topic = output_topic
        self._ingest_topic = ingest_topic

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        changes = [r for r in records if r.value is not None and not is_marker(r)]
        docs = self._run([decode_document(r) for r in changes]) if changes else []
        by_offset = {(r.partition, r.offset): doc for r, doc in zip(changes, docs)}
        outputs = []
        for record in records:
            doc = by_offset.get((record.partition, record.offset))
            key: Any = record.key if record.key is not None else (doc.id.encode() if doc else None)
            headers: tuple[h.Header, ...] = (h.int_header(h.INGEST_OFFSET, ingest_offset_of(record, self._ingest_topic)),)
            if doc is not None:
                outputs.append(Output(self._output_topic, DOCUMENT.encode(doc), key, record.partition,
                                      headers + (DOCUMENT.header(),)))
            else:  # a tombstone or a watermark marker: forward as it is
                kind = ((h.KIND, h.WATERMARK),) if is_marker(record) else ()
                outputs.append(Output(self._output_topic, None, key, record.partition, headers + kind))
        return outputs

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        """The record is dead-lettered; a marker keeps the shard's watermark moving."""
        return [watermark_marker(self._output_topic, record.partition, ingest_offset_of(record, self._ingest_topic))]

    def tick(self) -> list[Output]:
        return []


def watermark_marker(topic: str, partition: int, ingest_offset: int) -> Output:
    return Output(topic, None, h.WATERMARK_KEY, partition,
                  ((h.KIND, h.WATERMARK), h.int_header(h.INGEST_OFFSET, ingest_offset)))
