"""Documents to Avro and back: the recursive Document as fastavro's dicts, and what the compiled reader calls.

A Document's fields are ``document.avsc``'s, in its order (checked at import): the compiled reader
(``streams/wire/program.py``) makes each node by calling ``Document`` with a record's values in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from processors.document import Direction, Document, Score
from streams.wire.schemas import PARSED_SCHEMAS

__all__ = ["RECORD_CONSTRUCTORS", "doc_from_avro", "doc_to_avro", "doc_to_avro_without_embeddings"]

_EMBEDDING_BRANCH: str = next(branch["name"] for f in PARSED_SCHEMAS["document"]["fields"] if f["name"] == "embedding"
                              for branch in f["type"] if isinstance(branch, dict))
"""The record type of a Document's embedding union. An embedding is written as fastavro's
``(type name, value)`` union notation: otherwise the writer validates the value against each
branch to choose one, which took half of a 384-d document's encoding time (12 of 23 us)."""


def doc_to_avro(doc: Document, *, embeddings: bool = True) -> dict[str, Any]:
    """:param embeddings: False writes every node's embedding as null (a shard's stored documents:
        its vectors are kept apart), without copying the tree to clear them."""
    embedding = None
    if embeddings and doc.embedding is not None:
        array = np.asarray(doc.embedding)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        embedding = (_EMBEDDING_BRANCH,
                     {"dtype": little.dtype.str, "shape": list(array.shape), "data": little.tobytes()})
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
        "chunks": [doc_to_avro(c, embeddings=embeddings) for c in doc.chunks],
        "matches": [doc_to_avro(m, embeddings=embeddings) for m in doc.matches],
    }


def doc_to_avro_without_embeddings(doc: Document) -> dict[str, Any]:
    """A shard's stored form: every embedding null."""
    return doc_to_avro(doc, embeddings=False)


_DTYPES = {name: np.dtype(name) for name in ("<f4", "<f8", "<f2", "<i8", "<i4", "|i1", "|u1")}
"""Embedding dtypes by their wire name, made once (``np.dtype`` of a string takes ~0.5 us); other names
are parsed each time, and not kept: the name comes from the record."""


def _ndarray(dtype: str, shape: list[int], data: bytes) -> np.ndarray:
    """An embedding from its NdArray record's fields; no copy of ``data``."""
    return np.frombuffer(data, dtype=_DTYPES.get(dtype) or np.dtype(dtype)).reshape(shape)


def _score(value: float, op_name: str, direction: str) -> Score:
    return Score(value, op_name, Direction(direction))


def doc_from_avro(rec: dict[str, Any] | Document) -> Document:
    """A Document from fastavro's dict, or the one the compiled reader made already (``RECORD_CONSTRUCTORS``)."""
    if type(rec) is Document:
        return rec
    embedding = None
    if rec["embedding"] is not None:
        e = rec["embedding"]
        embedding = _ndarray(e["dtype"], e["shape"], e["data"])
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
        tags=rec["tags"],  # the reader's own fresh dict and list: no copy
        field_name=rec["field_name"],
        modality=rec["modality"],
        weight=rec["weight"],
        offset=rec["offset"],
        location=rec["location"],
        scores={name: _score(s["value"], s["op_name"], s["direction"]) for name, s in rec["scores"].items()},
        chunks=[doc_from_avro(c) for c in rec["chunks"]],
        matches=[doc_from_avro(m) for m in rec["matches"]],
    )


RECORD_CONSTRUCTORS: Mapping[str, Callable[..., Any]] = {
    "streamsearch.Document": Document, "streamsearch.NdArray": _ndarray, "streamsearch.Score": _score}
"""What the compiled reader (``streams/wire/program.py``) calls with a record's field values in order, by record
name: a Document is made from the bytes at once, where the reader's dict then ``doc_from_avro`` took about 2 us a
node. ``Document`` is called positionally: its fields are the schema's, in the schema's order (checked below)."""
_DOCUMENT_FIELDS = [f["name"] for f in PARSED_SCHEMAS["document"]["fields"]]
if [f.name for f in dataclasses.fields(Document)] != _DOCUMENT_FIELDS:
    raise ImportError(f"Document's fields must be document.avsc's, in its order ({_DOCUMENT_FIELDS}): "
                      "RECORD_CONSTRUCTORS calls it with the record's values in order")
