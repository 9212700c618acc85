"""The shard index: documents, vectors and the consumed checkpoint in RocksDB, vectors in FAISS.

RocksDB is the source of truth. Every write (upserts, deletes and the caller's checkpoint)
goes into one WriteBatch, so after a crash the stored checkpoint says exactly which input
the stored data reflects. FAISS is rebuilt from the stored vectors when the index opens.

Key layout (one RocksDB per shard):
    d/<doc id>     the root document, embeddings stripped (codec bytes)
    dv/<doc id>    int64 ids of the document's vectors
    v/<vector id>  float32 vector bytes + utf-8 "<doc id>\\0<node path>"
    m/checkpoint   the caller's opaque checkpoint
    m/next_vid     the next vector id
    m/config       dim and metric, checked on reopen
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from rocksdict import Options, Rdict, WriteBatch

from processors.document import Document, Score, copy_tree
from processors.exceptions import ConfigError, DimensionMismatchError
from processors.index.base import ApplyResult, Change, DocumentCodec, Hit, IndexStats
from processors.index.faiss_flat import FlatVectorIndex, Metric

__all__ = ["CompoundIndexerConfig", "CompoundIndexer"]

logger = logging.getLogger(__name__)

_DOC, _DOC_VIDS, _VEC = b"d/", b"dv/", b"v/"
_CHECKPOINT, _NEXT_VID, _CONFIG = b"m/checkpoint", b"m/next_vid", b"m/config"


@dataclass(frozen=True, slots=True)
class CompoundIndexerConfig:
    """Shape of the vectors a shard holds.

    :param dim: embedding dimension; a document with another one is rejected.
    :param metric: ``inner_product`` (similarity) or ``l2`` (distance).
    """

    dim: int = 384
    metric: Metric = "inner_product"

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"CompoundIndexer: dim must be positive, got {self.dim}")
        if self.metric not in ("inner_product", "l2"):
            raise ConfigError(f"CompoundIndexer: metric {self.metric!r}; use inner_product or l2")


class CompoundIndexer:
    """One shard's documents and vectors, upserted and deleted by document id."""

    def __init__(self, config: CompoundIndexerConfig, *, path: Path, codec: DocumentCodec) -> None:
        self.config = config
        self.path = Path(path)
        self._codec = codec
        self._db: Rdict | None = None
        self._vectors = FlatVectorIndex(dim=config.dim, metric=config.metric)
        self._vid_owner: dict[int, tuple[str, str]] = {}
        self._next_vid = 0

    # -- lifecycle -------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Open RocksDB and rebuild FAISS from the stored vectors."""
        if self._db is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(self.path), options=Options(raw_mode=True))
        self._check_config()
        raw_next = self._db.get(_NEXT_VID)
        self._next_vid = struct.unpack(">q", raw_next)[0] if raw_next else 0
        ids, vectors = [], []
        for key, value in self._scan(_VEC):
            vid = struct.unpack(">q", key[len(_VEC) :])[0]
            vector, owner = self._split_vector_value(value)
            ids.append(vid)
            vectors.append(vector)
            self._vid_owner[vid] = owner
        if ids:
            self._vectors.add(np.array(ids, dtype=np.int64), np.stack(vectors))
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
        self._vectors = FlatVectorIndex(dim=self.config.dim, metric=self.config.metric)
        self._vid_owner.clear()
        self._next_vid = 0

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
        new_owners: list[tuple[str, str]] = []
        for doc, nodes in planned:
            vids = []
            for path, node in nodes:
                vid = self._next_vid
                self._next_vid += 1
                vector = np.asarray(node.embedding, dtype="<f4").reshape(-1)
                batch.put(_VEC + struct.pack(">q", vid), vector.tobytes() + f"{doc.id}\0{path}".encode())
                vids.append(vid)
                new_ids.append(vid)
                new_vectors.append(vector)
                new_owners.append((doc.id, path))
            batch.put(_DOC + doc.id.encode(), self._codec.encode(_strip_embeddings(doc)))
            batch.put(_DOC_VIDS + doc.id.encode(), np.array(vids, dtype=">i8").tobytes())
        batch.put(_NEXT_VID, struct.pack(">q", self._next_vid))
        batch.put(_CHECKPOINT, checkpoint)
        db.write(batch)
        # FAISS follows RocksDB only after the write succeeded.
        removed = self._vectors.remove(np.array(removed_vids, dtype=np.int64))
        for vid in removed_vids:
            self._vid_owner.pop(vid, None)
        if new_ids:
            self._vectors.add(np.array(new_ids, dtype=np.int64), np.stack(new_vectors))
            self._vid_owner.update(zip(new_ids, new_owners))
        return ApplyResult(
            upserted=len(planned),
            deleted=sum(1 for doc in last.values() if doc is None),
            vectors_added=len(new_ids),
            vectors_removed=removed,
        )

    def _stage_removal(self, batch: WriteBatch, doc_id: str) -> list[int]:
        db = self._open_db()
        raw = db.get(_DOC_VIDS + doc_id.encode())
        if raw is None:
            return []
        vids = np.frombuffer(raw, dtype=">i8").astype(np.int64).tolist()
        for vid in vids:
            batch.delete(_VEC + struct.pack(">q", vid))
        batch.delete(_DOC + doc_id.encode())
        batch.delete(_DOC_VIDS + doc_id.encode())
        return vids

    # -- reads -----------------------------------------------------------------------------

    def checkpoint(self) -> bytes | None:
        """The checkpoint stored with the last write, or None for a new shard."""
        return self._open_db().get(_CHECKPOINT)

    def get(self, doc_id: str) -> Document | None:
        """The stored root document (without embeddings), or None."""
        raw = self._open_db().get(_DOC + doc_id.encode())
        return self._codec.decode(raw) if raw is not None else None

    def stats(self) -> IndexStats:
        documents = sum(1 for _ in self._scan(_DOC_VIDS))
        return IndexStats(documents=documents, vectors=self._vectors.size, checkpoint=self.checkpoint())

    def doc_ids(self) -> Iterator[str]:
        """Every stored root document id, in key order."""
        for key, _ in self._scan(_DOC_VIDS):
            yield key[len(_DOC_VIDS) :].decode()

    def search(self, *, embeddings: np.ndarray, top_k: int) -> list[list[Hit]]:
        """The ``top_k`` nearest vectors for each query, best first, with their documents.

        :param embeddings: one query vector per row.
        :param top_k: vectors (not documents) per query.
        :raises DimensionMismatchError: if the queries' width differs from ``dim``.
        """
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.config.dim:
            raise DimensionMismatchError(
                f"query embeddings have shape {queries.shape}, the index holds {self.config.dim}-d vectors"
            )
        scores, ids = self._vectors.search(queries, top_k)
        roots: dict[str, Document | None] = {}
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores, ids):
            hits = []
            for value, vid in zip(row_scores, row_ids):
                owner = self._vid_owner.get(int(vid))
                if owner is None:
                    continue
                doc_id, path = owner
                if doc_id not in roots:
                    roots[doc_id] = self.get(doc_id)
                root = roots[doc_id]
                if root is None:
                    continue
                node = copy_tree(_node_at(root, path))
                node.chunks, node.matches = [], []
                score = Score(float(value), self._vectors.op_name, self._vectors.direction)
                node.scores = {**node.scores, "score": score}
                hits.append(Hit(root=root, node=node, score=score))
            results.append(hits)
        return results

    # -- internals -------------------------------------------------------------------------

    def _open_db(self) -> Rdict:
        if self._db is None:
            raise ConfigError(f"shard index at {self.path} is not open: call warm_up() first")
        return self._db

    def _check_config(self) -> None:
        db = self._open_db()
        wanted = json.dumps({"dim": self.config.dim, "metric": self.config.metric}).encode()
        stored = db.get(_CONFIG)
        if stored is None:
            db.put(_CONFIG, wanted)
        elif stored != wanted:
            raise ConfigError(
                f"shard index at {self.path} was built with {stored.decode()}, "
                f"now configured {wanted.decode()}: rebuild it by replay"
            )

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._open_db().items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def _split_vector_value(self, value: bytes) -> tuple[np.ndarray, tuple[str, str]]:
        width = self.config.dim * 4
        vector = np.frombuffer(value[:width], dtype="<f4")
        doc_id, _, path = value[width:].decode().partition("\0")
        return vector, (doc_id, path)


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
