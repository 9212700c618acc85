"""The shard index: a facade over the shard's RocksDB (``store``) and the FAISS indexes derived from it.

RocksDB is the source of truth (``store.py`` holds the key layout); FAISS is rebuilt from the
stored vectors when the index opens, and follows every write only after RocksDB took it.

One set of stored vectors serves every index type (``types.py``): the exact one is always kept;
the others are built from the stored vectors when first asked for (no re-encoding, no re-ingest)
and then follow every write, like the exact one.

The FAISS indexes are kept in ``vector_indexes.py``. The lexical arm (``lexical_arm.py``) and the field
indexes (``field_indexes.py``) live beside the vectors: their data is stored in the same RocksDB write
as the vectors, and their indexes follow it likewise. Hits are made from vector ids in ``hits.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from processors.document import Direction, Document
from processors.exceptions import DimensionMismatchError
from processors.index.base import ApplyResult, Change, DocumentCodec, Hit, IndexStats, SearchTuning
from processors.index.config import CompoundIndexerConfig
from processors.index.field_indexes import FieldIndexes
from processors.index.hits import VectorOwners, embedded_nodes, row_hits
from processors.index.hits import search_past_ties as _search_past_ties
from processors.index.lexical import Analyzer, CorpusStats
from processors.index.lexical_arm import LEXICAL_OP_NAME, LexicalArm
from processors.index.staging import StagedVectors, check_dims, stage_vectors
from processors.index.store import Owner, ShardStore
from processors.index.types import EXACT, known_index_type
from processors.index.vector_indexes import VectorIndexes
from processors.query.filter import Filter

__all__ = ["LEXICAL_OP_NAME", "CompoundIndexer", "CompoundIndexerConfig"]

logger = logging.getLogger(__name__)


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
        self._lexical = LexicalArm(Analyzer() if config.lexical else None, self._store)
        self._fields = FieldIndexes(config.filterable, self._store)
        self._indexes = VectorIndexes(config, self._store)
        self._reset_derived()

    # -- lifecycle -------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Open RocksDB, rebuild FAISS from the stored vectors, and build the default index type."""
        if self._store.is_open:
            return
        self._store.open()
        self._reset_derived()
        self._next_vid = self._store.next_vid()
        self._documents = self._store.document_count()
        ids, vectors, owners = self._store.vectors()
        self._owners.add(zip(ids.tolist(), owners))
        self._indexes.exact.add(ids, vectors)
        self._indexes.index_for(self.config.index_type, stored=(ids, vectors))
        self._lexical.open(owners, ids, self._owners.field_of)
        self._fields.open(owners, ids)
        logger.info("shard index opened", extra={"path": str(self.path), "vectors": len(ids),
                                                 "lexical_units": len(self._lexical)})

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Apply within with FAISS built once at the end (``VectorIndexes.defer_adds``): for a rebuild from the
        topic, which nothing searches meanwhile (vectors applied within are found only after it). Leaving flushes
        what was written to disk (``ShardStore.flush``)."""
        self._indexes.defer_adds()
        try:
            yield
        finally:
            self._indexes.add_deferred()
            self._refresh_approximate()
            if self._store.is_open:
                self._store.flush()

    def flush(self) -> None:
        """Write what RocksDB holds in memory to disk now, and wait (``ShardStore.flush``): for the rare writes a
        crash must not take back, such as a shard's note that documents may be missing."""
        self._store.flush()

    def flush_if_due(self, *, interval_s: float | None = None) -> bool:
        """Flush RocksDB's memtable if a write has waited ``interval_s`` in it (``ShardStore.flush_if_due``): for
        the index stage's idle rounds, so that the last write of a trickle reaches the disk too. Returns whether
        nothing written is left unflushed."""
        return self._store.flush_if_due(interval_s=interval_s)

    def close(self) -> None:
        """Flush and close RocksDB; safe to call twice."""
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
        exact = self._indexes.exact
        return index_type == EXACT.name or self._indexes.index_for(known_index_type(index_type)) is not exact

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
        stored = {change.doc_id: change.stored for change in changes}
        planned = [(doc, list(embedded_nodes(doc))) for doc in last.values() if doc is not None]
        check_dims(planned, self.config.dim)
        write = self._store.begin(term_counts=self._lexical.enabled, field_values=self._fields.enabled)
        removed_vids = write.remove_documents(list(last))
        removed_terms = self._lexical.stored_counts(write, removed_vids)
        new_fields = self._fields.stage(write, planned, self._next_vid)
        staged = stage_vectors(write, planned, stored, first_vid=self._next_vid, dim=self.config.dim,
                               lexical=self._lexical)
        self._next_vid += len(staged.ids)  # before the commit: an id is never given twice, even past a failed one
        self._store.commit(write, next_vid=self._next_vid, checkpoint=checkpoint)
        self._documents += write.net_documents
        changed = self._lexical.follow(  # before FAISS, whose training below is what may fail
            [(vid, counts, self._owners.field_of(vid)) for vid, counts in removed_terms], staged.terms)
        removed = self._follow(removed_vids, staged)
        self._fields.follow(removed_vids, new_fields)
        self._store.flush_if_due()  # once all followed the write: a flush that fails leaves them agreeing
        return ApplyResult(
            upserted=len(planned),
            deleted=sum(1 for doc in last.values() if doc is None),
            vectors_added=len(staged.ids),
            vectors_removed=removed,
            lexical_changed=frozenset(changed),
        )

    def _follow(self, removed_vids: list[int], staged: StagedVectors) -> int:
        """FAISS follows RocksDB, only after the write succeeded; returns how many vectors were removed."""
        removed = self._indexes.follow(np.array(removed_vids, dtype=np.int64), staged.ids, staged.matrix)
        self._owners.remove(removed_vids)
        self._owners.add(zip(staged.ids.tolist(), staged.owners))
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
    def flat_scan_fallbacks(self) -> int:
        """Searches since the shard opened whose float16 candidates the bound could not prove (0 in float32)."""
        return self._indexes.exact.half_scan_fallbacks

    @property
    def vector_count(self) -> int:
        """Vectors searchable now (cheaper than ``stats``, which also reads the stored checkpoint)."""
        return self._indexes.exact.size

    def stats(self) -> IndexStats:
        return IndexStats(documents=self._documents, vectors=self._indexes.exact.size,
                          checkpoint=self.checkpoint(), index_types=self._indexes.built())

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
                                    or len(allowed) < self.config.exact_filter_share * self.vector_count):
            chosen = EXACT.name
        tuning = SearchTuning(ef_search=ef_search, nprobe=nprobe, allowed=allowed)
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.config.dim:
            raise DimensionMismatchError(
                f"query embeddings have shape {queries.shape}, the index holds {self.config.dim}-d vectors"
            )
        index = self._indexes.index_for(chosen)
        if top_k < 1 or index.size == 0 or (allowed is not None and not len(allowed)):
            return [[] for _ in queries]
        available = index.size if allowed is None else len(allowed)
        scores, ids = _search_past_ties(index, queries, top_k, tuning, available)
        if allowed is not None and index is not self._indexes.exact and _short(ids, min(top_k, available)):
            # A walk over a filter that keeps the neighbourhood out (a filter correlated with the vectors)
            # may end before it finds top_k allowed vectors: the exact scan does, so nothing that exists is lost.
            index = self._indexes.exact
            scores, ids = _search_past_ties(index, queries, top_k, tuning, available)
        roots: dict[str, Document | None] = {}
        return [self._hits(index.op_name, index.direction, row_scores, row_ids, top_k, roots, with_vectors)
                for row_scores, row_ids in zip(scores, ids)]

    # -- the lexical arm (``lexical_arm.py``; each read raises ConfigError when it is off) -----

    def lexical_counts(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
        """This shard's own (count, tokens) of each (field, term) key (:meth:`LexicalArm.counts`)."""
        return self._lexical.counts(keys)

    def lexical_keys(self) -> list[tuple[str, str]]:
        """Every (field, term) and (field, "") this shard holds statistics for (:meth:`LexicalArm.keys`)."""
        return self._lexical.keys()

    def lexical_stats(self, fields: Sequence[str] | None = None) -> CorpusStats:
        """This shard's own lexical statistics over ``fields``, or all of them (:meth:`LexicalArm.stats`)."""
        return self._lexical.stats(fields)

    @property
    def analyzer_name(self) -> str:
        """The lexical arm's analyzer, which the fan-out's must equal (:attr:`LexicalArm.analyzer_name`)."""
        return self._lexical.analyzer_name

    def analyze(self, text: str) -> list[str]:
        """A query's terms, as the stored texts were analysed (:meth:`LexicalArm.analyze`)."""
        return self._lexical.analyze(text)

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
        self._lexical.require()
        allowed = self._allowed(fields, filter)
        if top_k < 1:
            return []
        vids, scores = self._lexical.search(terms, stats, top_k, allowed, self.config.bm25_k1, self.config.bm25_b)
        return self._hits(LEXICAL_OP_NAME, Direction.SIMILARITY, scores, vids, top_k, {}, with_vectors)

    def _allowed(self, fields: Sequence[str] | None, filter: Filter | None) -> np.ndarray | None:
        """The ids of the vectors a search may return, ascending: of nodes with one of these field names,
        of documents the filter accepts, or both; None when neither restricts it."""
        allowed = None
        if fields is not None:
            allowed = self._owners.of_fields(fields)
        if filter is not None:
            selected = self._fields.select(filter)
            allowed = selected if allowed is None else np.intersect1d(allowed, selected, assume_unique=True)
        return allowed

    def _hits(self, op_name: str, direction: Direction, row_scores: np.ndarray, row_ids: np.ndarray, top_k: int,
              roots: dict[str, Document | None], with_vectors: bool = False) -> list[Hit]:
        """One query's hits (``hits.row_hits``); ``with_vectors`` gives each node its vector from the exact index."""
        return row_hits(op_name, direction, row_scores, row_ids, top_k, owners=self._owners, store=self._store,
                        roots=roots, vectors=self._indexes.exact if with_vectors else None)

    # -- internals -------------------------------------------------------------------------

    def _reset_derived(self) -> None:
        """Forget everything derived from RocksDB: the FAISS indexes, the vector owners, the lexical arm's
        index and the field indexes."""
        self._indexes.reset()
        self._owners = VectorOwners()
        self._lexical.reset()
        self._fields.reset()
        self._next_vid = 0
        self._documents = 0
        """Stored root documents: counted at open, then followed by every write (``stats``, every status report,
        counted them on disk: a scan of 100,000 keys that held up the shard's searches)."""

    def _refresh_approximate(self) -> None:
        """After a write: rebuild the indexes that drifted from the data, and build the default once it can be
        (``VectorIndexes.refresh``; the step after the write that may fail)."""
        self._indexes.refresh()


def _short(ids: np.ndarray, wanted: int) -> bool:
    """Whether a row of a search's ids holds fewer than ``wanted`` hits (-1 pads a short row)."""
    return bool(np.any((ids != -1).sum(axis=1) < wanted))
