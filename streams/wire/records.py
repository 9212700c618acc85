"""The records on a flow's topics, as dataclasses: what stages, clients and operators handle.

They know nothing of Avro: ``streams.wire.codec`` maps each to its schema
(``streams/schemas/<record>.avsc``) and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from processors.document import Document
from processors.index.lexical import CorpusStats

__all__ = ["PartialResult", "Request", "SearchReply", "ServingVersion", "ShardStatus", "StageStatus", "VersionBuild"]


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
    lexical_statistics: LexicalStatistics | None = None
    """Set by the fan-out when the lexical arm answers; None on what a client writes."""


@dataclass(frozen=True, slots=True)
class LexicalStatistics:
    """Corpus-wide BM25 statistics for one request's terms, per field ('' for nodes without one), and
    the analyzer that made the terms: what every shard of the request scores with."""

    analyzer: str
    fields: dict[str, CorpusStats]

    def for_field(self, field_name: str | None) -> CorpusStats:
        """One field's statistics, or, for a search of every field (None), their sum (Lucene would score
        each field apart; a unit belongs to one field, so the sum counts each unit once)."""
        if field_name is None:
            return CorpusStats.sum(self.fields.values())
        return self.fields.get(field_name, CorpusStats())


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


@dataclass(slots=True)
class ShardStatus:
    """One shard of an index stage process, as it reports it (``stage_status.avsc``)."""

    partition: int
    documents: int
    vectors: int
    encoded_offset: int
    ingest_offset: int
    index_types: list[str]
    restoring: bool = False
    """Still replaying its partition: not serving."""
    missing: int = 0
    """Documents the shard may lack (an upper bound): its topic lost records before it applied them."""
    missing_reason: str = ""


@dataclass(slots=True)
class StageStatus:
    """What one stage process reports every few seconds on ``<flow>.status`` (compacted), keyed by
    ``stage/member``: read by ``streamsearch status`` and a reindex's progress."""

    stage: str
    member: str
    """host:pid of the process."""
    ts_ms: int
    processed: int
    """Records consumed since the process started."""
    rate: float
    """Records per second over the last report interval."""
    dead_letters: int = 0
    partitions: list[int] = field(default_factory=list)
    """Index-path partitions owned."""
    shards: list[ShardStatus] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ServingVersion:
    """Which index version of a flow answers queries: the record keyed ``serving`` on ``<flow>.versions``."""

    version: int
    since_ms: int
    """When it started serving."""
    previous: int | None = None
    """The version it replaced."""
    reason: str = ""
    """First run, reindex caught up, or an operator's switch."""


@dataclass(frozen=True, slots=True)
class VersionBuild:
    """A reindex started building a version (key ``build/v<N>`` on ``<flow>.versions``): what its executors
    were, so that a rerun with other executors cannot mix two models into one version."""

    version: int
    fingerprint: str
    """sha256 of the stages' executors and their settings."""
    started_ms: int


@dataclass(frozen=True, slots=True)
class LexicalCount:
    """One shard's own lexical statistic, on ``<flow>.lexical-stats`` (``lexical_count.avsc``): keyed by
    :func:`lexical_key`; a term's document frequency in a field, or a field's units and tokens."""

    count: int
    tokens: int = 0


LEXICAL_KEY_SEPARATOR = "\0"
"""Between the field and the term of a ``<flow>.lexical-stats`` key: neither a field name nor an analysed
term holds NUL (validated names; tantivy's simple tokenizer splits on it)."""


LEXICAL_SNAPSHOT_BEGIN = b"\0\0snapshot-begin"
LEXICAL_SNAPSHOT_END = b"\0\0snapshot-end"
"""The keys of the records a shard writes before and after the whole set of its statistics (when a partition
opens): a reader then forgets the partition's keys the set did not refresh, which a crash between the store's
write and the records left behind (a term the shard no longer holds). No field or term holds NUL, so no
statistic has these keys; compaction keeps the latest of each."""


def lexical_key(field: str, term: str = "") -> bytes:
    """The key of a field's term (its document frequency), or with no term, of the field's totals."""
    return f"{field}{LEXICAL_KEY_SEPARATOR}{term}".encode()


def parse_lexical_key(key: bytes) -> tuple[str, str]:
    """(field, term) of a ``<flow>.lexical-stats`` key; term "" for the field's totals.

    :raises ValueError: for a key without the separator.
    """
    field, separator, term = key.decode().partition(LEXICAL_KEY_SEPARATOR)
    if not separator:
        raise ValueError(f"a lexical statistics key needs field NUL term, got {key[:80]!r}")
    return field, term

