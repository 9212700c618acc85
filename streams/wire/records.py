"""The records on a flow's topics, as dataclasses: what stages, clients and operators handle.

They know nothing of Avro: ``streams.wire.codec`` maps each to its schema
(``streams/schemas/<record>.avsc``) and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from processors.document import Document

__all__ = ["PartialResult", "Request", "SearchReply"]


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
