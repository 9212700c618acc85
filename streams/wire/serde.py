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
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, TypeVar

import fastavro
import numpy as np
from fastavro.schema import fingerprint, to_parsing_canonical_form

from processors.document import Direction, Document, Score, validate_document
from streams.exceptions import DecodeLimitError, FlowConfigError, SerdeError
from streams.resources import SCHEMAS

__all__ = [
    "DECODE_LIMITS",
    "DOCUMENT",
    "PARTIAL_RESULT",
    "REQUEST",
    "SCHEMA_HEADER",
    "SEARCH_REPLY",
    "SERVING_VERSION",
    "STAGE_STATUS",
    "VERSION_BUILD",
    "Codec",
    "DecodeLimits",
    "PartialResult",
    "Request",
    "SearchReply",
]

SCHEMA_HEADER = "ss-schema"

T = TypeVar("T")

MAX_DOCUMENT_DEPTH_ENV = "STREAMSEARCH_MAX_DOCUMENT_DEPTH"
MAX_DOCUMENTS_ENV = "STREAMSEARCH_MAX_DOCUMENTS"


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one record may hold, checked before fastavro's reader runs: it recurses in C once
    per nested record, so a Document nested thousands deep would overflow the stack.

    :param max_document_depth: Documents nested in Documents (chunks, matches); a root is 1.
    :param max_documents: Documents in one record, at any depth.
    """

    max_document_depth: int = 32
    max_documents: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_document_depth", "max_documents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FlowConfigError(f"{name} must be a positive integer, not {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> DecodeLimits:
        """The defaults, overridden by ``STREAMSEARCH_MAX_DOCUMENT_DEPTH`` and ``STREAMSEARCH_MAX_DOCUMENTS``.

        :raises FlowConfigError: if a variable is set to anything but a positive integer.
        """
        values = {}
        for name, env in (("max_document_depth", MAX_DOCUMENT_DEPTH_ENV), ("max_documents", MAX_DOCUMENTS_ENV)):
            raw = environ.get(env, "").strip()
            if raw:
                if not raw.isdigit() or int(raw) < 1:
                    raise FlowConfigError(f"{env}={raw!r}: expected a positive integer")
                values[name] = int(raw)
        return cls(**values)


DECODE_LIMITS = DecodeLimits.from_env()
"""The caps every codec applies unless a call passes its own."""


@dataclass(slots=True)
class Request:
    """A request envelope (see ``streams/schemas/request.avsc``)."""

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
    warning: str | None = None
    """Why this part is short though it answered (not an error: its matches count)."""
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
    warnings: list[str] = field(default_factory=list)
    """Why a query has fewer than top_k matches though every shard answered: not an error."""
    version: int = 1
    """The index version that answered (``FlowTopics``): a reindex switches it."""


def _load_schemas() -> dict[str, Any]:
    named: dict[str, Any] = {}
    parsed = {}
    for name in ("document", "request", "partial_result", "search_reply", "stage_status", "serving_version",
                 "version_build"):
        with open(SCHEMAS / f"{name}.avsc") as f:
            parsed[name] = fastavro.parse_schema(json.load(f), named_schemas=named)
    return parsed


_PARSED = _load_schemas()

EARLIER_SCHEMAS: Mapping[str, tuple[str, ...]] = {"document": ("document-1",)}
"""Earlier writer schemas (``streams/schemas/earlier/<name>.avsc``) a codec still reads, resolved to the
current one: records kept in ``<flow>.ingest``, ``<flow>.encoded`` and a shard's store outlive
an upgrade. document-1 held tags as strings only."""


def _load_earlier(name: str) -> Any:
    with open(SCHEMAS / "earlier" / f"{name}.avsc") as f:
        return fastavro.parse_schema(json.load(f), named_schemas={})


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
    return {
        "request_id": r.request_id,
        "docs": [doc_to_avro(d) for d in r.docs],
        "partial": r.partial,
        "missing_shards": r.missing_shards,
        "stale_shards": r.stale_shards,
        "restoring_shards": r.restoring_shards,
        "errors": r.errors,
        "warnings": r.warnings,
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
        warnings=list(rec["warnings"]),
        version=rec["version"],
    )


# -- bounded pre-scan ----------------------------------------------------------------------------
# A walk of the writer schema's binary encoding with an explicit stack: it checks the caps and
# that every declared length fits in the bytes left, and copies nothing (strings are skipped).

_NODE_RECORDS = frozenset({"streamsearch.Document"})
"""The records the caps count: the recursive Document."""

# Node kinds, the commonest first (the scan tests them in this order). _OPTIONAL is a union of
# null and one other type: one zero byte, the commonest Document field.
_LEN, _OPTIONAL_LEN, _VARINT, _SKIP, _OPTIONAL, _ARRAY, _RECORD, _UNION, _ENUM = range(9)
_FIXED_SIZES = {"null": 0, "boolean": 1, "float": 4, "double": 8}
_LEN_NODE = (_LEN,)


def _compile(schema: Any, named: Mapping[str, Any], done: dict[str, Any]) -> tuple[Any, ...]:
    """A parsed schema as nested tuples ``(kind, ...)``; a record is one shared node, so a
    Document's ``chunks`` point back at it."""
    if isinstance(schema, list):
        branches = tuple(_compile(branch, named, done) for branch in schema)
        if len(branches) == 2 and branches[0] == (_SKIP, 0):
            return (_OPTIONAL_LEN,) if branches[1] is _LEN_NODE else (_OPTIONAL, branches[1])
        return (_UNION, branches)
    if isinstance(schema, str):
        if schema in done:
            return done[schema]
        schema = named[schema] if schema in named else {"type": schema}
    kind = schema["type"]
    if not isinstance(kind, str) or kind in named:
        return _compile(kind, named, done)
    if kind in _FIXED_SIZES:
        return (_SKIP, _FIXED_SIZES[kind])
    if kind in ("int", "long"):
        return (_VARINT,)
    if kind in ("string", "bytes"):
        return _LEN_NODE
    if kind == "fixed":
        return (_SKIP, schema["size"])
    if kind == "enum":
        return (_ENUM, len(schema["symbols"]))
    if kind == "array":
        items = _compile(schema["items"], named, done)
        if not _takes_bytes(items):  # a count could not be checked against the bytes left
            raise TypeError(f"the pre-scan cannot bound an array of zero-byte items: {schema}")
        return _array((items,))
    if kind == "map":  # an array of (key, value) items, as far as the scan is concerned
        return _array((_LEN_NODE, _compile(schema["values"], named, done)))
    if kind in ("record", "error"):
        fields: list[Any] = []
        node = done[schema["name"]] = (_RECORD, fields, schema["name"] in _NODE_RECORDS)
        fields.extend(_compile(f["type"], named, done) for f in schema["fields"])
        return node
    raise TypeError(f"no pre-scan for Avro type {kind!r}")


def _array(items: tuple[Any, ...]) -> tuple[Any, ...]:
    """An array node: its item's fields, and whether they are all strings or numbers (scanned in place)."""
    return (_ARRAY, items, all(item[0] in (_LEN, _VARINT) for item in items))


def _takes_bytes(node: tuple[Any, ...]) -> bool:
    if node[0] == _SKIP:
        return bool(node[1])
    return node[0] != _RECORD or any(_takes_bytes(f) for f in node[1])


def _varint_tail(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte had the continuation bit: (zigzag value, next pos)."""
    value, shift = first & 0x7F, 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"a varint at byte {pos} runs over 10 bytes")


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, next pos)."""
    byte = data[pos]
    if byte < 0x80:
        value, pos = byte, pos + 1
    elif data[pos + 1] < 0x80:  # two bytes: lengths of embeddings, most offsets
        value, pos = (byte & 0x7F) | (data[pos + 1] << 7), pos + 2
    else:
        value, pos = _varint_tail(data, pos + 1, byte)
    return (value >> 1) ^ -(value & 1), pos


def _block(data: bytes, pos: int) -> tuple[int, int]:
    """An array or map block's item count (0 ends the array), checked against the bytes left."""
    byte = data[pos]
    if byte < 0x80 and not byte & 1:  # a count under 64
        count, pos = byte >> 1, pos + 1
    else:
        count, pos = _long(data, pos)
    if count < 0:  # a block with its size in bytes; the items follow all the same
        count = -count
        size, pos = _long(data, pos)
        if not 0 <= size <= len(data) - pos:
            raise ValueError(f"a block of {size} bytes at byte {pos} with {len(data) - pos} bytes left")
    if count > len(data) - pos:  # every item takes at least one byte (checked by _compile)
        raise ValueError(f"a block of {count} items at byte {pos} with {len(data) - pos} bytes left")
    return count, pos


def _scan_flat(data: bytes, pos: int, count: int, items: tuple[Any, ...]) -> int:
    """Skip the blocks of an array or map of strings and numbers, the first block's count read."""
    end = len(data)
    while count:
        for _ in range(count):
            for item in items:
                byte = data[pos]
                if byte > 0x7F:
                    length, pos = _long(data, pos)
                else:
                    length, pos = (byte >> 1) ^ -(byte & 1), pos + 1
                if item[0] == _LEN:
                    if not 0 <= length <= end - pos:
                        raise ValueError(f"a length of {length} at byte {pos} with {end - pos} bytes left")
                    pos += length
        count, pos = _block(data, pos)
    return pos


def _prescan(data: bytes, root: tuple[Any, ...], limits: DecodeLimits, name: str) -> None:
    """Walk one record without recursion or copies, so nothing unbounded reaches fastavro.

    :raises DecodeLimitError: if Documents nest deeper or are more than ``limits`` allow.
    :raises SerdeError: on a length or count larger than the bytes left, or malformed bytes.
    """
    end = len(data)
    pos = depth = documents = 0
    max_depth, max_documents = limits.max_document_depth, limits.max_documents
    seq: Any = (root,)
    i = 0
    # Frames: (seq, i) resumes a sequence of fields, [node, left] an array or map block, None
    # leaves a Document.
    stack: list[Any] = []
    push, pop = stack.append, stack.pop
    try:
        while True:
            n = len(seq)
            while i < n:
                node = seq[i]
                i += 1
                kind = node[0]
                if kind == _OPTIONAL_LEN or kind == _LEN:
                    byte = data[pos]
                    pos += 1
                    if kind == _OPTIONAL_LEN:
                        if byte == 0:
                            continue
                        if byte != 2:  # a longer varint, or no branch
                            index, pos = _long(data, pos - 1)
                            if index == 0:
                                continue
                            if index != 1:
                                raise ValueError(f"union branch {index} at byte {pos} of 2")
                        byte = data[pos]
                        pos += 1
                    if byte > 0x7F:
                        length, pos = _long(data, pos - 1)
                    else:
                        length = (byte >> 1) ^ -(byte & 1)
                    if not 0 <= length <= end - pos:
                        raise ValueError(f"a length of {length} at byte {pos} with {end - pos} bytes left")
                    pos += length
                elif kind == _ARRAY:
                    if data[pos] == 0:  # empty
                        pos += 1
                        continue
                    count, pos = _block(data, pos)
                    if count == 0:  # written in more than one byte
                        continue
                    if node[2]:
                        pos = _scan_flat(data, pos, count, node[1])
                        continue
                    push((seq, i))
                    push([node, count - 1])
                    seq, i = node[1], 0
                    n = len(seq)
                elif kind == _VARINT:
                    byte = data[pos]
                    pos = _long(data, pos)[1] if byte > 0x7F else pos + 1
                elif kind == _SKIP:
                    pos += node[1]
                elif kind == _RECORD:
                    push((seq, i))
                    if node[2]:
                        depth += 1
                        documents += 1
                        if depth > max_depth:
                            raise DecodeLimitError(
                                f"{name} record refused: Documents nested deeper than max_document_depth="
                                f"{max_depth} ({MAX_DOCUMENT_DEPTH_ENV})")
                        if documents > max_documents:
                            raise DecodeLimitError(
                                f"{name} record refused: more than max_documents={max_documents} Documents "
                                f"({MAX_DOCUMENTS_ENV})")
                        push(None)
                    seq, i = node[1], 0
                    n = len(seq)
                elif kind == _ENUM:
                    index, pos = _long(data, pos)
                    if not 0 <= index < node[1]:
                        raise ValueError(f"enum symbol {index} at byte {pos} of {node[1]}")
                else:  # _OPTIONAL or _UNION: scan the chosen branch as a sequence of one
                    if data[pos] == 0 and kind == _OPTIONAL:
                        pos += 1
                        continue
                    index, pos = _long(data, pos)
                    branches = ((_SKIP, 0), node[1]) if kind == _OPTIONAL else node[1]
                    if not 0 <= index < len(branches):
                        raise ValueError(f"union branch {index} at byte {pos} of {len(branches)}")
                    push((seq, i))
                    seq, i, n = (branches[index],), 0, 1
            if not stack:
                break
            frame = pop()
            if frame is None:
                depth -= 1
            elif type(frame) is list:
                if frame[1] == 0:
                    frame[1], pos = _block(data, pos)
                    if frame[1] == 0:
                        continue
                frame[1] -= 1
                push(frame)
                seq, i = frame[0][1], 0
            else:
                seq, i = frame
    except IndexError:
        raise SerdeError(f"malformed {name} record: truncated") from None
    except ValueError as exc:
        raise SerdeError(f"malformed {name} record: {exc}") from None
    if pos > end:
        raise SerdeError(f"malformed {name} record: truncated")
    if pos != end:
        raise SerdeError(f"malformed {name} record: {end - pos} bytes left after decoding")


# -- codecs --------------------------------------------------------------------------------------


class Codec(Generic[T]):
    """Encodes one record type to schemaless Avro and back, checking the writer fingerprint."""

    def __init__(self, schema_name: str, to_avro: Any, from_avro: Any,
                 validate: Callable[[T], None] | None = None) -> None:
        """:param validate: checks a decoded value (raising ``InvalidDocumentError``), so that every
            reader of this type refuses what no writer of ours produces (NaN vectors, NUL in ids)."""
        self.schema = _PARSED[schema_name]
        self._validate = validate
        self.fingerprint = fingerprint(to_parsing_canonical_form(self.schema), "CRC-64-AVRO")
        self._to_avro = to_avro
        self._from_avro = from_avro
        self._scan_root = _compile(self.schema, self.schema.get("__named_schemas", {}), {})
        self._earlier: dict[str, tuple[Any, tuple[Any, ...]]] = {}
        """Earlier writer schemas by fingerprint, with their pre-scan trees."""
        for name in EARLIER_SCHEMAS.get(schema_name, ()):
            earlier = _load_earlier(name)
            self._earlier[fingerprint(to_parsing_canonical_form(earlier), "CRC-64-AVRO")] = (
                earlier, _compile(earlier, earlier.get("__named_schemas", {}), {}))

    def encode(self, value: T) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self.schema, self._to_avro(value))
        return buffer.getvalue()

    def decode(self, data: bytes, fingerprint_header: bytes | str | None = None, *,
               limits: DecodeLimits | None = None) -> T:
        """Decode a record, rejecting it if its header names another schema or it breaks the caps.

        :param limits: the caps to check before decoding; ``DECODE_LIMITS`` if None.
        :raises DecodeLimitError: if Documents nest deeper or are more than the caps allow.
        :raises SerdeError: on a foreign fingerprint, truncated or malformed bytes.
        :raises InvalidDocumentError: for a value the codec's validation refuses.
        """
        writer, scan_root = self.schema, self._scan_root
        if fingerprint_header is not None:
            seen = fingerprint_header.decode() if isinstance(fingerprint_header, bytes) else fingerprint_header
            if seen != self.fingerprint:
                if seen not in self._earlier:
                    raise SerdeError(f"record written with schema {seen}, expected {self.schema['name']} "
                                     f"{self.fingerprint}")
                writer, scan_root = self._earlier[seen]
        return self._decode(data, writer, scan_root, limits)

    def decode_earliest(self, data: bytes, *, limits: DecodeLimits | None = None) -> T:
        """Decode a headerless record written with the first schema of this type (an earlier one
        if there is one): what a shard stored before its values carried a format byte."""
        writer, scan_root = next(iter(self._earlier.values()), (self.schema, self._scan_root))
        return self._decode(data, writer, scan_root, limits)

    def _decode(self, data: bytes, writer: Any, scan_root: tuple[Any, ...], limits: DecodeLimits | None) -> T:
        _prescan(data, scan_root, limits or DECODE_LIMITS, self.schema["name"])
        buffer = io.BytesIO(data)
        reader = None if writer is self.schema else self.schema
        try:
            value = self._from_avro(fastavro.schemaless_reader(buffer, writer, reader))
        except Exception as exc:  # fastavro raises many types on garbage input
            raise SerdeError(f"malformed {self.schema['name']} record: {type(exc).__name__}: {exc}") from exc
        if buffer.tell() != len(data):
            raise SerdeError(
                f"malformed {self.schema['name']} record: {len(data) - buffer.tell()} bytes left after decoding"
            )
        if self._validate is not None:
            self._validate(value)
        return value

    def header(self) -> tuple[str, bytes]:
        return (SCHEMA_HEADER, self.fingerprint.encode())


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
        self._codec: Codec[Document] = Codec("document", doc_to_avro, doc_from_avro)

    def encode(self, doc: Document) -> bytes:
        return STORED_FORMAT + self._codec.encode(doc)

    def decode(self, data: bytes, *, limits: DecodeLimits | None = None) -> Document:
        if data[:1] == STORED_FORMAT:
            return self._codec.decode(data[1:], limits=limits)
        return self._codec.decode_earliest(data, limits=limits)


STORED_FORMAT = b"\x01"
"""The first byte of a stored document written with the current Document schema."""
STORED_DOCUMENT = StoredDocumentCodec()
REQUEST: Codec[Request] = Codec("request", _request_to_avro, _request_from_avro, _validate_docs)
PARTIAL_RESULT: Codec[PartialResult] = Codec("partial_result", _partial_to_avro, _partial_from_avro, _validate_docs)
SEARCH_REPLY: Codec[SearchReply] = Codec("search_reply", _reply_to_avro, _reply_from_avro)
STAGE_STATUS: Codec[dict[str, Any]] = Codec("stage_status", dict, dict)
"""Status records are plain dicts: they are read by people and scripts, never processed."""
SERVING_VERSION: Codec[dict[str, Any]] = Codec("serving_version", dict, dict)
VERSION_BUILD: Codec[dict[str, Any]] = Codec("version_build", dict, dict)
