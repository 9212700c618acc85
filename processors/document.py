"""The recursive Document: what flows through every stage.

A Document holds chunks (its parts, one granularity down) and matches (results, one
adjacency away). Scores carry their operator name and a direction, so that any sort
knows whether smaller or larger is better.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from processors.exceptions import InvalidDocumentError

__all__ = [
    "Direction", "Score", "Document", "TagValue", "traverse", "copy_tree",
    "MAX_EMBEDDING_MAGNITUDE", "MAX_TAG_INTEGER", "MAX_ID_BYTES", "validate_document", "validate_embedding", "validate_id",
    "validate_tag_value", "validate_text",
]

MAX_EMBEDDING_MAGNITUDE = 1e15
"""The largest absolute value an embedding may hold: an inner product or squared L2 distance of two
384-d vectors bounded by it stays far inside float32 (about 4e32 at most; float32 ends near 3.4e38).
Model outputs are many orders of magnitude smaller."""
_SQUARES_WITHIN_MAX = (MAX_EMBEDDING_MAGNITUDE * (1 - 1e-6)) ** 2
"""A float32 sum of squares at most this has every value within ``MAX_EMBEDDING_MAGNITUDE``
(``validate_embedding``'s fast path; the margin covers float32's rounding of the sum)."""

MAX_ID_BYTES = 512
"""The longest document id accepted, in UTF-8 bytes (it is the Kafka key and a RocksDB key)."""

MAX_TAG_INTEGER = 2**63 - 1
"""The largest integer a tag holds (an Avro long); a larger one is refused rather than rounded."""

TagValue = str | bool | int | float
"""What a tag holds: typed, as JSON wrote it, so that ``tags.minutes__lte: 10`` compares numbers
(``streams/schemas/document.avsc`` carries the type as a union branch)."""

_FLOAT32 = np.dtype(np.float32)
"""The dtype of every decoded embedding (``np.frombuffer`` of ``<f4`` gives this very object)."""
_ID_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""C0 and C1 control characters (NUL included), DEL, and surrogates (never valid UTF-8 alone)."""
_TEXT_REFUSED = re.compile(r"[\x00\ud800-\udfff]")
"""NUL, and surrogates (never valid UTF-8 alone): what text may not hold."""


def _text_refused(text: str) -> bool:
    """Whether ``_TEXT_REFUSED`` matches, found without the regex: it walks a string at ~7 ns a character
    (a 1,000-character text: 6.7 µs), where ``in`` (a memchr) and ``isascii`` (a flag) take ~50 ns, and
    UTF-8 encoding is what refuses a surrogate anyway (~1 ns a character)."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class Direction(str, enum.Enum):
    """Which way a score is better: a distance is better small, a similarity large."""

    DISTANCE = "distance"
    SIMILARITY = "similarity"


@dataclass(frozen=True, slots=True)
class Score:
    """A score with the operator that produced it and its direction."""

    value: float
    op_name: str
    direction: Direction

    def sort_key(self) -> float:
        """A key under which ascending order puts the best score first."""
        return self.value if self.direction is Direction.DISTANCE else -self.value


@dataclass(slots=True)
class Document:
    """A unit of search: a text, its chunks, its embedding, its matches."""

    id: str
    parent_id: str | None = None
    granularity: int = 0
    adjacency: int = 0
    mime_type: str = "text/plain"
    text: str | None = None
    blob: bytes | None = None
    uri: str | None = None
    embedding: np.ndarray | None = None
    tags: dict[str, TagValue] = field(default_factory=dict)
    field_name: str | None = None
    modality: str | None = None
    weight: float = 1.0
    offset: int = 0
    location: list[int] = field(default_factory=list)
    scores: dict[str, Score] = field(default_factory=dict)
    chunks: list[Document] = field(default_factory=list)
    matches: list[Document] = field(default_factory=list)


def traverse(doc: Document, path: str) -> Iterator[Document]:
    """Yield the documents a traversal path names, Jina-style.

    ``r`` is the root, each ``c`` goes one level into chunks and each ``m`` into matches:
    ``c`` yields the chunks, ``cc`` the chunks of chunks, ``cm`` the matches of chunks.

    :param doc: the root document.
    :param path: a string of ``r``, ``c`` and ``m``; ``r`` only alone.
    :raises ValueError: on any other letter.
    """
    if path == "r":
        yield doc
        return
    if not path or any(step not in "cm" for step in path):
        raise ValueError(f"traversal path {path!r}: use 'r' or a string of 'c' and 'm'")
    children = doc.chunks if path[0] == "c" else doc.matches
    rest = path[1:]
    for child in children:
        if rest:
            yield from traverse(child, rest)
        else:
            yield child


def copy_tree(doc: Document) -> Document:
    """Copy the tree (not the arrays), so a processor never mutates its caller's documents."""
    return dataclasses.replace(
        doc,
        chunks=[copy_tree(c) for c in doc.chunks],
        matches=[copy_tree(m) for m in doc.matches],
        tags=dict(doc.tags),
        scores=dict(doc.scores),
        location=list(doc.location),
    )


def validate_id(value: str, *, name: str = "id") -> None:
    """Refuse an id that is empty, over ``MAX_ID_BYTES``, or holds a control character or surrogate.

    :param name: names the value in the message (``id``, ``docs[3].id``...).
    :raises InvalidDocumentError: naming the field, the character and its index (ASCII-only message).
    """
    if not isinstance(value, str) or not value:
        raise InvalidDocumentError(f"{name} must be a non-empty string, got {_preview(value)}")
    bad = _ID_REFUSED.search(value)
    if bad is not None:
        raise InvalidDocumentError(f"{name} {_preview(value)} contains {_character(bad)} at index {bad.start()}")
    size = len(value.encode())
    if size > MAX_ID_BYTES:
        raise InvalidDocumentError(f"{name} {_preview(value)} is {size} bytes in UTF-8; at most {MAX_ID_BYTES}")


def validate_text(value: str | None, *, name: str = "text") -> None:
    """Refuse text holding NUL or a surrogate (not encodable as UTF-8); None passes.

    :param name: names the value in the message.
    :raises InvalidDocumentError: naming the field, the character and its index (ASCII-only message).
    """
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidDocumentError(f"{name} must be a string, got {type(value).__name__}")
    bad = _TEXT_REFUSED.search(value) if _text_refused(value) else None
    if bad is not None:
        raise InvalidDocumentError(f"{name} contains {_character(bad)} at index {bad.start()}")


def validate_document(doc: Document) -> None:
    """The one check of a Document entering the system (HTTP bridge, client, every stage's decode).

    The root id must pass ``validate_id``. Every node (the root, its chunks and matches, at any
    depth) must have text and tags ``validate_text`` accepts, a numeric embedding of finite values
    (NaN in an index makes every distance NaN and its order arbitrary), and a finite weight and
    scores. Chunk and match ids are not checked: they are never keys, only part of their root's record.

    :raises InvalidDocumentError: naming the first field refused.
    """
    validate_id(doc.id)
    if not _valid_quickly(doc):
        _validate_node(doc, "")  # the walk that names what it refuses (it may accept: see _valid_quickly)


def _valid_quickly(doc: Document) -> bool:
    """True if every node passes, found without naming anything: one pass over the tree and one BLAS call
    for all its float32 embeddings, where naming each field and checking each vector apart took about as
    long as reading the record (a replayed 10-chunk document). False sends the caller to ``_validate_node``,
    which says what is refused, or accepts what this could not settle: embeddings of other dtypes, and
    vectors whose squares add up past the bound only together."""
    vectors: list[np.ndarray] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        text = node.text
        if text is not None and (type(text) is not str or _text_refused(text)):
            return False
        if node.tags:
            try:
                for key, value in node.tags.items():
                    validate_text(key)
                    validate_tag_value(value)
            except InvalidDocumentError:
                return False
        embedding = node.embedding
        if embedding is not None:
            if type(embedding) is not np.ndarray or embedding.dtype is not _FLOAT32:
                return False
            vectors.append(embedding if embedding.ndim == 1 else embedding.reshape(-1))
        if not math.isfinite(node.weight):
            return False
        if node.scores and not all(math.isfinite(s.value) for s in node.scores.values()):
            return False
        stack += node.chunks
        stack += node.matches
    if not vectors:
        return True
    flat = vectors[0] if len(vectors) == 1 else np.concatenate(vectors)
    return float(np.dot(flat, flat)) <= _SQUARES_WITHIN_MAX  # NaN and inf fail it, as in validate_embedding


def _validate_node(node: Document, where: str) -> None:
    validate_text(node.text, name=f"{where}text")
    for key, value in node.tags.items():
        validate_text(key, name=f"{where}tags key {_preview(key)}")
        validate_tag_value(value, name=f"{where}tags[{_preview(key)}]")
    if node.embedding is not None:
        validate_embedding(node.embedding, f"{where}embedding")
    if not math.isfinite(node.weight):
        raise InvalidDocumentError(f"{where}weight must be a finite number, got {node.weight!r}")
    for name, score in node.scores.items():
        if not math.isfinite(score.value):
            raise InvalidDocumentError(f"{where}scores[{_preview(name)}] must be a finite number, got {score.value!r}")
    for i, chunk in enumerate(node.chunks):
        _validate_node(chunk, f"{where}chunks[{i}].")
    for i, match in enumerate(node.matches):
        _validate_node(match, f"{where}matches[{i}].")


def validate_tag_value(value: object, *, name: str = "tag") -> None:
    """Refuse a tag value the wire cannot carry as it is: a string ``validate_text`` refuses, an
    integer beyond an Avro long, a NaN or infinity, or anything but a string, boolean or number.

    :raises InvalidDocumentError: naming the tag.
    """
    if isinstance(value, str):
        validate_text(value, name=name)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -MAX_TAG_INTEGER - 1 <= value <= MAX_TAG_INTEGER:
            raise InvalidDocumentError(f"{name} is an integer beyond +-2**63; write it as a string")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidDocumentError(f"{name} must be a finite number, got {value!r}")
    else:
        raise InvalidDocumentError(f"{name} must be a string, boolean or number, got {type(value).__name__}")


def validate_embedding(value: object, name: str = "embedding") -> None:
    """Refuse an embedding an index cannot score: not numeric, NaN or infinite once stored as float32
    (as every index stores it: 1e300 in float64 is inf there), or beyond ``MAX_EMBEDDING_MAGNITUDE``.

    :raises InvalidDocumentError: naming the field.
    """
    vector = np.asarray(value)
    if vector.dtype.kind not in "fiu":
        raise InvalidDocumentError(f"{name} has dtype {vector.dtype}; a numeric (float or integer) array is needed")
    if vector.dtype == np.float32:  # the usual vector: no copy, no error state to set
        stored = vector
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            stored = vector.astype(np.float32)
    if not stored.size:
        return
    # Every decode runs this: first one BLAS call. A sum of squares within MAX**2 (less float32's
    # rounding) bounds every value; NaN or inf anywhere makes it NaN or inf, and fails the test.
    flat = stored.reshape(-1)
    if float(np.dot(flat, flat)) <= _SQUARES_WITHIN_MAX:
        return
    # Then the exact pass: the largest magnitude is NaN if any value is (max propagates NaN),
    # infinite if any is, and otherwise says whether scores could overflow.
    peak = float(max(stored.max(), -stored.min()))
    if peak <= MAX_EMBEDDING_MAGNITUDE:
        return
    if not math.isfinite(peak):
        raise InvalidDocumentError(f"{name} holds NaN or infinite values (as float32)")
    raise InvalidDocumentError(f"{name} holds values beyond +-{MAX_EMBEDDING_MAGNITUDE:g}: its scores would "
                               "overflow float32")


def _character(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    if code == 0:
        return "NUL (U+0000)"
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate U+{code:04X}"
    return f"control character U+{code:04X}"


def _preview(value: object) -> str:
    """An ASCII-only, bounded rendering: messages travel in headers and JSON that must encode."""
    text = ascii(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
