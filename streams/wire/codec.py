"""The only Avro path: schemaless fastavro records, the schema fingerprint in a header.

Why not the Confluent wire format: it needs a schema registry to resolve its 4-byte schema
ids, and streamsearch must run with nothing but a broker. The CRC-64-AVRO (Rabin) fingerprint
of the parsing canonical form, sent in the ``ss-schema`` header, identifies the writer schema
just as well; a consumer rejects a record whose fingerprint it does not know instead of
misreading it. Every decode runs the bounded pre-scan (``streams.wire.prescan``) first.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from processors.document import Document, validate_document
from processors.index.lexical import CorpusStats
from streams.exceptions import SerdeError
from streams.wire.documents import RECORD_CONSTRUCTORS, doc_from_avro, doc_to_avro, doc_to_avro_without_embeddings
from streams.wire.headers import SCHEMA, Header
from streams.wire.limits import DECODE_LIMITS, DecodeLimits
from streams.wire.prescan import Cuts, prescan
from streams.wire.scan_nodes import ScanNode, compile_scan, program_of
from streams.wire.records import (
    LexicalCount,
    PartialResult,
    LexicalStatistics,
    Request,
    SearchReply,
    ServingVersion,
    ShardStatus,
    StageStatus,
    VersionBuild,
)
from streams.wire.schemas import EARLIER_SCHEMAS, PARSED_SCHEMAS, load_earlier

__all__ = [
    "DOCUMENT",
    "PARTIAL_RESULT",
    "REQUEST",
    "SEARCH_REPLY",
    "SERVING_VERSION",
    "STAGE_STATUS",
    "LEXICAL_COUNT",
    "STORED_DOCUMENT",
    "STORED_FORMAT",
    "VERSION_BUILD",
    "Codec",
    "StoredDocumentCodec",
]

T = TypeVar("T")


# -- dataclass <-> Avro dicts ------------------------------------------------------------------

def _params_to_avro(params: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value) for key, value in params.items()}


def _params_from_avro(params: dict[str, str]) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in params.items()}


def _request_to_avro(r: Request) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "kind": r.kind,
        "docs": [doc_to_avro(d) for d in r.docs],
        "parameters": _params_to_avro(r.parameters),
        "reply_to": r.reply_to,
        "deadline_ms": r.deadline_ms,
        "min_offsets": {str(p): o for p, o in r.min_offsets.items()},
        "lexical_statistics": None if r.lexical_statistics is None else {
            "analyzer": r.lexical_statistics.analyzer,
            "fields": [{"field": name, "units": stats.units, "tokens": stats.tokens, "df": dict(stats.df)}
                       for name, stats in r.lexical_statistics.fields.items()],
        },
    }


def _request_from_avro(rec: dict[str, Any]) -> Request:
    return Request(
        request_id=rec["request_id"],
        kind=rec["kind"],
        docs=[doc_from_avro(d) for d in rec["docs"]],
        reply_to=rec["reply_to"],
        deadline_ms=rec["deadline_ms"],
        parameters=_params_from_avro(rec["parameters"]),
        min_offsets={int(p): o for p, o in rec["min_offsets"].items()},
        lexical_statistics=_lexical_statistics_from_avro(rec.get("lexical_statistics")),
    )


def _lexical_statistics_from_avro(rec: dict[str, Any] | None) -> LexicalStatistics | None:
    """:raises SerdeError: for a negative count or a field given twice: no fan-out writes them, and a
    negative frequency would make BM25's idf undefined on every shard."""
    if rec is None:
        return None
    fields: dict[str, CorpusStats] = {}
    for part in rec["fields"]:
        if part["field"] in fields:
            raise SerdeError(f"lexical_statistics names field {part['field'][:100]!r} twice")
        if part["units"] < 0 or part["tokens"] < 0 or any(count < 0 for count in part["df"].values()):
            raise SerdeError("lexical_statistics holds a negative count")
        fields[part["field"]] = CorpusStats(part["units"], part["tokens"], part["df"])
    return LexicalStatistics(rec["analyzer"], fields)


def _partial_to_avro(p: PartialResult) -> dict[str, Any]:
    return {
        "request_id": p.request_id,
        "shard": p.shard,
        "field_name": p.field_name,
        "expected_shards": p.expected_shards,
        "expected_fields": p.expected_fields,
        "reply_to": p.reply_to,
        "deadline_ms": p.deadline_ms,
        "parameters": _params_to_avro(p.parameters),
        "docs": [doc_to_avro(d) for d in p.docs],
        "error": p.error,
        "warning": p.warning,
        "stale": p.stale,
        "restoring": p.restoring,
    }


def _partial_from_avro(rec: dict[str, Any]) -> PartialResult:
    return PartialResult(
        request_id=rec["request_id"],
        shard=rec["shard"],
        expected_shards=list(rec["expected_shards"]),
        reply_to=rec["reply_to"],
        deadline_ms=rec["deadline_ms"],
        parameters=_params_from_avro(rec["parameters"]),
        docs=[doc_from_avro(d) for d in rec["docs"]],
        error=rec["error"],
        warning=rec["warning"],
        stale=rec["stale"],
        field_name=rec["field_name"],
        expected_fields=list(rec["expected_fields"]),
        restoring=rec["restoring"],
    )


def _reply_to_avro(r: SearchReply) -> dict[str, Any]:
    """Every field as the schema names it: a new reply field is its schema line and its dataclass field."""
    return {**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)}, "docs": [doc_to_avro(d) for d in r.docs]}


def _reply_from_avro(rec: dict[str, Any]) -> SearchReply:
    fields = {f.name for f in dataclasses.fields(SearchReply)}  # a field an earlier schema lacks takes its default
    known = {k: v for k, v in rec.items() if k in fields}
    return SearchReply(**{**known, "docs": [doc_from_avro(d) for d in rec["docs"]]})


def _status_from_avro(rec: dict[str, Any]) -> StageStatus:
    return StageStatus(**{**rec, "shards": [ShardStatus(**shard) for shard in rec["shards"]]})


# -- codecs --------------------------------------------------------------------------------------


class Codec(Generic[T]):
    """Encodes one record type to schemaless Avro and back, checking the writer fingerprint."""

    def __init__(self, schema_name: str, to_avro: Any, from_avro: Any,
                 validate: Callable[[T], None] | None = None) -> None:
        """:param validate: checks a decoded value (raising ``InvalidDocumentError``), so that every
            reader of this type refuses what no writer of ours produces (NaN vectors, NUL in ids)."""
        self.schema = PARSED_SCHEMAS[schema_name]
        self._validate = validate
        self.fingerprint = fingerprint(to_parsing_canonical_form(self.schema), "CRC-64-AVRO")
        self._to_avro = to_avro
        self._from_avro = from_avro
        self._scan_root = compile_scan(self.schema, constructors=RECORD_CONSTRUCTORS)
        self._program = program_of(self._scan_root)
        """The compiled reader of records written with the current schema; None where it was not built."""
        self._earlier: dict[str, tuple[Any, ScanNode]] = {}
        """Earlier writer schemas by fingerprint, with their pre-scan trees."""
        for name in EARLIER_SCHEMAS.get(schema_name, ()):
            earlier = load_earlier(name)
            self._earlier[fingerprint(to_parsing_canonical_form(earlier), "CRC-64-AVRO")] = (
                earlier, compile_scan(earlier))

    def encode(self, value: T) -> bytes:
        """Schemaless Avro of ``value``: by the compiled writer where it was built and takes the value
        (``Program.write``: a 384-d root document in 0.7 µs where fastavro's writer took 9-16,
        ``benchmarks/decode.py``), else by fastavro, which writes the same bytes.

        :raises ValueError: (fastavro's, or TypeError) for a value the schema does not take.
        """
        record = self._to_avro(value)
        if self._program is not None and (written := self._program.write(record)) is not None:
            return written
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.schema, record)
        return buffer.getvalue()

    def decode(self, data: bytes, fingerprint_header: bytes | str | None = None, *,
               limits: DecodeLimits | None = None) -> T:
        """Decode a record, rejecting it if its header names another schema or it breaks the caps.

        :param limits: the caps to check before decoding; ``DECODE_LIMITS`` if None.
        :raises DecodeLimitError: if Documents nest deeper or are more than the caps allow.
        :raises SerdeError: on a foreign fingerprint, truncated or malformed bytes.
        :raises InvalidDocumentError: for a value the codec's validation refuses.
        """
        writer, scan_root = self._writer(fingerprint_header)
        return self._decode(data, writer, scan_root, limits)

    def _writer(self, fingerprint_header: bytes | str | None) -> tuple[Any, ScanNode]:
        """The writer schema a header names, and its pre-scan tree.

        :raises SerdeError: for a fingerprint of no schema this codec reads.
        """
        if fingerprint_header is not None:
            seen = (fingerprint_header.decode("utf-8", "replace") if isinstance(fingerprint_header, bytes)
                    else fingerprint_header)  # any header's bytes: not ours if not our hex digits
            if seen != self.fingerprint:
                if seen not in self._earlier:
                    raise SerdeError(f"record written with schema {seen}, expected {self.schema['name']} "
                                     f"{self.fingerprint}")
                return self._earlier[seen]
        return self.schema, self._scan_root

    def decode_earliest(self, data: bytes, *, limits: DecodeLimits | None = None) -> T:
        """Decode a headerless record written with the first schema of this type (an earlier one
        if there is one): what a shard stored before its values carried a format byte."""
        writer, scan_root = next(iter(self._earlier.values()), (self.schema, self._scan_root))
        return self._decode(data, writer, scan_root, limits)

    def _decode(self, data: bytes, writer: Any, scan_root: ScanNode, limits: DecodeLimits | None,
                cuts: Cuts | None = None) -> T:
        prescan(data, scan_root, limits or DECODE_LIMITS, self.schema["name"], cuts)
        try:
            if writer is self.schema and self._program is not None:  # the walk above read it to its end
                value = self._from_avro(self._program.read(data))
            else:  # an earlier writer schema (resolved to this one), or no compiled reader
                value = self._from_avro(self._read_fastavro(data, writer))
        except SerdeError:
            raise
        except Exception as exc:  # the readers raise many types on garbage input
            raise SerdeError(f"malformed {self.schema['name']} record: {type(exc).__name__}: {exc}") from exc
        if self._validate is not None:
            self._validate(value)
        return value

    def _read_fastavro(self, data: bytes, writer: Any) -> Any:
        buffer = io.BytesIO(data)
        value = fastavro.schemaless_reader(buffer, writer, None if writer is self.schema else self.schema)
        if buffer.tell() != len(data):
            raise SerdeError(
                f"malformed {self.schema['name']} record: {len(data) - buffer.tell()} bytes left after decoding")
        return value

    def header(self) -> Header:
        return (SCHEMA, self.fingerprint.encode())

    def encode_record(self, value: T, headers: Sequence[Header] = ()) -> tuple[bytes, tuple[Header, ...]]:
        """A record for a topic that carries this type (``streams.wire.topics.TopicRole.codecs``): its
        value, and ``headers`` with the fingerprint header added."""
        return self.encode(value), (*headers, self.header())

    def decode_record(self, value: bytes | None, headers: Mapping[str, bytes], *,
                      limits: DecodeLimits | None = None) -> T:
        """A record of a topic that carries this type, checked against the fingerprint in its headers.

        A record without the header is read with the current schema: producers outside
        streamsearch may not set it, and the pre-scan and validation still run.

        :param headers: the record's headers by name (``headers_of(msg)``, ``Inbound.headers``).
        :raises SerdeError: for a null value, a fingerprint of another schema, malformed bytes.
        :raises DecodeLimitError: if Documents nest deeper or are more than the caps allow.
        :raises InvalidDocumentError: for a value the codec's validation refuses.
        """
        return self.decode_record_cuts(value, headers, limits=limits)[0]

    def decode_record_cuts(self, value: bytes | None, headers: Mapping[str, bytes], *,
                           limits: DecodeLimits | None = None) -> tuple[T, Cuts | None]:
        """``decode_record``, and the byte ranges of the record's non-null ``CUT_FIELDS`` values that the
        pre-scan met on its way (:func:`streams.wire.prescan.prescan`); None for a record written with an
        earlier schema, whose bytes are not the current schema's, or holding a block of records written
        with its size in bytes, which a cut would leave wrong (``Cuts.sized``).

        :raises SerdeError, DecodeLimitError, InvalidDocumentError: as ``decode_record``.
        """
        if value is None:
            raise SerdeError(f"a {self.schema['name']} record needs a value")
        writer, scan_root = self._writer(headers.get(SCHEMA))
        cuts = Cuts() if writer is self.schema else None
        decoded = self._decode(value, writer, scan_root, limits, cuts)
        return decoded, None if cuts is None or cuts.sized else cuts


def _validate_docs(value: Request | PartialResult) -> None:
    for doc in value.docs:
        validate_document(doc)


DOCUMENT: Codec[Document] = Codec("document", doc_to_avro, doc_from_avro, validate_document)


class StoredDocumentCodec:
    """A shard's own stored documents: validated when they entered (``DOCUMENT``), not on every read,
    so that what a shard stores never decides whether it can read it back.

    A value is :data:`STORED_FORMAT` then the current schema's bytes. A value without it was
    stored before typed tags, with ``streams/schemas/earlier/document-1.avsc``: such a record starts with
    its id's length, a zigzag varint whose first byte is always even, so never this odd byte.
    """

    def __init__(self) -> None:
        self._codec: Codec[Document] = Codec("document", doc_to_avro_without_embeddings, doc_from_avro)

    def encode(self, doc: Document) -> bytes:
        """The document with every embedding written as null: the shard keeps its vectors apart."""
        return STORED_FORMAT + self._codec.encode(doc)

    @staticmethod
    def cut(record: bytes, cuts: Sequence[tuple[int, int]]) -> bytes:
        """The stored form of a Document record written with the current schema, made from its own bytes:
        null in place of each range of ``cuts`` (``Codec.decode_record_cuts``: every node's embedding and
        blob). It decodes to the Document ``encode`` stores, and costs a few copies where encoding the
        decoded tree again took 190 of a replayed 10-chunk record's ~700 us (``benchmarks/restore.py``)."""
        parts = [STORED_FORMAT]
        pos = 0
        for start, end in cuts:
            parts += (record[pos:start], _NULL_BRANCH)
            pos = end
        parts.append(record[pos:])
        return b"".join(parts)

    def decode(self, data: bytes, *, limits: DecodeLimits | None = None) -> Document:
        if data[:1] == STORED_FORMAT:
            return self._codec.decode(data[1:], limits=limits)
        return self._codec.decode_earliest(data, limits=limits)


STORED_FORMAT = b"\x01"
"""The first byte of a stored document written with the current Document schema."""
_NULL_BRANCH = b"\x00"
"""Branch 0 of a union, null for every field of ``CUT_FIELDS``."""
STORED_DOCUMENT = StoredDocumentCodec()
REQUEST: Codec[Request] = Codec("request", _request_to_avro, _request_from_avro, _validate_docs)
PARTIAL_RESULT: Codec[PartialResult] = Codec("partial_result", _partial_to_avro, _partial_from_avro, _validate_docs)
SEARCH_REPLY: Codec[SearchReply] = Codec("search_reply", _reply_to_avro, _reply_from_avro)
STAGE_STATUS: Codec[StageStatus] = Codec("stage_status", dataclasses.asdict, _status_from_avro)
SERVING_VERSION: Codec[ServingVersion] = Codec("serving_version", dataclasses.asdict, lambda rec: ServingVersion(**rec))
VERSION_BUILD: Codec[VersionBuild] = Codec("version_build", dataclasses.asdict, lambda rec: VersionBuild(**rec))
LEXICAL_COUNT: Codec[LexicalCount] = Codec("lexical_count", dataclasses.asdict, lambda rec: LexicalCount(**rec))
