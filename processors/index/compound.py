"""The shard index: documents, vectors and the consumed checkpoint in RocksDB, vectors in FAISS.

RocksDB is the source of truth. Every write (upserts, deletes and the caller's checkpoint)
goes into one WriteBatch, so after a crash the stored checkpoint says exactly which input
the stored data reflects. FAISS is rebuilt from the stored vectors when the index opens.

One set of stored vectors serves every index type: the flat (exact) index is always kept;
HNSW, IVF and IVF-PQ are built from the stored vectors when first asked for (no re-encoding,
no re-ingest) and then follow every write, like the flat one.

Key layout (one RocksDB per shard):
    d/<doc id>     the root document, embeddings stripped (codec bytes)
    dv/<doc id>    int64 ids of the document's vectors
    v/<vector id>  float32 vector bytes + the owner: 0xFF, then doc id, node path and field name,
                   each as a big-endian uint32 byte count and its UTF-8 bytes
    m/checkpoint   the caller's opaque checkpoint
    m/next_vid     the next vector id
    m/config       dim and metric, checked on reopen
    m/format       the layout new writes use (2), set on the first open by this code; a newer one is refused

A key is a fixed prefix and the whole id, and an owner is length-prefixed, so nothing stored
depends on what an id contains (NUL, '/', control characters...). Shards written before
format 2 hold owners as UTF-8 "<doc id>\\0<node path>\\0<field name>", with no 0xFF (never in
UTF-8): such a value is read by its last two NULs, so ids holding NUL are recovered too.
They are read as they are and never rewritten; every new vector is written in format 2.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from rocksdict import Options, Rdict, WriteBatch

from processors.document import Document, Score, copy_tree
from processors.exceptions import ConfigError, DimensionMismatchError
from processors.index.base import (
    INDEX_TYPES,
    ApplyResult,
    Change,
    DocumentCodec,
    Hit,
    IndexStats,
    SearchTuning,
    VectorIndex,
)
from processors.index.config import CompoundIndexerConfig, known_index_type
from processors.index.faiss_flat import FlatVectorIndex
from processors.index.faiss_hnsw import HnswVectorIndex
from processors.index.faiss_ivf import IvfVectorIndex, ProductQuantization, auto_pq_m, training_size_needed

__all__ = ["CompoundIndexerConfig", "CompoundIndexer", "FORMAT"]

logger = logging.getLogger(__name__)

_DOC, _DOC_VIDS, _VEC = b"d/", b"dv/", b"v/"
_CHECKPOINT, _NEXT_VID, _CONFIG, _FORMAT = b"m/checkpoint", b"m/next_vid", b"m/config", b"m/format"
FORMAT = 2
"""The storage layout this code writes; it reads every one up to it."""
_OWNER_TAG = b"\xff"
"""Starts a format-2 owner; a format-1 owner is UTF-8 text, which never holds 0xFF."""


class CompoundIndexer:
    """One shard's documents and vectors, upserted and deleted by document id.

    Searches are answered by the index type the call (or the config) chooses. An IVF type the
    shard holds too few vectors to train is answered by the flat index meanwhile, which the
    hits' ``op_name`` shows; it is built once there are enough. An index that drifted from the
    data (HNSW past 20% tombstones, IVF under-trained and since doubled) is rebuilt by ``apply``.
    """

    def __init__(self, config: CompoundIndexerConfig, *, path: Path, codec: DocumentCodec) -> None:
        self.config = config
        self.path = Path(path)
        self._codec = codec
        self._db: Rdict | None = None
        self._reset_derived()

    # -- lifecycle -------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Open RocksDB, rebuild FAISS from the stored vectors, and build the default index type."""
        if self._db is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(self.path), options=Options(raw_mode=True))
        self._check_config()
        self._reset_derived()
        raw_next = self._db.get(_NEXT_VID)
        self._next_vid = struct.unpack(">q", raw_next)[0] if raw_next else 0
        ids, vectors, owners = self._stored_vectors()
        self._own(zip(ids.tolist(), owners))
        self._vectors.add(ids, vectors)
        self._index_for(self.config.index_type, stored=(ids, vectors))
        logger.info("shard index opened", extra={"path": str(self.path), "vectors": len(ids)})

    def close(self) -> None:
        """Close RocksDB; safe to call twice."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def destroy(self) -> None:
        """Close and delete every file of this shard (before a rebuild)."""
        self.close()
        Rdict.destroy(str(self.path))
        self._reset_derived()

    def build(self, index_type: str) -> bool:
        """Build an index type from the stored vectors now, rather than at the first search using it.

        :param index_type: one of ``INDEX_TYPES``; building one already built does nothing.
        :returns: False if the shard holds too few vectors to train it yet (flat answers meanwhile).
        :raises ConfigError: for an unknown index type.
        """
        return index_type == "flat" or self._index_for(known_index_type(index_type)) is not self._vectors

    # -- writes ----------------------------------------------------------------------------

    def apply(self, *, changes: Sequence[Change], checkpoint: bytes) -> ApplyResult:
        """Apply upserts and deletes, and store the checkpoint, in one atomic write.

        Changes are in stream order; for an id changed several times only the last counts,
        so a replayed or duplicated batch leaves the same index.

        :param changes: upserts (every node with an embedding becomes a vector) and deletes.
        :param checkpoint: opaque bytes stored with the data (e.g. consumed offsets).
        :raises DimensionMismatchError: if any embedding's size differs from ``dim``; nothing is written.
        """
        db = self._open_db()
        last = {change.doc_id: change.doc for change in changes}
        planned = [(doc, list(_embedded_nodes(doc))) for doc in last.values() if doc is not None]
        for doc, nodes in planned:
            for path, node in nodes:
                size = int(np.asarray(node.embedding).size)
                if size != self.config.dim:
                    raise DimensionMismatchError(
                        f"document {doc.id!r} node {path or 'root'}: embedding has {size} values, "
                        f"the index holds {self.config.dim}"
                    )
        batch = WriteBatch(raw_mode=True)
        removed_vids: list[int] = []
        for doc_id in last:
            removed_vids.extend(self._stage_removal(batch, doc_id))
        new_ids: list[int] = []
        new_vectors: list[np.ndarray] = []
        new_owners: list[tuple[str, str, str]] = []
        for doc, nodes in planned:
            vids = []
            for path, node in nodes:
                vid = self._next_vid
                self._next_vid += 1
                vector = np.asarray(node.embedding, dtype="<f4").reshape(-1)
                field_name = node.field_name or ""
                batch.put(_VEC + struct.pack(">q", vid), vector.tobytes() + _pack_owner(doc.id, path, field_name))
                vids.append(vid)
                new_ids.append(vid)
                new_vectors.append(vector)
                new_owners.append((doc.id, path, field_name))
            batch.put(_DOC + _utf8(doc.id), self._codec.encode(_strip_embeddings(doc)))
            batch.put(_DOC_VIDS + _utf8(doc.id), np.array(vids, dtype=">i8").tobytes())
        batch.put(_NEXT_VID, struct.pack(">q", self._next_vid))
        batch.put(_CHECKPOINT, checkpoint)
        db.write(batch)
        # FAISS follows RocksDB only after the write succeeded.
        gone = np.array(removed_vids, dtype=np.int64)
        added = np.array(new_ids, dtype=np.int64)
        added_vectors = np.stack(new_vectors) if new_vectors else np.empty((0, self.config.dim), np.float32)
        removed = self._vectors.remove(gone)
        self._vectors.add(added, added_vectors)
        for index in self._approximate.values():
            index.remove(gone)
            index.add(added, added_vectors)
        for vid in removed_vids:
            owner = self._vid_owner.pop(vid, None)
            if owner is not None:
                self._field_vids.get(owner[2], set()).discard(vid)
        self._own(zip(new_ids, new_owners))
        self._refresh_approximate()
        return ApplyResult(
            upserted=len(planned),
            deleted=sum(1 for doc in last.values() if doc is None),
            vectors_added=len(new_ids),
            vectors_removed=removed,
        )

    def _stage_removal(self, batch: WriteBatch, doc_id: str) -> list[int]:
        db = self._open_db()
        raw = db.get(_DOC_VIDS + _utf8(doc_id))
        if raw is None:
            return []
        vids = np.frombuffer(raw, dtype=">i8").astype(np.int64).tolist()
        for vid in vids:
            batch.delete(_VEC + struct.pack(">q", vid))
        batch.delete(_DOC + _utf8(doc_id))
        batch.delete(_DOC_VIDS + _utf8(doc_id))
        return vids

    # -- reads -----------------------------------------------------------------------------

    def checkpoint(self) -> bytes | None:
        """The checkpoint stored with the last write, or None for a new shard."""
        return self._open_db().get(_CHECKPOINT)

    def get(self, doc_id: str) -> Document | None:
        """The stored root document (without embeddings), or None."""
        raw = self._open_db().get(_DOC + _utf8(doc_id))
        return self._codec.decode(raw) if raw is not None else None

    @property
    def vector_count(self) -> int:
        """Vectors searchable now (cheap, unlike ``stats``, which counts documents on disk)."""
        return self._vectors.size

    def stats(self) -> IndexStats:
        documents = sum(1 for _ in self._scan(_DOC_VIDS))
        built = tuple(name for name in INDEX_TYPES if name == "flat" or name in self._approximate)
        return IndexStats(
            documents=documents, vectors=self._vectors.size, checkpoint=self.checkpoint(), index_types=built
        )

    def vectors_by_node(self) -> dict[tuple[str, str, str], np.ndarray]:
        """Every stored vector by (doc id, node path, field): what two builds of an index compare."""
        _, matrix, owners = self._stored_vectors()
        return dict(zip(owners, matrix))

    def doc_ids(self) -> Iterator[str]:
        """Every stored root document id, in key order."""
        for key, _ in self._scan(_DOC_VIDS):
            yield key[len(_DOC_VIDS) :].decode("utf-8", "surrogatepass")

    def search(
        self,
        *,
        embeddings: np.ndarray,
        top_k: int,
        index_type: str | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """The ``top_k`` nearest vectors for each query, best first, with their documents.

        :param embeddings: one query vector per row.
        :param top_k: vectors (not documents) per query.
        :param index_type: ``flat``, ``hnsw``, ``ivf`` or ``ivf_pq``; None uses the configured one.
            A type not built yet is built now from the stored vectors.
        :param ef_search: HNSW candidate list size for this call; None uses the configured one.
        :param nprobe: IVF lists scanned for this call; None uses the configured one.
        :param fields: only vectors of nodes with one of these ``field_name``s (multi-field search).
        :returns: per query, hits whose score's ``op_name`` names the index that answered.
        :raises DimensionMismatchError: if the queries' width differs from ``dim``.
        :raises ConfigError: for an unknown index type, or an ``ef_search``/``nprobe`` below 1.
        """
        chosen = known_index_type(self.config.index_type if index_type is None else index_type)
        allowed = None
        if fields is not None:
            vids = set().union(*(self._field_vids.get(name, set()) for name in fields))
            allowed = np.fromiter(sorted(vids), dtype=np.int64, count=len(vids))
        tuning = SearchTuning(ef_search=ef_search, nprobe=nprobe, allowed=allowed)
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.config.dim:
            raise DimensionMismatchError(
                f"query embeddings have shape {queries.shape}, the index holds {self.config.dim}-d vectors"
            )
        index = self._index_for(chosen)
        if top_k < 1 or index.size == 0 or (allowed is not None and not len(allowed)):
            return [[] for _ in queries]
        available = index.size if allowed is None else len(allowed)
        scores, ids = _search_past_ties(index, queries, top_k, tuning, available)
        roots: dict[str, Document | None] = {}
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, ids):
            found = [(Score(float(value), index.op_name, index.direction), owner)
                     for value, vid in zip(row_scores, row_ids)
                     if (owner := self._vid_owner.get(int(vid))) is not None]
            # Equal scores in document id order, then node path: never in the order vectors were added.
            found.sort(key=lambda pair: (pair[0].sort_key(), pair[1][0], pair[1][1]))
            hits: list[Hit] = []
            for score, (doc_id, path, _) in found:
                if len(hits) == top_k:
                    break
                if doc_id not in roots:
                    roots[doc_id] = self.get(doc_id)
                root = roots[doc_id]
                if root is None:
                    continue
                node = copy_tree(_node_at(root, path))
                node.chunks, node.matches = [], []
                node.scores = {**node.scores, "score": score}
                hits.append(Hit(root=root, node=node, score=score))
            results.append(hits)
        return results

    # -- internals -------------------------------------------------------------------------

    def _reset_derived(self) -> None:
        """Forget everything derived from RocksDB: the FAISS indexes and the vector owners."""
        self._vectors = FlatVectorIndex(dim=self.config.dim, metric=self.config.metric)
        self._approximate: dict[str, VectorIndex] = {}
        self._untrainable: set[str] = set()
        self._vid_owner: dict[int, tuple[str, str, str]] = {}
        self._field_vids: dict[str, set[int]] = {}
        self._next_vid = 0

    def _index_for(self, index_type: str, stored: tuple[np.ndarray, np.ndarray] | None = None) -> VectorIndex:
        """The index of this type, built now from the stored vectors if need be; flat while untrainable.

        :param stored: the stored (ids, vectors) when the caller holds them already.
        """
        if index_type == "flat":
            return self._vectors
        built = self._approximate.get(index_type)
        if built is not None:
            return built
        needed = 0 if index_type == "hnsw" else training_size_needed(nlist=self.config.ivf_nlist,
                                                                     pq=self._pq(index_type))
        if self._vectors.size < needed:
            if index_type not in self._untrainable:
                self._untrainable.add(index_type)
                logger.warning("%s needs %d vectors to train, the shard holds %d: flat answers until then",
                               index_type, needed, self._vectors.size)
            return self._vectors
        started = time.perf_counter()
        ids, vectors = stored if stored is not None else self._stored_vectors()[:2]
        index = self._new_index(index_type, training=vectors)
        index.add(ids, vectors)
        self._approximate[index_type] = index
        self._untrainable.discard(index_type)
        logger.info("%s index built from %d stored vectors in %.2f s", index_type, len(ids),
                    time.perf_counter() - started, extra={"path": str(self.path)})
        return index

    def _new_index(self, index_type: str, *, training: np.ndarray) -> VectorIndex:
        config = self.config
        if index_type == "hnsw":
            return HnswVectorIndex(dim=config.dim, metric=config.metric, m=config.hnsw_m,
                                   ef_construction=config.hnsw_ef_construction, ef_search=config.hnsw_ef_search)
        return IvfVectorIndex(dim=config.dim, metric=config.metric, nlist=config.ivf_nlist,
                              nprobe=config.ivf_nprobe, pq=self._pq(index_type), training=training)

    def _pq(self, index_type: str) -> ProductQuantization | None:
        if index_type != "ivf_pq":
            return None
        return ProductQuantization(m=self.config.pq_m or auto_pq_m(self.config.dim), bits=self.config.pq_bits)

    def _refresh_approximate(self) -> None:
        """After a write: rebuild the indexes that drifted from the data, and build the default once it can be."""
        for name in [name for name, index in self._approximate.items() if index.needs_rebuild]:
            del self._approximate[name]
            self._index_for(name)
        self._index_for(self.config.index_type)

    def _stored_vectors(self) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
        """Every stored vector: ids, a (n, dim) float32 matrix and each one's (doc id, node path, field)."""
        ids, vectors, owners = [], [], []
        for key, value in self._scan(_VEC):
            vector, owner = self._split_vector_value(value)
            ids.append(struct.unpack(">q", key[len(_VEC) :])[0])
            vectors.append(vector)
            owners.append(owner)
        matrix = np.stack(vectors) if vectors else np.empty((0, self.config.dim), np.float32)
        return np.array(ids, dtype=np.int64), matrix, owners

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
        wanted = json.dumps({"dim": self.config.dim, "metric": self.config.metric}).encode()
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

    def _split_vector_value(self, value: bytes) -> tuple[np.ndarray, tuple[str, str, str]]:
        width = self.config.dim * 4
        return np.frombuffer(value[:width], dtype="<f4"), _unpack_owner(value[width:])

    def _own(self, owners: Iterable[tuple[int, tuple[str, str, str]]]) -> None:
        """Record whose node each vector is, and which field's, for field-restricted search."""
        for vid, owner in owners:
            self._vid_owner[vid] = owner
            self._field_vids.setdefault(owner[2], set()).add(vid)


def _utf8(text: str) -> bytes:
    """UTF-8, lone surrogates passed through: any str has bytes that decode back to it."""
    return text.encode("utf-8", "surrogatepass")


def _pack_owner(doc_id: str, path: str, field_name: str) -> bytes:
    """A vector's owner in format 2: the tag, then each part as a uint32 byte count and its bytes."""
    parts = [_utf8(part) for part in (doc_id, path, field_name)]
    return _OWNER_TAG + b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _unpack_owner(raw: bytes) -> tuple[str, str, str]:
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
        (size,) = struct.unpack_from(">I", raw, at)
        at += 4
        if at + size > len(raw):
            raise ConfigError(f"a stored vector owner is truncated: {raw[:80]!r}")
        owner.append(raw[at : at + size].decode("utf-8", "surrogatepass"))
        at += size
    return owner[0], owner[1], owner[2]


def _search_past_ties(index: VectorIndex, queries: np.ndarray, top_k: int, tuning: SearchTuning,
                      available: int) -> tuple[np.ndarray, np.ndarray]:
    """The index's ``top_k`` per query, widened past any run of equal scores at the cut.

    Which of several tied vectors FAISS keeps depends on the order they were added, which a
    replay or a rebalance changes; with the whole run fetched, the caller cuts it by document id.
    """
    k = min(top_k, available)
    while True:
        scores, ids = index.search(queries, k, tuning)
        if k >= available or ids.shape[1] < k or not _tied_at_cut(scores, ids, top_k):
            return scores, ids
        k = min(2 * k, available)


def _tied_at_cut(scores: np.ndarray, ids: np.ndarray, top_k: int) -> bool:
    """True if a full row's last score equals its score at position ``top_k``: more may tie beyond."""
    if ids.shape[1] < top_k:
        return False
    last = ids.shape[1] - 1
    return bool(np.any((ids[:, last] != -1) & (scores[:, top_k - 1] == scores[:, last])))


def _embedded_nodes(doc: Document, path: str = "") -> Iterator[tuple[str, Document]]:
    """Every node with an embedding, with its path: '' for the root, 'c3.c1' below."""
    if doc.embedding is not None:
        yield path, doc
    for i, chunk in enumerate(doc.chunks):
        yield from _embedded_nodes(chunk, f"{path}.c{i}" if path else f"c{i}")


def _node_at(root: Document, path: str) -> Document:
    node = root
    for step in path.split(".") if path else []:
        node = node.chunks[int(step[1:])]
    return node


def _strip_embeddings(doc: Document) -> Document:
    stripped = copy_tree(doc)
    stack = [stripped]
    while stack:
        node = stack.pop()
        node.embedding = None
        stack.extend(node.chunks)
    return stripped
