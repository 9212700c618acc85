"""The index path of the stateless stages (segment, encode): Documents in, Documents out.

Output goes to the same partition number as the input, keyed by root document id, so
partition p of ingest flows, in order, into shard p; a record on a partition other than the
one its id belongs on (``streams/wire/partitioner.py``) is refused where ingest is read. Tombstones
pass through: a delete must reach the shard. Each output carries the source ingest offset.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

import numpy as np

from processors.document import Document
from processors.encoders.base import Truncated, check_embedding_shape
from processors.exceptions import BadDocumentError
from streams.wire import headers as h
from streams.exceptions import InvalidRecordError, SerdeError
from streams.runtime.metrics import TRUNCATED_TEXTS
from streams.wire.partitioner import LIBRDKAFKA_PARTITIONER, partition_of
from streams.wire.codec import DOCUMENT, STORED_DOCUMENT
from streams.runtime.spec import Inbound, Output, PathHandler
from streams.logs import CountedThrottle

__all__ = ["DocumentTransform", "TruncationReport", "ingest_offset_of", "require_vectors"]

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
    :raises InvalidDocumentError: for a document ``validate_document`` refuses (the codec checks
        it; the stage dead-letters the record with that reason).
    """
    assert record.value is not None
    return _keyed(record, DOCUMENT.decode_record(record.value, record.headers))


def decode_stored_document(record: Inbound) -> tuple[Document, bytes | None]:
    """``decode_document``, and the document's stored form made from the record's bytes
    (``StoredDocumentCodec.cut``); None for a record written with an earlier schema.

    :raises SerdeError, InvalidDocumentError: as ``decode_document``.
    """
    assert record.value is not None
    doc, cuts = DOCUMENT.decode_record_cuts(record.value, record.headers)
    return _keyed(record, doc), None if cuts is None else STORED_DOCUMENT.cut(record.value, cuts)


def _keyed(record: Inbound, doc: Document) -> Document:
    """:raises SerdeError: if the record's key is not the document's id."""
    if record.key is not None and record.key.decode(errors="replace") != doc.id:
        raise SerdeError(f"record key {record.key!r} differs from document id {doc.id!r}")
    return doc


def require_vectors(doc: Document, *, fields: Sequence[str] = ()) -> Document:
    """Refuse an encoded document that holds no vector: the index would count it, and nothing
    could ever find it (an empty text, or none of the fields a multi-field flow maps).

    :param fields: the fields the flow maps (named in the reason).
    :raises BadDocumentError: naming the document and why it has nothing to index.
    """
    stack = [doc]
    while stack:
        node = stack.pop()
        if node.embedding is not None:
            return doc
        stack.extend(node.chunks)
    if fields:
        present = [name for name in ("text", *doc.tags) if (doc.text if name == "text" else doc.tags.get(name))]
        why = (f"it has none of the fields this flow maps ({', '.join(fields)}), only "
               f"{', '.join(present) or 'empty ones'}")
    else:
        why = "it has no text to embed and no embedding"
    raise BadDocumentError(f"document {doc.id!r} has nothing to index: {why}; no search could ever find it")


def check_partition(record: Inbound, ingest_topic: str, partitions: int) -> None:
    """A record read from ingest must be on the partition its id belongs on (``partition_of``):
    on another it would reach another shard, and a later update or delete of the id, written
    with the right partitioner, would leave that copy searchable for ever.

    :raises InvalidRecordError: naming both partitions and the partitioner to produce with.
    """
    if record.topic != ingest_topic or is_marker(record):
        return
    key = record.key if record.key is not None else (
        decode_document(record).id.encode() if record.value is not None else None)
    if key is None:
        return  # a tombstone without a key: the shard refuses it, naming that
    expected = partition_of(key, partitions)
    if record.partition != expected:
        raise InvalidRecordError(
            f"document {key.decode(errors='replace')!r} is on partition {record.partition} of {ingest_topic}, "
            f"but its id belongs on partition {expected}: produce keyed by document id with Kafka's default "
            f"partitioner (murmur2 of the key: the Java producer's; librdkafka partitioner="
            f"{LIBRDKAFKA_PARTITIONER}), as streamsearch's Client does; any other would split an id across shards")


def require_given_vectors(doc: Document, dim: int) -> Document:
    """A document of a flow without a model carries its vectors: each one ``dim`` values, and at least
    one, or nothing could find it. The document is a decoded one (``decode_document``): the codec's
    validation has already refused a vector that is not numeric or not finite.

    :raises BadDocumentError: naming the document and node (``DimensionMismatchError`` for a size).
    """
    stack = [(doc, "r")]
    while stack:
        node, path = stack.pop()
        embedding = node.embedding
        if embedding is not None and not (type(embedding) is np.ndarray and embedding.ndim == 1
                                          and embedding.size == dim):  # the usual vector, without naming it
            check_embedding_shape(np.asarray(embedding), dim, f"document {doc.id!r}" + (
                "" if node is doc else f" node {node.id!r} (path {path!r})"))
        if node.chunks:
            stack.extend((chunk, f"{path}c") for chunk in node.chunks)
    try:
        return require_vectors(doc)
    except BadDocumentError as exc:
        raise BadDocumentError(f"{exc}: this flow has no encoder (no stages.encode), so every document carries "
                               "its embedding") from None


def is_marker(record: Inbound) -> bool:
    return record.headers.get(h.KIND) == h.WATERMARK


class DocumentTransform(PathHandler):
    """Runs a processor over the documents of a batch and forwards them, order kept."""

    def __init__(
        self, *, run: Callable[[Sequence[Document]], Sequence[Document]], output_topic: str, ingest_topic: str,
        partitions: int,
    ) -> None:
        """:param partitions: the flow's partition count, which decides the partition each id belongs on."""
        self._run = run
        self._output_topic = output_topic
        self._ingest_topic = ingest_topic
        self._partitions = partitions

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        changes = [r for r in records if r.value is not None and not is_marker(r)]
        decoded = [decode_document(r) for r in changes]
        for record in records:
            check_partition(record, self._ingest_topic, self._partitions)
        docs = self._run(decoded) if changes else []
        by_offset = {(r.partition, r.offset): doc for r, doc in zip(changes, docs)}
        outputs = []
        for record in records:
            doc = by_offset.get((record.partition, record.offset))
            key: Any = record.key if record.key is not None else (doc.id.encode() if doc else None)
            headers: tuple[h.Header, ...] = (h.int_header(h.INGEST_OFFSET, ingest_offset_of(record, self._ingest_topic)),)
            if doc is not None:
                value, with_schema = DOCUMENT.encode_record(doc, headers)
                outputs.append(Output(self._output_topic, value, key, record.partition, with_schema))
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


class TruncationReport:
    """Counts the texts an encoder embedded from their first ``max_length`` tokens only
    (``streamsearch_truncated_texts_total``) and says so in a warning naming a document: the
    first at once, then at most one per interval, summing up what came since."""

    def __init__(self, *, flow: str, stage: str, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metric = TRUNCATED_TEXTS.labels(flow, stage)
        self._stage = stage
        self._throttle = CountedThrottle(interval_s, clock)

    def record(self, truncated: Sequence[Truncated]) -> None:
        """Count a batch's truncated texts; log if the last line is older than the interval.

        :param truncated: what the encoder reported for one batch (often nothing).
        """
        if not truncated:
            return
        self._metric.inc(len(truncated))
        if (unreported := self._throttle.add(len(truncated))) is None:
            return
        example = max(truncated, key=lambda item: item.tokens)
        node = "" if example.node_id == example.doc_id else f", node {example.node_id!r}"
        logger.warning(
            f"{self._stage}: {unreported} text(s) longer than max_length={example.max_length} tokens "
            f"were embedded from their first {example.max_length} tokens only, e.g. document {example.doc_id!r}{node} "
            f"({example.tokens} tokens): the rest of such a text cannot be found. Segment it (a Sentencizer "
            f"with a smaller max_sent_len) or raise max_length",
            extra={"doc_id": example.doc_id, "node_id": example.node_id, "tokens": example.tokens,
                   "truncated": unreported})
