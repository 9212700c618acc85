"""A shard's RocksDB: documents, vectors and the consumed checkpoint, under the key layout of ``store_layout.py``.

RocksDB is the source of truth of a shard index. Every write (upserts, deletes and the caller's
checkpoint) goes into one WriteBatch, so after a crash the stored checkpoint says exactly which
input the stored data reflects.

Writes skip RocksDB's write-ahead log, as Kafka Streams' stores do: the topic a shard applies is its
log. A crash then loses the writes since the last memtable flush, their checkpoint with them (a write
batch lands in the memtables whole, and flushes keep the order, so what survives of each column family is a
prefix of the batches, the vectors' never shorter than the rest's), and the shard goes on from the checkpoint
kept, reading those records again. ``store_flush.py``
says when the memtables are flushed, and why the vectors' column family first; ``store_recovery.py`` what
an open puts right. Measured: the log took 2.5-5 us of a 384-d vector's 5-7 us write (rocksdict, batches of
32-256 vectors), and replaying 100,000 vectors without it took 0.29 s instead of 0.41.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rocksdict import ColumnFamily, Rdict, WriteBatch, WriteOptions

from processors.document import Document
from processors.exceptions import ConfigError
from processors.index.base import DocumentCodec, Metric
from processors.index.store_flush import MemtableFlusher
from processors.index.store_layout import (ANALYZER, CHECKPOINT, COMMITS, CONFIG, DOC, DOC_VIDS, FIELDS, FILTERABLE,
                                           FORMAT, FORMAT_KEY, NEXT_VID, TERMS, VEC, VECTORS_FAMILY, VID, Owner,
                                           pack_fields, pack_owner, pack_terms, pack_vids, scan, scan_keys,
                                           unpack_owner, unpack_terms, unpack_vids, utf8, vid_key)
from processors.index.store_options import db_options, vector_family_options, vector_reads
from processors.index.store_recovery import move_vectors, reconcile, settle_commits

__all__ = ["FORMAT", "Owner", "ShardStore", "ShardWrite"]

logger = logging.getLogger(__name__)

@dataclass(slots=True)
class _OpenShard:
    """An open shard's RocksDB, the column family of its vectors, and what flushes them."""

    vectors: Rdict
    """Before ``db``, here and in ``flusher``: an ``Rdict`` freed unclosed flushes its family, and slots are freed
    in order, so the vectors are flushed first then too (``store_flush.py``)."""
    family: ColumnFamily | None
    """The vectors' family as a WriteBatch names it; like ``vectors``, it keeps RocksDB open while referenced."""
    db: Rdict
    flusher: MemtableFlusher
    commits: int = 0
    """Commits taken, as ``m/commits`` holds it in both families (read once, at open)."""
    doc_keys: set[bytes] = dataclasses.field(default_factory=set)
    """The stored root documents' ids (UTF-8), read at open and followed by every commit: a document not among
    them is new, and its upsert looks nothing up. The multi-get of a bulk of new documents missed in every
    file's bloom filter: 14 % of ``ShardIngest.process``'s samples in a fresh bulk (``insert_cpu.py``, py-spy), 5.5 %
    after."""

    def close(self) -> None:
        """Let go of RocksDB: it closes once nothing refers to it (a family's handle and ``Rdict`` each do), and
        its lock is then free for the next open. A ``ShardWrite`` refers to this, never to the handle itself."""
        try:
            self.vectors.close()
        finally:
            self.family = None
            self.db.close()


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
        self._shard: _OpenShard | None = None

    @property
    def is_open(self) -> bool:
        return self._shard is not None

    def open(self) -> None:
        """Open (or create) the shard's RocksDB, check it was built for this dim and metric, and put right what an
        older layout or a crash left (``store_recovery.py``).

        :raises ConfigError: for a newer storage format, or a dim or metric other than stored.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        options = db_options()
        # Each family's options given: without them, reopening a shard takes its table options from the OPTIONS
        # file, which RocksDB writes back without the bloom filter (rocksdict 0.3).
        db = Rdict(str(self.path), options=options,
                   column_families={"default": options, VECTORS_FAMILY: vector_family_options()})
        writes = WriteOptions()
        writes.disable_wal = True  # the topic is the log (the module's docstring)
        db.set_write_options(writes)
        vectors = db.get_column_family(VECTORS_FAMILY)
        vectors.set_read_options(vector_reads())
        self._shard = shard = _OpenShard(vectors, db.get_column_family_handle(VECTORS_FAMILY), db,
                                         MemtableFlusher(vectors, db))
        try:
            self._check_config()
            self._recover()
            shard.doc_keys = {bytes(key[len(DOC_VIDS):]) for key in scan_keys(db, DOC_VIDS)}
        except BaseException:
            self._shard = None  # not open: a second open tries again, not finds it open half-way
            shard.close()
            raise

    def close(self) -> None:
        """Flush the memtables and close RocksDB; safe to call twice."""
        if self._shard is not None:
            shard, self._shard = self._shard, None
            try:
                shard.flusher.flush()
            finally:
                shard.close()

    def flush(self) -> None:
        """Write the memtables to disk now and wait for them (``MemtableFlusher.flush``)."""
        self._open_shard().flusher.flush()

    def flush_if_due(self, *, interval_s: float | None = None) -> bool:
        """Flush if a write has waited ``interval_s`` in memory (``MemtableFlusher.flush_if_due``). Returns whether
        no write is left only in memory."""
        return self._open_shard().flusher.flush_if_due(interval_s=interval_s)

    def _write(self, batch: WriteBatch) -> None:
        shard = self._open_shard()
        shard.db.write(batch)
        shard.flusher.wrote()

    def destroy(self) -> None:
        """Close and delete every file of this shard."""
        self.close()
        Rdict.destroy(str(self.path))

    # -- reads -----------------------------------------------------------------------------

    def next_vid(self) -> int:
        """The next vector id to give: ids are never reused."""
        raw = self._open_db().get(NEXT_VID)
        return VID.unpack(raw)[0] if raw else 0

    def checkpoint(self) -> bytes | None:
        """The checkpoint stored with the last write, or None for a new shard."""
        return self._open_db().get(CHECKPOINT)

    def document(self, doc_id: str) -> Document | None:
        """The stored root document (without embeddings), or None."""
        raw = self._open_db().get(DOC + utf8(doc_id))
        return self._codec.decode(raw) if raw is not None else None

    def document_count(self) -> int:
        """Stored root documents (their ids were read at open)."""
        return len(self._open_shard().doc_keys)

    def doc_ids(self) -> Iterator[str]:
        """Every stored root document id, in key order."""
        for key, _ in scan(self._open_db(), DOC_VIDS):
            yield key[len(DOC_VIDS) :].decode("utf-8", "surrogatepass")

    def term_counts(self) -> Iterator[tuple[int, dict[str, int]]]:
        """Every stored unit's term counts (the lexical arm's), by vector id."""
        for key, value in scan(self._open_db(), TERMS):
            yield VID.unpack(key[len(TERMS):])[0], unpack_terms(value)

    def field_values(self) -> Iterator[tuple[str, dict[str, list[Any]]]]:
        """Every stored document's filterable tag values (the field indexes'), by document id."""
        for key, value in scan(self._open_db(), FIELDS):
            yield key[len(FIELDS):].decode("utf-8", "surrogatepass"), json.loads(value)

    @property
    def filterable(self) -> dict[str, str] | None:
        """The field schema the stored values follow; None: none stored (an older or a new shard)."""
        raw = self._open_db().get(FILTERABLE)
        return json.loads(raw) if raw is not None else None

    @property
    def analyzer(self) -> str | None:
        """The name of the analyzer the stored term counts come from; None: none stored (an older shard)."""
        raw = self._open_db().get(ANALYZER)
        return raw.decode() if raw is not None else None

    def vectors(self) -> tuple[np.ndarray, np.ndarray, list[Owner]]:
        """Every stored vector: ids, a (n, dim) float32 matrix and each one's owner. What a shard's open reads
        whole: the ids and the matrix are each made in one copy of the joined bytes, not an array a row (a shard of
        200,000 384-d vectors opened in 4.05 s, now in 2.42-2.44; most of the rest is the owners).

        :raises ConfigError: if a key in the vectors' family is not a vector's (a damaged shard: rebuild it).
        """
        keys, values = [], []
        for key, value in self._open_shard().vectors.items(from_key=VEC):  # only m/commits sorts before them
            keys.append(key)
            values.append(value)
        if not keys:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32), []
        ids = b"".join(memoryview(key)[len(VEC):] for key in keys)
        if len(ids) != VID.size * len(keys) or not all(key.startswith(VEC) for key in (keys[0], keys[-1])):
            raise ConfigError(f"shard index at {self.path} holds a key that is not a vector's among its vectors: "
                              "rebuild it by replay")
        width = self.dim * 4
        # a bytearray: the rows are the caller's to change, as np.stack's were
        matrix = np.frombuffer(bytearray().join(memoryview(value)[:width] for value in values), dtype="<f4")
        owners = [unpack_owner(value[width:]) for value in values]
        return (np.frombuffer(ids, dtype=">i8").astype(np.int64), matrix.reshape(len(values), self.dim), owners)

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored float32 vectors of these vector ids, one row each, shape (len(ids), dim), in one
        multi-get: what a float16 flat index scores its candidates on (``half_scan.py``).

        :raises KeyError: for an id not stored (the index holds only stored vectors: a bug if raised).
        """
        width = self.dim * 4
        raws = self._open_shard().vectors.get([vid_key(VEC, int(vid)) for vid in ids.tolist()])
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
        return ShardWrite(self._open_shard(), self._codec, term_counts=term_counts, field_values=field_values)

    def commit(self, write: ShardWrite, *, next_vid: int, checkpoint: bytes) -> None:
        """Store the staged write with the next vector id and the checkpoint, in one WriteBatch, and count the
        commit in both column families (``store_recovery.reconcile`` compares them). It lands whole, or raising,
        not at all; the flush it may make due is left to the caller's next ``flush_if_due``, which could fail
        after it landed (a full disk) and interrupt what the caller does once it has.
        """
        shard = self._open_shard()
        shard.commits += 1
        commits = VID.pack(shard.commits)
        write.batch.put(NEXT_VID, VID.pack(next_vid))
        write.batch.put(CHECKPOINT, checkpoint)
        write.batch.put(COMMITS, commits)
        write.batch.put(COMMITS, commits, shard.family)
        shard.db.write(write.batch)
        shard.doc_keys -= write.removed_keys
        shard.doc_keys |= write.put_keys
        shard.flusher.noted()

    def replace_term_counts(self, counts: Iterable[tuple[int, Mapping[str, int]]], analyzer: str) -> None:
        """Store every unit's term counts anew, from ``analyzer``, in one WriteBatch: an older shard's first
        open, or one whose analyzer changed."""
        batch = WriteBatch(raw_mode=True)
        for key, _ in scan(self._open_db(), TERMS):
            batch.delete(key)
        for vid, unit_counts in counts:
            if unit_counts:
                batch.put(vid_key(TERMS, vid), pack_terms(unit_counts))
        batch.put(ANALYZER, analyzer.encode())
        self._write(batch)

    def replace_field_values(self, values: Iterable[tuple[str, Mapping[str, Sequence[Any]]]],
                             schema: Mapping[str, str]) -> None:
        """Store every document's filterable values anew, following ``schema``, in one WriteBatch: a
        shard's first open with fields declared, or one whose declaration changed."""
        batch = WriteBatch(raw_mode=True)
        for key, _ in scan(self._open_db(), FIELDS):
            batch.delete(key)
        for doc_id, doc_values in values:
            if doc_values:
                batch.put(FIELDS + utf8(doc_id), pack_fields(doc_values))
        batch.put(FILTERABLE, json.dumps(dict(schema), sort_keys=True).encode())
        self._write(batch)

    # -- internals -------------------------------------------------------------------------

    def _open_shard(self) -> _OpenShard:
        if self._shard is None:
            raise ConfigError(f"shard index at {self.path} is not open: call warm_up() first")
        return self._shard

    def _open_db(self) -> Rdict:
        return self._open_shard().db

    def _recover(self) -> None:
        """Move an older layout's vectors into their column family and stamp the shard format 5; then, if a crash
        left the vectors' family ahead of the checkpoint, bring it back (``store_recovery.py``)."""
        shard = self._open_shard()
        moved = move_vectors(shard.db, shard.family)  # a seek, where there is none
        if moved or int(shard.db.get(FORMAT_KEY) or 0) < FORMAT:
            shard.db.put(FORMAT_KEY, str(FORMAT).encode())
            shard.flusher.flush()
            logger.info("shard store moved to storage format 5", extra={"path": str(self.path), "vectors": moved})
        commits, vector_commits = _count(shard.db.get(COMMITS)), _count(shard.vectors.get(COMMITS))
        if vector_commits < commits:  # never, if every flush writes the vectors first (``store_flush.py``)
            raise ConfigError(f"shard index at {self.path}: its vectors are behind its checkpoint (commit "
                              f"{vector_commits} of {commits}), so some are lost: rebuild the shard by replay")
        if vector_commits > commits:
            reconcile(shard.db, shard.vectors, shard.family, next_vid=self.next_vid())
            shard.flusher.flush()
            settle_commits(shard.db, shard.family)
            shard.flusher.flush()
        shard.commits = commits

    def _check_config(self) -> None:
        db = self._open_db()
        stored_format = db.get(FORMAT_KEY)
        if stored_format is not None and int(stored_format) > FORMAT:
            raise ConfigError(f"shard index at {self.path} has storage format {int(stored_format)}, this "
                              f"streamsearch reads up to {FORMAT}: upgrade it, or rebuild the shard by replay")
        wanted = json.dumps({"dim": self.dim, "metric": self.metric}).encode()
        stored = db.get(CONFIG)
        if stored is None:
            db.put(CONFIG, wanted)
        elif stored != wanted:
            was, now = json.loads(stored), json.loads(wanted)
            changed = ", ".join(f"{key} {was.get(key)!r}, now {value!r}" for key, value in now.items()
                                if was.get(key) != value)
            raise ConfigError(f"shard index at {self.path} was built with {changed}: rebuild it by replay")
        if stored_format is None:
            db.put(FORMAT_KEY, str(FORMAT).encode())



class ShardWrite:
    """One atomic write being staged (:meth:`ShardStore.begin`): documents removed and put, with their vectors.

    :param shard: the open RocksDB, read for what a removal removes; written only by :meth:`ShardStore.commit`.
        The vectors' family is looked up there at each use: a write left behind (in a traceback, say) never keeps
        a closed shard's RocksDB open.
    """

    def __init__(self, shard: _OpenShard, codec: DocumentCodec, *, term_counts: bool = False,
                 field_values: bool = False) -> None:
        self._db = shard.db
        self._shard = shard
        self._codec = codec
        self._term_counts = term_counts
        self._field_values = field_values
        self.batch = WriteBatch(raw_mode=True)
        self.net_documents = 0
        """Root documents this write adds, less those it removes: what the shard's count moves by once committed."""
        self.removed_keys: set[bytes] = set()
        self.put_keys: set[bytes] = set()
        """The ids (UTF-8) of the root documents it removes and puts: what ``_OpenShard.doc_keys`` follows once
        committed (the removals first: an upsert does both)."""

    def remove_documents(self, doc_ids: Sequence[str]) -> list[int]:
        """Stage the removal of these stored documents and their vectors, looked up in one multi-get (a point
        lookup per document cost a fresh insert about 4 us of its index stage's 65); a document the shard does not
        hold (``_OpenShard.doc_keys``) is not looked up.

        :returns: the ids of the vectors removed, in ``doc_ids`` order; none for a document not stored.
        """
        stored = self._shard.doc_keys
        keys = [key for doc_id in doc_ids if (key := utf8(doc_id)) in stored]
        if not keys:
            return []
        removed: list[int] = []
        for key, raw in zip(keys, self._db.get([DOC_VIDS + key for key in keys])):
            if raw is not None:
                removed += self._remove(key, raw)
        return removed

    def _remove(self, key: bytes, raw_vids: bytes) -> list[int]:
        self.net_documents -= 1
        self.removed_keys.add(key)
        vids = unpack_vids(raw_vids)
        for vid in vids:
            self.batch.delete(vid_key(VEC, vid), self._shard.family)
            if self._term_counts:  # no tombstone per vector where no counts are kept
                self.batch.delete(vid_key(TERMS, vid))
        self.batch.delete(DOC + key)
        self.batch.delete(DOC_VIDS + key)
        if self._field_values:
            self.batch.delete(FIELDS + key)
        return vids

    def put_vector(self, vid: int, vector: np.ndarray, owner: Owner) -> None:
        """Stage one vector (little-endian float32) and its owner, in format 2."""
        self.batch.put(vid_key(VEC, vid), vector.tobytes() + pack_owner(*owner), self._shard.family)

    def stored_term_counts(self, vids: Sequence[int]) -> list[tuple[int, dict[str, int]]]:
        """The stored term counts of these units, as before this write (what removing them takes away)."""
        if not vids:
            return []
        raws = self._db.get([vid_key(TERMS, vid) for vid in vids])  # one multi-get
        return [(vid, unpack_terms(raw)) for vid, raw in zip(vids, raws) if raw is not None]

    def put_term_counts(self, vid: int, counts: Mapping[str, int]) -> None:
        """Stage one unit's term counts (the lexical arm's); a unit without terms stores nothing."""
        if counts:
            self.batch.put(vid_key(TERMS, vid), pack_terms(counts))

    def put_field_values(self, doc_id: str, values: Mapping[str, Sequence[Any]]) -> None:
        """Stage a document's filterable values; a document without any stores nothing."""
        if values:
            self.batch.put(FIELDS + utf8(doc_id), pack_fields(values))

    def put_document(self, doc: Document, vids: list[int], *, stored: bytes | None = None) -> None:
        """Stage a root document (the codec writes it without embeddings; ``stored``: what it would write,
        made by the caller) and the ids of its vectors."""
        key = utf8(doc.id)
        self.batch.put(DOC + key, self._codec.encode(doc) if stored is None else stored)
        self.batch.put(DOC_VIDS + key, pack_vids(vids))
        self.net_documents += 1
        self.put_keys.add(key)


def _count(raw: bytes | None) -> int:
    """A stored commit count; none stored is 0."""
    return VID.unpack(raw)[0] if raw else 0
