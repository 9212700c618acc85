"""A shard's RocksDB: documents, vectors and the consumed checkpoint under one key layout.

RocksDB is the source of truth of a shard index. Every write (upserts, deletes and the caller's
checkpoint) goes into one WriteBatch, so after a crash the stored checkpoint says exactly which
input the stored data reflects. Only this module knows how keys and values are laid out.

Writes skip RocksDB's write-ahead log, as Kafka Streams' stores do: the topic a shard applies is its
log. A crash then loses the writes since the last memtable flush, their checkpoint with them (a write
batch lands in one memtable whole, and flushes keep the order, so what survives is a prefix of the
batches), and the shard goes on from the checkpoint kept, reading those records again. The memtable
is flushed ``FLUSH_INTERVAL_S`` after a write at the latest (``flush_if_due``, which the index stage also
calls when idle), so that a slow trickle of documents is never held only in memory for longer (the
topic's retention could delete what a crash would then need again), and at close. Measured: the log took
2.5-5 us of a 384-d vector's 5-7 us write (rocksdict, batches of 32-256 vectors), and replaying 100,000
vectors without it took 0.29 s instead of 0.41.

Key layout (one RocksDB per shard):
    d/<doc id>     the root document, embeddings stripped (codec bytes)
    dv/<doc id>    int64 ids of the document's vectors
    v/<vector id>  float32 vector bytes + the owner: 0xFF, then doc id, node path and field name,
                   each as a big-endian uint32 byte count and its UTF-8 bytes
    l/<vector id>  the lexical arm's term counts of the vector's node (term NUL count NUL ...), if its text has terms
    s/<doc id>     the document's filterable tag values, JSON {field: [values]}, if it has any (format 4)
    m/checkpoint   the caller's opaque checkpoint
    m/next_vid     the next vector id
    m/config       dim and metric, checked on reopen
    m/analyzer     the analyzer the l/ counts come from (format 3)
    m/filterable   the field schema the s/ values follow, JSON {field: type} (format 4)
    m/format       the layout (4); a newer one is refused. A new shard is stamped 4 on its first open;
                   a format-2 shard stays 2 until the lexical arm is first kept (``replace_term_counts``
                   counts its stored documents and stamps 3), after which older code refuses to open it
                   (it would leave the counts of deleted vectors behind). Likewise a shard is stamped 4
                   when it first keeps field values (``replace_field_values``): format-3 code would leave
                   a deleted document's values behind, for a later document of the same id to inherit

A key is a fixed prefix and the whole id, and an owner is length-prefixed, so nothing stored
depends on what an id contains (NUL, '/', control characters...). Shards written before
format 2 hold owners as UTF-8 "<doc id>\\0<node path>\\0<field name>", with no 0xFF (never in
UTF-8): such a value is read by its last two NULs, so ids holding NUL are recovered too.
They are read as they are and never rewritten; every new vector is written in format 2.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rocksdict import BlockBasedOptions, Options, Rdict, WriteBatch, WriteOptions

from processors.document import Document
from processors.exceptions import ConfigError
from processors.index.base import DocumentCodec, Metric

__all__ = ["FORMAT", "Owner", "ShardStore", "ShardWrite"]

_DOC, _DOC_VIDS, _VEC, _TERMS = b"d/", b"dv/", b"v/", b"l/"
_CHECKPOINT, _NEXT_VID, _CONFIG, _FORMAT = b"m/checkpoint", b"m/next_vid", b"m/config", b"m/format"
_ANALYZER, _FILTERABLE, _FIELDS = b"m/analyzer", b"m/filterable", b"s/"
FORMAT = 4
"""The storage layout this code writes; it reads every one up to it."""
WRITE_BUFFER_BYTES = 16 << 20
"""RocksDB's memtable size (its default is 64 MiB, and two can be held while one flushes): every
vector passes through it, and a shard process peaked 46 MiB lower at 100,000 384-d vectors with
16 MiB, at the same apply rate (71 against 72 us per document, applied in one process)."""
FLUSH_INTERVAL_S = 5.0
"""The longest a write stays only in RocksDB's memtable (there is no write-ahead log: the module's docstring):
after a crash, at most this much of applied input is read again from the topic. Kafka Streams flushes its
stores at each commit, every 30 s by default."""
_OWNER_TAG = b"\xff"
"""Starts a format-2 owner; a format-1 owner is UTF-8 text, which never holds 0xFF."""
_VID, _U32 = struct.Struct(">q"), struct.Struct(">I")
"""A vector id in keys (big-endian, so keys sort by id); a part's byte count in an owner."""


def _vid_key(prefix: bytes, vid: int) -> bytes:
    """A vector's key under ``_VEC`` or ``_TERMS``: big-endian, so a prefix scan runs in id order."""
    return prefix + _VID.pack(vid)


Owner = tuple[str, str, str]
"""Whose vector it is: (doc id, node path, field name); the path is '' for the root, 'c3.c1' below."""


class ShardStore:
    """One shard's RocksDB, opened and closed by the shard index; it holds nothing derived.

    :param path: the shard's directory, one per flow, stage and partition.
    :param dim: vector width; stored with ``metric`` on the first open and checked on every later one.
    :param codec: turns stored documents into bytes and back.
    """

    def __init__(self, path: Path, *, dim: int, metric: Metric, codec: DocumentCodec) -> None:
        self.path = Path(path)
        self.dim = dim
        self.metric = metric
        self._codec = codec
        self._db: Rdict | None = None
        self._flushed_at = 0.0
        """When the memtable was last flushed (``time.monotonic``), or the store opened."""
        self._unflushed = False
        """The memtable holds a write not flushed yet."""

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def open(self) -> None:
        """Open (or create) the shard's RocksDB and check it was built for this dim and metric.

        :raises ConfigError: for a newer storage format, or a dim or metric other than stored.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_block_based_table_factory(_table_options())
        # The column family's options given again: without them, reopening a shard takes its table options from
        # the OPTIONS file, which RocksDB writes back without the bloom filter (rocksdict 0.3).
        self._db = Rdict(str(self.path), options=options, column_families={"default": options})
        writes = WriteOptions()
        writes.disable_wal = True  # the topic is the log (the module's docstring)
        self._db.set_write_options(writes)
        self._flushed_at, self._unflushed = time.monotonic(), False
        self._check_config()

    def close(self) -> None:
        """Flush the memtable and close RocksDB; safe to call twice."""
        if self._db is not None:
            try:
                self._db.flush(wait=True)
            finally:
                self._db.close()
                self._db = None

    def flush(self) -> None:
        """Write the memtable to disk now and wait for it: what was written survives a crash from here on."""
        self._open_db().flush(wait=True)
        self._flushed_at, self._unflushed = time.monotonic(), False

    def flush_if_due(self, *, interval_s: float | None = None) -> bool:
        """Start a flush of the memtable if it holds a write and the last flush is ``interval_s`` old
        (``FLUSH_INTERVAL_S`` if None). RocksDB's background thread writes it: no write waits. Cheap to call on
        every round of a loop. Returns whether the memtable holds no write unflushed now (one started counts)."""
        if self._unflushed and time.monotonic() - self._flushed_at >= (
                FLUSH_INTERVAL_S if interval_s is None else interval_s):
            self._open_db().flush(wait=False)
            self._flushed_at, self._unflushed = time.monotonic(), False
        return not self._unflushed

    def _write(self, batch: WriteBatch) -> None:
        self._open_db().write(batch)
        self._unflushed = True
        self.flush_if_due()

    def destroy(self) -> None:
        """Close and delete every file of this shard."""
        self.close()
        Rdict.destroy(str(self.path))

    # -- reads -----------------------------------------------------------------------------

    def next_vid(self) -> int:
        """The next vector id to give: ids are never reused."""
        raw = self._open_db().get(_NEXT_VID)
        return _VID.unpack(raw)[0] if raw else 0

    def checkpoint(self) -> bytes | None:
        """The checkpoint stored with the last write, or None for a new shard."""
        return self._open_db().get(_CHECKPOINT)

    def document(self, doc_id: str) -> Document | None:
        """The stored root document (without embeddings), or None."""
        raw = self._open_db().get(_DOC + _utf8(doc_id))
        return self._codec.decode(raw) if raw is not None else None

    def document_count(self) -> int:
        """Stored root documents, counted on disk (a scan of every one: the shard counts them once, at open)."""
        return sum(1 for _ in self._scan(_DOC_VIDS))

    def doc_ids(self) -> Iterator[str]:
        """Every stored root document id, in key order."""
        for key, _ in self._scan(_DOC_VIDS):
            yield key[len(_DOC_VIDS) :].decode("utf-8", "surrogatepass")

    def term_counts(self) -> Iterator[tuple[int, dict[str, int]]]:
        """Every stored unit's term counts (the lexical arm's), by vector id."""
        for key, value in self._scan(_TERMS):
            yield _VID.unpack(key[len(_TERMS):])[0], _unpack_terms(value)

    def field_values(self) -> Iterator[tuple[str, dict[str, list[Any]]]]:
        """Every stored document's filterable tag values (the field indexes'), by document id."""
        for key, value in self._scan(_FIELDS):
            yield key[len(_FIELDS):].decode("utf-8", "surrogatepass"), json.loads(value)

    @property
    def filterable(self) -> dict[str, str] | None:
        """The field schema the stored values follow; None: none stored (an older or a new shard)."""
        raw = self._open_db().get(_FILTERABLE)
        return json.loads(raw) if raw is not None else None

    @property
    def analyzer(self) -> str | None:
        """The name of the analyzer the stored term counts come from; None: none stored (an older shard)."""
        raw = self._open_db().get(_ANALYZER)
        return raw.decode() if raw is not None else None

    def vectors(self) -> tuple[np.ndarray, np.ndarray, list[Owner]]:
        """Every stored vector: ids, a (n, dim) float32 matrix and each one's owner."""
        ids, vectors, owners = [], [], []
        width = self.dim * 4
        for key, value in self._scan(_VEC):
            ids.append(_VID.unpack(key[len(_VEC) :])[0])
            vectors.append(np.frombuffer(value[:width], dtype="<f4"))
            owners.append(_unpack_owner(value[width:]))
        matrix = np.stack(vectors) if vectors else np.empty((0, self.dim), np.float32)
        return np.array(ids, dtype=np.int64), matrix, owners

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored float32 vectors of these vector ids, one row each, shape (len(ids), dim), in one
        multi-get: what a float16 flat index scores its candidates on (``half_scan.py``).

        :raises KeyError: for an id not stored (the index holds only stored vectors: a bug if raised).
        """
        width = self.dim * 4
        raws = self._open_db().get([_vid_key(_VEC, int(vid)) for vid in ids.tolist()])
        if any(raw is None for raw in raws):
            missing = [int(vid) for vid, raw in zip(ids.tolist(), raws) if raw is None]
            raise KeyError(f"vector ids {missing[:5]} are not stored in the shard at {self.path}")
        # a bytearray: the rows are the caller's to change, as a float32 index's copies are
        return np.frombuffer(bytearray().join(raw[:width] for raw in raws), dtype="<f4").reshape(len(raws), self.dim)

    # -- writes ----------------------------------------------------------------------------

    def begin(self, *, term_counts: bool = False, field_values: bool = False) -> ShardWrite:
        """A new atomic write; nothing is stored until :meth:`commit`.

        :param term_counts: the shard keeps the lexical arm's counts: a removal removes them too.
        :param field_values: the shard keeps filterable values: a removal removes them too.
        """
        return ShardWrite(self._open_db(), self._codec, term_counts=term_counts, field_values=field_values)

    def commit(self, write: ShardWrite, *, next_vid: int, checkpoint: bytes) -> None:
        """Store the staged write with the next vector id and the checkpoint, in one WriteBatch."""
        write.batch.put(_NEXT_VID, _VID.pack(next_vid))
        write.batch.put(_CHECKPOINT, checkpoint)
        self._write(write.batch)

    def replace_term_counts(self, counts: Iterable[tuple[int, Mapping[str, int]]], analyzer: str) -> None:
        """Store every unit's term counts anew, from ``analyzer``, in one WriteBatch: an older shard's first
        open, or one whose analyzer changed."""
        batch = WriteBatch(raw_mode=True)
        for key, _ in self._scan(_TERMS):
            batch.delete(key)
        for vid, unit_counts in counts:
            if unit_counts:
                batch.put(_vid_key(_TERMS, vid), _pack_terms(unit_counts))
        batch.put(_ANALYZER, analyzer.encode())
        self._stamp(batch, 3)
        self._write(batch)

    def replace_field_values(self, values: Iterable[tuple[str, Mapping[str, Sequence[Any]]]],
                             schema: Mapping[str, str]) -> None:
        """Store every document's filterable values anew, following ``schema``, in one WriteBatch: a
        shard's first open with fields declared, or one whose declaration changed."""
        batch = WriteBatch(raw_mode=True)
        for key, _ in self._scan(_FIELDS):
            batch.delete(key)
        for doc_id, doc_values in values:
            if doc_values:
                batch.put(_FIELDS + _utf8(doc_id), _pack_fields(doc_values))
        batch.put(_FILTERABLE, json.dumps(dict(schema), sort_keys=True).encode())
        self._stamp(batch, 4)
        self._write(batch)

    def _stamp(self, batch: WriteBatch, layout: int) -> None:
        """Raise the stored format to ``layout`` (never lower it): older code then refuses the shard."""
        stored = self._open_db().get(_FORMAT)
        if stored is None or int(stored) < layout:
            batch.put(_FORMAT, str(layout).encode())

    # -- internals -------------------------------------------------------------------------

    def _open_db(self) -> Rdict:
        if self._db is None:
            raise ConfigError(f"shard index at {self.path} is not open: call warm_up() first")
        return self._db

    def _check_config(self) -> None:
        db = self._open_db()
        stored_format = db.get(_FORMAT)
        if stored_format is not None and int(stored_format) > FORMAT:
            raise ConfigError(f"shard index at {self.path} has storage format {int(stored_format)}, this "
                              f"streamsearch reads up to {FORMAT}: upgrade it, or rebuild the shard by replay")
        wanted = json.dumps({"dim": self.dim, "metric": self.metric}).encode()
        stored = db.get(_CONFIG)
        if stored is None:
            db.put(_CONFIG, wanted)
        elif stored != wanted:
            was, now = json.loads(stored), json.loads(wanted)
            changed = ", ".join(f"{key} {was.get(key)!r}, now {value!r}" for key, value in now.items()
                                if was.get(key) != value)
            raise ConfigError(f"shard index at {self.path} was built with {changed}: rebuild it by replay")
        if stored_format is None:
            db.put(_FORMAT, str(FORMAT).encode())

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._open_db().items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value


class ShardWrite:
    """One atomic write being staged (:meth:`ShardStore.begin`): documents removed and put, with their vectors.

    :param db: the open RocksDB, read for what a removal removes; written only by :meth:`ShardStore.commit`.
    """

    def __init__(self, db: Rdict, codec: DocumentCodec, *, term_counts: bool = False,
                 field_values: bool = False) -> None:
        self._db = db
        self._codec = codec
        self._term_counts = term_counts
        self._field_values = field_values
        self.batch = WriteBatch(raw_mode=True)
        self.net_documents = 0
        """Root documents this write adds, less those it removes: what the shard's count moves by once committed."""

    def remove_documents(self, doc_ids: Sequence[str]) -> list[int]:
        """Stage the removal of these stored documents and their vectors, looked up in one multi-get
        (a point lookup per document cost a fresh insert about 4 us of its index stage's 65).

        :returns: the ids of the vectors removed, in ``doc_ids`` order; none for a document not stored.
        """
        if not doc_ids:
            return []
        keys = [_utf8(doc_id) for doc_id in doc_ids]
        removed: list[int] = []
        for key, raw in zip(keys, self._db.get([_DOC_VIDS + key for key in keys])):
            if raw is not None:
                removed += self._remove(key, raw)
        return removed

    def _remove(self, key: bytes, raw_vids: bytes) -> list[int]:
        self.net_documents -= 1
        vids = np.frombuffer(raw_vids, dtype=">i8").astype(np.int64).tolist()
        for vid in vids:
            self.batch.delete(_vid_key(_VEC, vid))
            if self._term_counts:  # no tombstone per vector where no counts are kept
                self.batch.delete(_vid_key(_TERMS, vid))
        self.batch.delete(_DOC + key)
        self.batch.delete(_DOC_VIDS + key)
        if self._field_values:
            self.batch.delete(_FIELDS + key)
        return vids

    def put_vector(self, vid: int, vector: np.ndarray, owner: Owner) -> None:
        """Stage one vector (little-endian float32) and its owner, in format 2."""
        self.batch.put(_vid_key(_VEC, vid), vector.tobytes() + _pack_owner(*owner))

    def stored_term_counts(self, vids: Sequence[int]) -> list[tuple[int, dict[str, int]]]:
        """The stored term counts of these units, as before this write (what removing them takes away)."""
        if not vids:
            return []
        raws = self._db.get([_vid_key(_TERMS, vid) for vid in vids])  # one multi-get
        return [(vid, _unpack_terms(raw)) for vid, raw in zip(vids, raws) if raw is not None]

    def put_term_counts(self, vid: int, counts: Mapping[str, int]) -> None:
        """Stage one unit's term counts (the lexical arm's); a unit without terms stores nothing."""
        if counts:
            self.batch.put(_vid_key(_TERMS, vid), _pack_terms(counts))

    def put_field_values(self, doc_id: str, values: Mapping[str, Sequence[Any]]) -> None:
        """Stage a document's filterable values; a document without any stores nothing."""
        if values:
            self.batch.put(_FIELDS + _utf8(doc_id), _pack_fields(values))

    def put_document(self, doc: Document, vids: list[int], *, stored: bytes | None = None) -> None:
        """Stage a root document (the codec writes it without embeddings; ``stored``: what it would write,
        made by the caller) and the ids of its vectors."""
        self.batch.put(_DOC + _utf8(doc.id), self._codec.encode(doc) if stored is None else stored)
        self.batch.put(_DOC_VIDS + _utf8(doc.id), np.array(vids, dtype=">i8").tobytes())
        self.net_documents += 1


BLOOM_BITS_PER_KEY = 10
"""RocksDB's bloom filter size per key (its wiki's usual setting, about 1 % false positives): every
upsert first looks its document up, and for a new document that lookup misses in every file."""


def _table_options() -> BlockBasedOptions:
    """Block-based tables with a full-key bloom filter (not the older per-block one). Files written
    before it simply have none: readers of the same shard need no migration, and files written from
    then on have one (compaction rewrites the older)."""
    table = BlockBasedOptions()
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    return table


def _utf8(text: str) -> bytes:
    """UTF-8, lone surrogates passed through: any str has bytes that decode back to it."""
    return text.encode("utf-8", "surrogatepass")


def _pack_fields(values: Mapping[str, Sequence[Any]]) -> bytes:
    """Filterable values as compact JSON: strings, finite floats and booleans only (``stored_values``)."""
    return json.dumps({name: list(members) for name, members in values.items()}, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")


def _pack_terms(counts: Mapping[str, int]) -> bytes:
    """A unit's term counts as ``term NUL count NUL ...`` in UTF-8: the analyzer's terms are runs of
    letters and digits (tantivy's simple tokenizer), never NUL. Faster than JSON for the short texts of
    chunks (0.7 against 3.9 us for two terms)."""
    return "\0".join(f"{term}\0{count}" for term, count in counts.items()).encode()


def _unpack_terms(raw: bytes) -> dict[str, int]:
    parts = raw.decode().split("\0")
    return {parts[i]: int(parts[i + 1]) for i in range(0, len(parts), 2)}


def _pack_owner(doc_id: str, path: str, field_name: str) -> bytes:
    """A vector's owner in format 2: the tag, then each part as a uint32 byte count and its bytes."""
    doc, node, field = _utf8(doc_id), _utf8(path), _utf8(field_name)  # unrolled: once per vector, 3.0 -> 1.4 us
    return b"".join((_OWNER_TAG, _U32.pack(len(doc)), doc, _U32.pack(len(node)), node, _U32.pack(len(field)), field))


def _unpack_owner(raw: bytes) -> Owner:
    """A vector's (doc id, node path, field name), stored in format 2 or in format 1.

    :raises ConfigError: if the bytes are neither (a damaged shard: rebuild it by replay).
    """
    if not raw.startswith(_OWNER_TAG):
        # Format 1: path and field never hold NUL, so the last two NULs split it, even for ids holding NUL.
        parts = raw.decode("utf-8", "surrogatepass").rsplit("\0", 2)
        if len(parts) != 3:
            raise ConfigError(f"a stored vector owner is unreadable: {raw[:80]!r}")
        return parts[0], parts[1], parts[2]
    owner, at = [], len(_OWNER_TAG)
    for _ in range(3):
        if at + 4 > len(raw):
            raise ConfigError(f"a stored vector owner is truncated: {raw[:80]!r}")
        (size,) = _U32.unpack_from(raw, at)
        at += 4
        if at + size > len(raw):
            raise ConfigError(f"a stored vector owner is truncated: {raw[:80]!r}")
        owner.append(raw[at : at + size].decode("utf-8", "surrogatepass"))
        at += size
    return owner[0], owner[1], owner[2]
