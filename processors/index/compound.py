"""The shard index: a facade over the shard's RocksDB (``store``) and the FAISS indexes derived from it.

RocksDB is the source of truth (``store.py`` holds the key layout); FAISS is rebuilt from the
stored vectors when the index opens, and follows every write only after RocksDB took it.

One set of stored vectors serves every index type (``types.py``): the exact one is always kept;
the others are built from the stored vectors when first asked for (no re-encoding, no re-ingest)
and then follow every write, like the exact one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from processors.document import Direction, Document, Score, copy_tree
from processors.exceptions import ConfigError, DimensionMismatchError
from processors.index.base import ApplyResult, Change, DocumentCodec, Hit, IndexStats, SearchTuning, VectorIndex
from processors.index.config import CompoundIndexerConfig
from processors.index.faiss_flat import FlatVectorIndex
from processors.index.lexical import Analyzer, CorpusStats, LexicalIndex
from processors.index.scalar import FieldValues, ScalarIndex
from processors.index.store import Owner, ShardStore, ShardWrite
from processors.index.types import EXACT, INDEX_TYPES, VECTOR_INDEX_TYPES, known_index_type
from processors.query.filter import Filter, check_filter, stored_values

__all__ = ["CompoundIndexerConfig", "CompoundIndexer"]

logger = logging.getLogger(__name__)

_Planned = list[tuple[Document, list[tuple[str, Document]]]]
"""Upserted documents, each with its embedded nodes and their paths."""

_NO_VECTORS = np.empty((0, 0), np.float32)
"""What the exact index trains on: nothing."""

LEXICAL_OP_NAME = "bm25"
"""The ``op_name`` of a lexical hit's score (a similarity: higher is better)."""

_TermCounts = list[tuple[int, dict[str, int]]]
"""Units' term counts by vector id."""


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
        self._store = ShardStore(self.path, dim=config.dim, metric=config.metric, codec=codec)
        self._analyzer = Analyzer() if config.lexical else None
        self._reset_derived()

    # -- lifecycle -------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Open RocksDB, rebuild FAISS from the stored vectors, and build the default index type."""
        if self._store.is_open:
            return
        self._store.open()
        self._reset_derived()
        self._next_vid = self._store.next_vid()
        ids, vectors, owners = self._store.vectors()
        self._own(zip(ids.tolist(), owners))
        self._vectors.add(ids, vectors)
        self._index_for(self.config.index_type, stored=(ids, vectors))
        self._open_lexical(owners, ids)
        self._open_fields(owners, ids)
        logger.info("shard index opened", extra={"path": str(self.path), "vectors": len(ids),
                                                 "lexical_units": len(self._lexical)})

    def _open_lexical(self, owners: Sequence[Owner], ids: np.ndarray) -> None:
        """Build the lexical arm from the stored term counts; first count them from the stored documents
        when the shard has none from this analyzer (an older shard, or the analyzer changed), or clear
        them when the arm is off (counts that stopped following writes must never be read again)."""
        wanted = self._analyzer.name if self._analyzer is not None else ""
        if (self._store.analyzer or "") != wanted:  # None: no counts (a new or a format-2 shard)
            started = time.perf_counter()
            terms = self._terms_from_documents(owners, ids) if self._analyzer is not None else []
            self._store.replace_term_counts(terms, wanted)
            logger.info("lexical term counts rebuilt from the stored documents", extra={
                "path": str(self.path), "units": len(terms), "seconds": round(time.perf_counter() - started, 3)})
        if self._analyzer is not None:
            for vid, counts in self._store.term_counts():
                self._lexical.add(vid, counts, self._vid_owner[vid][2])

    def _open_fields(self, owners: Sequence[Owner], ids: np.ndarray) -> None:
        """Build the field indexes from the stored values; first extract them from the stored documents
        when the shard's were stored for another declaration (or none), or clear them when none is declared."""
        schema = dict(self.config.filterable)
        if (self._store.filterable or {}) != schema:
            started = time.perf_counter()
            values = [(doc_id, self._field_values(doc)) for doc_id in self._store.doc_ids()
                      if schema and (doc := self._store.document(doc_id)) is not None]
            self._store.replace_field_values(values, schema)
            logger.info("field index values extracted from the stored documents", extra={
                "path": str(self.path), "documents": len(values), "seconds": round(time.perf_counter() - started, 3)})
        if not schema:
            return
        stored = dict(self._store.field_values())
        start = 0
        vids = ids.tolist()
        for end in range(1, len(vids) + 1):  # a document's vectors have consecutive ids
            if end == len(vids) or owners[end][0] != owners[start][0]:
                self._scalars.add(vids[start:end], stored.get(owners[start][0], {}))
                start = end

    def _field_values(self, doc: Document) -> FieldValues:
        """The root document's filterable tag values, in the stored form; tags that fit no declared type
        are left out (not filterable), as are undeclared ones."""
        tags = doc.tags or {}
        return {name: kept for name, kind in self.config.filterable.items()
                if name in tags and (kept := stored_values(kind, tags[name]))}

    def _terms_from_documents(self, owners: Sequence[Owner], ids: np.ndarray) -> _TermCounts:
        """Each vector's node's text, analysed: read from the stored root documents."""
        assert self._analyzer is not None
        terms: _TermCounts = []
        root_id, root = None, None  # a document's vectors have consecutive ids: one root held at a time
        for vid, (doc_id, path, _) in zip(ids.tolist(), owners):
            if doc_id != root_id:
                root_id, root = doc_id, self._store.document(doc_id)
            text = _node_at(root, path).text if root is not None else None
            if text:
                terms.append((vid, self._analyzer.counts(text)))
        return terms

    def close(self) -> None:
        """Close RocksDB; safe to call twice."""
        self._store.close()

    def destroy(self) -> None:
        """Close and delete every file of this shard (before a rebuild)."""
        self._store.destroy()
        self._reset_derived()

    def build(self, index_type: str) -> bool:
        """Build an index type from the stored vectors now, rather than at the first search using it.

        :param index_type: one of ``INDEX_TYPES``; building one already built does nothing.
        :returns: False if the shard holds too few vectors to train it yet (flat answers meanwhile).
        :raises ConfigError: for an unknown index type.
        """
        return index_type == EXACT.name or self._index_for(known_index_type(index_type)) is not self._vectors

    # -- writes ----------------------------------------------------------------------------

    def apply(self, *, changes: Sequence[Change], checkpoint: bytes) -> ApplyResult:
        """Apply upserts and deletes, and store the checkpoint, in one atomic write.

        Changes are in stream order; for an id changed several times only the last counts,
        so a replayed or duplicated batch leaves the same index.

        :param changes: upserts (every node with an embedding becomes a vector) and deletes.
        :param checkpoint: opaque bytes stored with the data (e.g. consumed offsets).
        :raises DimensionMismatchError: if any embedding's size differs from ``dim``; nothing is written.
        """
        last = {change.doc_id: change.doc for change in changes}
        planned = [(doc, list(_embedded_nodes(doc))) for doc in last.values() if doc is not None]
        self._check_dims(planned)
        write = self._store.begin(term_counts=self._analyzer is not None, field_values=bool(self.config.filterable))
        removed_vids = [vid for doc_id in last for vid in write.remove_document(doc_id)]
        removed_terms = write.stored_term_counts(removed_vids) if self._analyzer is not None else []
        new_ids, new_vectors, new_owners, new_terms = self._stage_vectors(write, planned)
        new_fields = self._stage_fields(write, planned)
        node_fields = {vid: owner[2] for vid, owner in zip(new_ids, new_owners)}
        self._store.commit(write, next_vid=self._next_vid, checkpoint=checkpoint)
        changed: set[tuple[str, str]] = set()
        for vid, counts, field in [(vid, counts, self._vid_owner[vid][2]) for vid, counts in removed_terms]:
            self._lexical.remove(vid, counts, field)  # before FAISS, whose training below is what may fail
            changed.update((field, term) for term in ("", *counts))
        for vid, counts in new_terms:
            self._lexical.add(vid, counts, node_fields[vid])
            changed.update((node_fields[vid], term) for term in ("", *counts))
        removed = self._follow(removed_vids, new_ids, new_vectors, new_owners)
        self._scalars.remove(removed_vids)
        for vids, values in new_fields:
            self._scalars.add(vids, values)
        return ApplyResult(
            upserted=len(planned),
            deleted=sum(1 for doc in last.values() if doc is None),
            vectors_added=len(new_ids),
            vectors_removed=removed,
            lexical_changed=frozenset(changed),
        )

    def lexical_counts(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
        """This shard's own (count, tokens) of each (field, term) key: a term's document frequency in the
        field (tokens 0), or for (field, "") the field's units and tokens; (0, 0) where it has none.

        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        """
        self._require_lexical()
        return {key: self._lexical.count(*key) for key in keys}

    def lexical_keys(self) -> list[tuple[str, str]]:
        """Every (field, term) and (field, "") this shard holds statistics for: what a snapshot of them covers."""
        self._require_lexical()
        return self._lexical.keys()

    def _check_dims(self, planned: _Planned) -> None:
        """Refuse the whole batch before anything is written if one embedding has another width."""
        for doc, nodes in planned:
            for path, node in nodes:
                size = int(np.asarray(node.embedding).size)
                if size != self.config.dim:
                    raise DimensionMismatchError(
                        f"document {doc.id!r} node {path or 'root'}: embedding has {size} values, "
                        f"the index holds {self.config.dim}"
                    )

    def _stage_vectors(self, write: ShardWrite, planned: _Planned
                       ) -> tuple[list[int], list[np.ndarray], list[Owner], _TermCounts]:
        """Stage each upserted document and its vectors under new ids, and each vector's node's term
        counts; returns the ids, vectors, owners and term counts."""
        new_ids: list[int] = []
        new_vectors: list[np.ndarray] = []
        new_owners: list[Owner] = []
        new_terms: _TermCounts = []
        for doc, nodes in planned:
            vids = []
            for path, node in nodes:
                vid = self._next_vid
                self._next_vid += 1
                vector = np.asarray(node.embedding, dtype="<f4").reshape(-1)
                owner = (doc.id, path, node.field_name or "")
                write.put_vector(vid, vector, owner)
                if self._analyzer is not None and node.text:
                    counts = self._analyzer.counts(node.text)
                    write.put_term_counts(vid, counts)
                    new_terms.append((vid, counts))
                vids.append(vid)
                new_ids.append(vid)
                new_vectors.append(vector)
                new_owners.append(owner)
            write.put_document(_without_blobs(doc), vids)
        return new_ids, new_vectors, new_owners, new_terms

    def _stage_fields(self, write: ShardWrite, planned: _Planned) -> list[tuple[list[int], FieldValues]]:
        """Stage each upserted document's filterable values; returns its vector ids with them. Called after
        :meth:`_stage_vectors`, which gave each document's vectors consecutive ids in this order."""
        if not self.config.filterable:
            return []
        staged, vid = [], self._next_vid - sum(len(nodes) for _, nodes in planned)
        for doc, nodes in planned:
            values = self._field_values(doc)
            write.put_field_values(doc.id, values)
            staged.append((list(range(vid, vid + len(nodes))), values))
            vid += len(nodes)
        return staged

    def _follow(self, removed_vids: list[int], new_ids: list[int], new_vectors: list[np.ndarray],
                new_owners: list[Owner]) -> int:
        """FAISS follows RocksDB, only after the write succeeded; returns how many vectors were removed."""
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
        return removed

    # -- reads -----------------------------------------------------------------------------

    def checkpoint(self) -> bytes | None:
        """The checkpoint stored with the last write, or None for a new shard."""
        return self._store.checkpoint()

    def get(self, doc_id: str) -> Document | None:
        """The stored root document (without embeddings), or None."""
        return self._store.document(doc_id)

    @property
    def vector_count(self) -> int:
        """Vectors searchable now (cheap, unlike ``stats``, which counts documents on disk)."""
        return self._vectors.size

    def stats(self) -> IndexStats:
        built = tuple(name for name in INDEX_TYPES if name == EXACT.name or name in self._approximate)
        return IndexStats(documents=self._store.document_count(), vectors=self._vectors.size,
                          checkpoint=self.checkpoint(), index_types=built)

    def vectors_by_node(self) -> dict[Owner, np.ndarray]:
        """Every stored vector by (doc id, node path, field): what two builds of an index compare."""
        _, matrix, owners = self._store.vectors()
        return dict(zip(owners, matrix))

    def doc_ids(self) -> Iterator[str]:
        """Every stored root document id, in key order."""
        return self._store.doc_ids()

    def search(
        self,
        *,
        embeddings: np.ndarray,
        top_k: int,
        index_type: str | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        fields: Sequence[str] | None = None,
        filter: Filter | None = None,
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        """The ``top_k`` nearest vectors for each query, best first, with their documents.

        :param embeddings: one query vector per row.
        :param top_k: vectors (not documents) per query.
        :param index_type: a name in ``INDEX_TYPES``; None uses the configured one.
            A type not built yet is built now from the stored vectors.
        :param ef_search: HNSW candidate list size for this call; None uses the configured one.
        :param nprobe: IVF lists scanned for this call; None uses the configured one.
            A type reads only the knobs its row names (``VectorIndexType.knobs``) and ignores the other.
        :param fields: only vectors of nodes with one of these ``field_name``s (multi-field search).
        :param filter: only vectors of documents whose tags it accepts (a pre-filter on the field indexes).
            When it allows at most ``exact_filter_limit`` vectors (or under ``exact_filter_share`` of them)
            the flat index scans just those, whatever the index type (the hits' ``op_name`` then names it);
            otherwise the index type searches with a selector of the allowed ids.
        :param with_vectors: each hit's node carries its stored vector as ``embedding`` (for diversity at the
            joiner); otherwise nodes have none.
        :returns: per query, hits whose score's ``op_name`` names the index that answered.
        :raises DimensionMismatchError: if the queries' width differs from ``dim``.
        :raises ConfigError: for an unknown index type, or an ``ef_search``/``nprobe`` below 1.
        :raises InvalidParameterError: for a filter on a field this index does not declare filterable.
        """
        chosen = known_index_type(self.config.index_type if index_type is None else index_type)
        allowed = self._allowed(fields, filter)
        if allowed is not None and (len(allowed) <= self.config.exact_filter_limit
                                    or len(allowed) < self.config.exact_filter_share * self._vectors.size):
            chosen = EXACT.name
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
        return [self._hits(index.op_name, index.direction, row_scores, row_ids, top_k, roots, with_vectors)
                for row_scores, row_ids in zip(scores, ids)]

    def lexical_stats(self, fields: Sequence[str] | None = None) -> CorpusStats:
        """This shard's own lexical statistics over ``fields`` (node ``field_name``s; "" for none), or over
        all of them: what it publishes for the corpus-wide sum, and what a search of those fields scores with.

        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        """
        self._require_lexical()
        return self._lexical.stats(fields)

    @property
    def analyzer_name(self) -> str:
        """The lexical arm's analyzer (``Analyzer.name``), which the fan-out's must equal.

        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        """
        return self._require_lexical().name

    def analyze(self, text: str) -> list[str]:
        """A query's terms, as the stored texts were analysed.

        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        """
        return self._require_lexical().terms(text)

    def _require_lexical(self) -> Analyzer:
        """Every lexical read refuses alike when the arm is off: empty statistics from one shard would
        silently skew a corpus-wide sum."""
        if self._analyzer is None:
            raise ConfigError("this index keeps no lexical arm (CompoundIndexer with lexical: false)")
        return self._analyzer

    def search_lexical(self, *, terms: Sequence[str], stats: CorpusStats, top_k: int,
                       fields: Sequence[str] | None = None, filter: Filter | None = None,
                       with_vectors: bool = False) -> list[Hit]:
        """The ``top_k`` units (nodes with text and a vector) scoring highest by BM25, best first, ties by
        document id then node path; the hits' score ``op_name`` is ``bm25``.

        :param terms: the analysed query (:meth:`analyze`, or the fan-out's analyzer: the same one).
        :param stats: corpus-wide statistics, so that every shard of a request scores alike; this shard's
            own (:meth:`lexical_stats`) when it holds the whole corpus.
        :param fields: only units of nodes with one of these ``field_name``s; ``stats`` should be those
            fields' (:meth:`lexical_stats` with the same ``fields``, summed over shards).
        :param filter: as :meth:`search`'s: only units of documents it accepts (the statistics stay the
            corpus's: a filter restricts what is ranked, not how terms weigh).
        :param with_vectors: as :meth:`search`'s: each hit's node carries its unit's vector.
        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        :raises InvalidParameterError: for a filter on a field this index does not declare filterable.
        """
        self._require_lexical()
        allowed = self._allowed(fields, filter)
        if top_k < 1:
            return []
        vids, scores = self._lexical.search(terms, stats, top_k, allowed=allowed)
        return self._hits(LEXICAL_OP_NAME, Direction.SIMILARITY, scores, vids, top_k, {}, with_vectors)

    def _allowed(self, fields: Sequence[str] | None, filter: Filter | None) -> np.ndarray | None:
        """The ids of the vectors a search may return, ascending: of nodes with one of these field names,
        of documents the filter accepts, or both; None when neither restricts it."""
        allowed = None
        if fields is not None:
            vids = set().union(*(self._field_vids.get(name, set()) for name in fields))
            allowed = np.fromiter(sorted(vids), dtype=np.int64, count=len(vids))
        if filter is not None:
            check_filter(filter, self.config.filterable)
            selected = self._scalars.select(filter)
            allowed = selected if allowed is None else np.intersect1d(allowed, selected, assume_unique=True)
        return allowed

    def _hits(self, op_name: str, direction: Direction, row_scores: np.ndarray, row_ids: np.ndarray, top_k: int,
              roots: dict[str, Document | None], with_vectors: bool = False) -> list[Hit]:
        """One query's hits from its row of ids and scores: owners looked up, ties cut by document id,
        ``top_k`` kept.

        :param roots: the root documents read so far for this search, shared by its queries.
        :param with_vectors: give each hit's node its vector (from the exact index, which holds every one).
        """
        found = [(Score(float(value), op_name, direction), owner, int(vid))
                 for value, vid in zip(row_scores, row_ids)
                 if (owner := self._vid_owner.get(int(vid))) is not None]
        # Equal scores in document id order, then node path: never in the order vectors were added.
        found.sort(key=lambda hit: (hit[0].sort_key(), hit[1][0], hit[1][1]))
        kept: list[tuple[Hit, int]] = []
        for score, (doc_id, path, _), vid in found:
            if len(kept) == top_k:
                break
            if doc_id not in roots:
                roots[doc_id] = self._store.document(doc_id)
            root = roots[doc_id]
            if root is None:
                continue
            node = copy_tree(_node_at(root, path))
            node.chunks, node.matches = [], []
            node.scores = {**node.scores, "score": score}
            kept.append((Hit(root=root, node=node, score=score), vid))
        if with_vectors:
            vectors = self._vectors.vectors(np.array([vid for _, vid in kept], dtype=np.int64))
            for (hit, _), vector in zip(kept, vectors):
                hit.node.embedding = vector
        return [hit for hit, _ in kept]

    # -- internals -------------------------------------------------------------------------

    def _reset_derived(self) -> None:
        """Forget everything derived from RocksDB: the FAISS indexes and the vector owners."""
        exact = EXACT.build(self.config, _NO_VECTORS)
        assert isinstance(exact, FlatVectorIndex)  # it hands back stored vectors (``with_vectors``)
        self._vectors: FlatVectorIndex = exact
        self._approximate: dict[str, VectorIndex] = {}
        self._untrainable: set[str] = set()
        self._vid_owner: dict[int, Owner] = {}
        self._field_vids: dict[str, set[int]] = {}
        self._lexical = LexicalIndex()
        self._scalars = ScalarIndex(self.config.filterable)
        self._next_vid = 0

    def _index_for(self, index_type: str, stored: tuple[np.ndarray, np.ndarray] | None = None) -> VectorIndex:
        """The index of this type, built now from the stored vectors if need be; flat while untrainable.

        :param stored: the stored (ids, vectors) when the caller holds them already.
        """
        if index_type == EXACT.name:
            return self._vectors
        built = self._approximate.get(index_type)
        if built is not None:
            return built
        row = VECTOR_INDEX_TYPES[index_type]
        needed = row.training_size(self.config)
        if self._vectors.size < needed:
            if index_type not in self._untrainable:
                self._untrainable.add(index_type)
                logger.warning("%s needs %d vectors to train, the shard holds %d: flat answers until then",
                               index_type, needed, self._vectors.size)
            return self._vectors
        started = time.perf_counter()
        ids, vectors = stored if stored is not None else self._store.vectors()[:2]
        index = row.build(self.config, vectors)
        index.add(ids, vectors)
        self._approximate[index_type] = index
        self._untrainable.discard(index_type)
        logger.info("%s index built from %d stored vectors in %.2f s", index_type, len(ids),
                    time.perf_counter() - started, extra={"path": str(self.path)})
        return index

    def _refresh_approximate(self) -> None:
        """After a write: rebuild the indexes that drifted from the data, and build the default once it can be."""
        for name in [name for name, index in self._approximate.items() if index.needs_rebuild]:
            del self._approximate[name]
            self._index_for(name)
        self._index_for(self.config.index_type)

    def _own(self, owners: Iterable[tuple[int, Owner]]) -> None:
        """Record whose node each vector is, and which field's, for field-restricted search."""
        for vid, owner in owners:
            self._vid_owner[vid] = owner
            self._field_vids.setdefault(owner[2], set()).add(vid)


def _search_past_ties(index: VectorIndex, queries: np.ndarray, top_k: int, tuning: SearchTuning,
                      available: int) -> tuple[np.ndarray, np.ndarray]:
    """The index's ``top_k`` per query, widened past any run of equal scores at the cut.

    Which of several tied vectors FAISS keeps depends on the order they were added, which a
    replay or a rebalance changes; with the whole run fetched, the caller cuts it by document id.
    One vector beyond the cut shows whether a run crosses it, so an untied search (the common
    case) is one FAISS call; a tied one doubles its width until the run ends.
    """
    k = min(top_k + 1, available)
    while True:
        scores, ids = index.search(queries, k, tuning)
        if k >= available or ids.shape[1] < k or not _tied_past_cut(scores, ids, top_k):
            return scores, ids
        k = min(2 * k, available)


def _tied_past_cut(scores: np.ndarray, ids: np.ndarray, top_k: int) -> bool:
    """True if a row's last hit, beyond position ``top_k``, scores what its ``top_k``-th does: more may tie beyond.

    :param scores: (queries, k) with k > ``top_k``; rows padded with id -1 where the index ran out.
    """
    last = ids.shape[1] - 1
    if last < top_k:
        return False
    return bool(np.any((ids[:, last] != -1) & (scores[:, top_k - 1] == scores[:, last])))


def _without_blobs(doc: Document) -> Document:
    """The document as the shard keeps it: without the bytes of its nodes (an image's, say). Search reads
    vectors and texts; a reply carrying each match's image would be megabytes (an image flow's segmenter
    leaves a small ``thumbnail`` tag instead), and the ingest topic keeps the originals."""
    if doc.blob is None and not any(_has_blob(chunk) for chunk in doc.chunks):
        return doc
    return dataclasses.replace(doc, blob=None, chunks=[_without_blobs(chunk) for chunk in doc.chunks])


def _has_blob(doc: Document) -> bool:
    return doc.blob is not None or any(_has_blob(chunk) for chunk in doc.chunks)


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
