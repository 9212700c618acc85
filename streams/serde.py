"""The only Avro path: schemaless fastavro records, the schema fingerprint in a header.

Why not the Confluent wire format: it needs a schema registry to resolve its 4-byte schema
ids, and streamsearch must run with nothing but a broker. The CRC-64-AVRO (Rabin) fingerprint
of the parsing canonical form, sent in the ``ss-schema`` header, identifies the writer schema
just as well; a consumer rejects a record whose fingerprint it does not know instead of
misreading it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import fastavro
import numpy as np
from fastavro.schema import fingerprint, to_parsing_canonical_form

from processors.document import Direction, Document, Score
from streams.exceptions import SerdeError

__all__ = [
    "DOCUMENT",
    "PARTIAL_RESULT",
    "REQUEST",
    "SCHEMA_HEADER",
    "SEARCH_REPLY",
    "SERVING_VERSION",
    "STAGE_STATUS",
    "VERSION_BUILD",
    "Codec",
    "PartialResult",
    "Request",
    "SearchReply",
]

SCHEMA_HEADER = "ss-schema"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

T = TypeVar("T")


@dataclass(slots=True)
class Request:
    """A request envelope (see ``schemas/request.avsc``)."""

    request_id: str
    kind: str
    docs: list[Document]
    reply_to: str
    deadline_ms: int
    parameters: dict[str, Any]
    min_offsets: dict[int, int]


@dataclass(slots=True)
class PartialResult:
    """One shard's part of a search, or the opening part (shard -1)."""

    request_id: str
    shard: int
    expected_shards: list[int]
    reply_to: str
    deadline_ms: int
    parameters: dict[str, Any]
    docs: list[Document]
    error: str | None = None
    stale: bool = False
    field_name: str | None = None
    expected_fields: list[str] = field(default_factory=list)
    restoring: bool = False


@dataclass(slots=True)
class SearchReply:
    """The joined answer to a search."""

    request_id: str
    docs: list[Document]
    partial: bool
    missing_shards: list[int]
    stale_shards: list[int]
    errors: list[str]
    restoring_shards: list[int] = field(default_factory=list)
    version: int = 1
    """The index version that answered (``FlowTopics``): a reindex switches it."""


def _load_schemas() -> dict[str, Any]:
    named: dict[str, Any] = {}
    parsed = {}
    for name in ("document", "request", "partial_result", "search_reply", "stage_status", "serving_version",
                 "version_build"):
        with open(SCHEMA_DIR / f"{name}.avsc") as f:
            parsed[name] = fastavro.parse_schema(json.load(f), named_schemas=named)
    return parsed


_PARSED = _load_schemas()


# -- dataclass <-> Avro dicts ------------------------------------------------------------------


def doc_to_avro(doc: Document) -> dict[str, Any]:
    embedding = None
    if doc.embedding is not None:
        array = np.asarray(doc.embedding)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        embedding = {"dtype": little.dtype.str, "shape": list(array.shape), "data": little.tobytes()}
    return {
        "id": doc.id,
        "parent_id": doc.parent_id,
        "granularity": doc.granularity,
        "adjacency": doc.adjacency,
        "mime_type": doc.mime_type,
        "text": doc.text,
        "blob": doc.blob,
        "uri": doc.uri,
        "embedding": embedding,
        "tags": doc.tags,
        "field_name": doc.field_name,
        "modality": doc.modality,
        "weight": doc.weight,
        "offset": doc.offset,
        "location": doc.location,
        "scores": {
            name: {"value": s.value, "op_name": s.op_name, "direction": s.direction.value}
            for name, s in doc.scores.items()
        },
        "chunks": [doc_to_avro(c) for c in doc.chunks],
        "matches": [doc_to_avro(m) for m in doc.matches],
    }


def doc_from_avro(rec: dict[str, Any]) -> Document:
    embedding = None
    if rec["embedding"] is not None:
        e = rec["embedding"]
        embedding = np.frombuffer(e["data"], dtype=np.dtype(e["dtype"])).reshape(e["shape"])
    return Document(
        id=rec["id"],
        parent_id=rec["parent_id"],
        granularity=rec["granularity"],
        adjacency=rec["adjacency"],
        mime_type=rec["mime_type"],
        text=rec["text"],
        blob=rec["blob"],
        uri=rec["uri"],
        embedding=embedding,
        tags=dict(rec["tags"]),
        field_name=rec["field_name"],
        modality=rec["modality"],
        weight=rec["weight"],
        offset=rec["offset"],
        location=list(rec["location"]),
        scores={
            name: Score(s["value"], s["op_name"], Direction(s["direction"])) for name, s in rec["scores"].items()
        },
        chunks=[doc_from_avro(c) for c in rec["chunks"]],
        matches=[doc_from_avro(m) for m in rec["matches"]],
    )


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
    )


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
        stale=rec["stale"],
        field_name=rec["field_name"],
        expected_fields=list(rec["expected_fields"]),
        restoring=rec["restoring"],
    )


def _reply_to_avro(r: SearchReply) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "docs": [doc_to_avro(d) for d in r.docs],
        "partial": r.partial,
        "missing_shards": r.missing_shards,
        "stale_shards": r.stale_shards,
        "restoring_shards": r.restoring_shards,
        "errors": r.errors,
        "version": r.version,
    }


def _reply_from_avro(rec: dict[str, Any]) -> SearchReply:
    return SearchReply(
        request_id=rec["request_id"],
        docs=[doc_from_avro(d) for d in rec["docs"]],
        partial=rec["partial"],
        missing_shards=list(rec["missing_shards"]),
        stale_shards=list(rec["stale_shards"]),
        errors=list(rec["errors"]),
        restoring_shards=list(rec["restoring_shards"]),
        version=rec["version"],
    )


# -- codecs --------------------------------------------------------------------------------------


class Codec(Generic[T]):
    """Encodes one record type to schemaless Avro and back, checking the writer fingerprint."""

    def __init__(self, schema_name: str, to_avro: Any, from_avro: Any) -> None:
        self.schema = _PARSED[schema_name]
        self.fingerprint = fingerprint(to_parsing_canonical_form(self.schema), "CRC-64-AVRO")
        self._to_avro = to_avro
        self._from_avro = from_avro

    def encode(self, value: T) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.schema, self._to_avro(value))
        return buffer.getvalue()

    def decode(self, data: bytes, fingerprint_header: bytes | str | None = None) -> T:
        """Decode a record, rejecting it if its header names another schema.

        :raises SerdeError: on a foreign fingerprint, truncated or malformed bytes.
        """
        if fingerprint_header is not None:
            seen = fingerprint_header.decode() if isinstance(fingerprint_header, bytes) else fingerprint_header
            if seen != self.fingerprint:
                raise SerdeError(f"record written with schema {seen}, expected {self.schema['name']} {self.fingerprint}")
        buffer = io.BytesIO(data)
        try:
            value = self._from_avro(fastavro.schemaless_reader(buffer, self.schema, None))
        except Exception as exc:  # fastavro raises many types on garbage input
            raise SerdeError(f"malformed {self.schema['name']} record: {type(exc).__name__}: {exc}") from exc
        if buffer.tell() != len(data):
            raise SerdeError(
                f"malformed {self.schema['name']} record: {len(data) - buffer.tell()} bytes left after decoding"
            )
        return value

    def header(self) -> tuple[str, bytes]:
        return (SCHEMA_HEADER, self.fingerprint.encode())


DOCUMENT: Codec[Document] = Codec("document", doc_to_avro, doc_from_avro)
REQUEST: Codec[Request] = Codec("request", _request_to_avro, _request_from_avro)
PARTIAL_RESULT: Codec[PartialResult] = Codec("partial_result", _partial_to_avro, _partial_from_avro)
SEARCH_REPLY: Codec[SearchReply] = Codec("search_reply", _reply_to_avro, _reply_from_avro)
STAGE_STATUS: Codec[dict[str, Any]] = Codec("stage_status", dict, dict)
"""Status records are plain dicts: they are read by people and scripts, never processed."""
SERVING_VERSION: Codec[dict[str, Any]] = Codec("serving_version", dict, dict)
VERSION_BUILD: Codec[dict[str, Any]] = Codec("version_build", dict, dict)
