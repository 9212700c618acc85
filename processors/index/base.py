"""What a shard index takes and gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from processors.document import Document, Score

__all__ = ["DocumentCodec", "Change", "Hit", "ApplyResult", "IndexStats"]


class DocumentCodec(Protocol):
    """Turns Documents into bytes and back; the runtime injects its Avro codec."""

    def encode(self, doc: Document) -> bytes: ...

    def decode(self, data: bytes) -> Document: ...


@dataclass(frozen=True, slots=True)
class Change:
    """One change to a shard, in stream order: an upsert, or a delete when ``doc`` is None."""

    doc_id: str
    doc: Document | None


@dataclass(frozen=True, slots=True)
class Hit:
    """One vector hit: the indexed node, the root document it belongs to and its score."""

    root: Document
    node: Document
    score: Score


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one write batch changed."""

    upserted: int
    deleted: int
    vectors_added: int
    vectors_removed: int


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Sizes of a shard index, for status and metrics."""

    documents: int
    vectors: int
    checkpoint: bytes | None
