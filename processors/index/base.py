"""What a shard index takes and gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from processors.document import Direction, Document, Score
from processors.exceptions import ConfigError
from processors.index.types import IndexType

if TYPE_CHECKING:
    import faiss

__all__ = [
    "FLAT_SCANS",
    "ApplyResult",
    "Change",
    "DocumentCodec",
    "FlatScan",
    "Hit",
    "IndexStats",
    "IndexType",
    "Metric",
    "SearchTuning",
    "VectorIndex",
]

Metric = Literal["inner_product", "l2"]

FlatScan = Literal["auto", "float32", "float16"]
FLAT_SCANS: tuple[FlatScan, ...] = ("auto", "float32", "float16")
"""What the flat index holds and scans: float32 vectors, or float16 ones whose candidates are scored on the
stored float32 vectors, answers proven the float32 scan's (``processors/index/half_scan.py``); ``auto``: float32
until the shard's vectors would take ``AUTO_FLOAT16_BYTES`` in float32, float16 from then on."""


class DocumentCodec(Protocol):
    """Turns Documents into bytes and back; the runtime injects its Avro codec."""

    def encode(self, doc: Document) -> bytes:
        """The document without its embeddings (the index keeps its vectors apart): what ``decode``
        gives back has ``embedding`` None at every node."""
        ...

    def decode(self, data: bytes) -> Document: ...


@dataclass(frozen=True, slots=True)
class SearchTuning:
    """Per-call search effort; None keeps the index's configured value.

    An index reads only the knob it has (HNSW ``ef_search``, IVF ``nprobe``), so one request
    can carry both and still be answered by any index type.

    :param ef_search: HNSW candidate list size; larger is slower and more exact.
    :param nprobe: IVF lists scanned per query; ``nlist`` makes IVF-Flat exact.
    :param allowed: restrict the search to these vector ids (multi-field search).
    :raises ConfigError: if a knob is given and below 1.
    """

    ef_search: int | None = None
    nprobe: int | None = None
    allowed: np.ndarray | None = None
    """Only these vector ids may be returned (a field's vectors, a filter's), ascending; None allows all."""

    def selector(self) -> "faiss.IDSelector | None":
        """A FAISS selector for ``allowed``; the caller keeps it referenced while searching.

        A bitmap over the ids up to the largest allowed one: one bit test per candidate, and built in
        microseconds (a hash set of 50,000 ids, ``IDSelectorBatch``, took 3 ms to build, the bitmap 0.02 ms:
        ``benchmarks/filtered_search.py``). A few ids far apart (ids are never reused, so they grow) take
        the hash set instead, whose size follows their count.
        """
        import faiss  # here, not at the top: the flow's types above are read without the index extra

        if self.allowed is None:
            return None
        if not len(self.allowed) or int(self.allowed[-1]) >= 64 * len(self.allowed) + 65_536:
            return faiss.IDSelectorBatch(self.allowed)
        mask = np.zeros(int(self.allowed[-1]) + 1, dtype=np.bool_)
        mask[self.allowed] = True
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        selector.referenced_objects = [bits]  # FAISS only points at the bits: keep them alive with it
        return selector

    def __post_init__(self) -> None:
        for name in ("ef_search", "nprobe"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"search: {name} must be at least 1, got {value}")


class VectorIndex(Protocol):
    """A FAISS index over our own int64 vector ids; derived from RocksDB, never saved.

    Ids are never reused: a re-sent document gets new vector ids, its old ones are removed.
    """

    @property
    def op_name(self) -> str:
        """Names the index in a hit's score, e.g. ``faiss.hnsw_ip``."""
        ...

    @property
    def direction(self) -> Direction: ...

    @property
    def size(self) -> int:
        """Live vectors, removed ones excluded."""
        ...

    @property
    def needs_rebuild(self) -> bool:
        """True when it has drifted from the data it was built for and should be rebuilt."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids; returns how many were present."""
        ...

    def search(
        self, queries: np.ndarray, k: int, tuning: SearchTuning | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), best first, one row per query; id -1 pads a row short of k."""
        ...


@dataclass(frozen=True, slots=True)
class Change:
    """One change to a shard, in stream order: an upsert, or a delete when ``doc`` is None."""

    doc_id: str
    doc: Document | None
    stored: bytes | None = None
    """The upserted document as the shard's ``DocumentCodec`` encodes it, when the caller has those bytes
    already (the index stage cuts them from the record it read: ``StoredDocumentCodec.cut``); None: the
    shard encodes ``doc``. Must decode to ``doc`` without embeddings and blobs."""


class Hit:
    """One vector hit: its score, the root document it belongs to and the indexed node.

    A shard's hits may read their documents only when asked (:meth:`deferred`): a window reads
    ``top_k × chunk_oversample`` vectors, and reading, decoding and copying every hit's document cost a shard
    more than its scan (100,000 384-d vectors, top 10 of 50 hits: 3.7 ms of Python against 5.4 ms of FAISS a
    query, cProfile); a ranker that keeps ``top_k`` documents reads theirs only. ``doc_id`` never reads.
    """

    __slots__ = ("_node", "_read", "_root", "doc_id", "score")

    def __init__(self, root: Document, node: Document, score: Score) -> None:
        self.score = score
        self.doc_id = root.id
        self._read: Callable[[], tuple[Document, Document] | None] | None = None
        self._root: Document | None = root
        self._node: Document | None = node

    @classmethod
    def deferred(cls, doc_id: str, score: Score, read: Callable[[], tuple[Document, Document] | None]) -> Hit:
        """A hit whose root and node ``read`` gives when first asked for, or None if the document is gone."""
        hit = cls.__new__(cls)
        hit.score, hit.doc_id, hit._read, hit._root, hit._node = score, doc_id, read, None, None
        return hit

    @property
    def held(self) -> bool:
        """Whether its document is there to read (reads it); a hit that is not is skipped by rankers."""
        if self._read is not None:
            read, self._read = self._read, None
            self._root, self._node = read() or (None, None)
        return self._root is not None

    @property
    def root(self) -> Document:
        """:raises LookupError: if its document is gone (:attr:`held` says)."""
        return self._read_or_raise()[0]

    @property
    def node(self) -> Document:
        """:raises LookupError: if its document is gone (:attr:`held` says)."""
        return self._read_or_raise()[1]

    def _read_or_raise(self) -> tuple[Document, Document]:
        if not self.held:
            raise LookupError(f"hit of document {self.doc_id!r}: the document is not held")
        return self._root, self._node  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Hit(doc_id={self.doc_id!r}, score={self.score!r})"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one write batch changed."""

    upserted: int
    deleted: int
    vectors_added: int
    vectors_removed: int
    lexical_changed: frozenset[tuple[str, str]] = frozenset()
    """The lexical arm's (field, term) statistics it changed; (field, "") for a field's units and tokens."""


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Sizes of a shard index, for status and metrics."""

    documents: int
    vectors: int
    checkpoint: bytes | None
    index_types: tuple[str, ...] = ("flat",)
    """Index types built and kept in step, in ``INDEX_TYPES`` order; flat always is."""
