"""The lexical arm inside a shard: the analyzer and the BM25 index (``lexical.py``) over its units.

A unit is a node with text and a vector; its term counts are stored in RocksDB under its vector id, in
the write that stores the vector (``store.py``), and the in-memory index is rebuilt from them when the
shard opens. The arm may be off (``lexical: false``): then nothing is counted, and every read refuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from processors.exceptions import ConfigError
from processors.index.hits import node_at
from processors.index.lexical import Analyzer, CorpusStats, LexicalIndex
from processors.index.store import Owner, ShardStore, ShardWrite

__all__ = ["LEXICAL_OP_NAME", "FieldedTermCounts", "LexicalArm", "TermCounts"]

logger = logging.getLogger(__name__)

LEXICAL_OP_NAME = "bm25"
"""The ``op_name`` of a lexical hit's score (a similarity: higher is better)."""

TermCounts = list[tuple[int, dict[str, int]]]
"""Units' term counts by vector id."""

FieldedTermCounts = list[tuple[int, dict[str, int], str]]
"""Units' term counts by vector id, each with its node's ``field_name``."""


class LexicalArm:
    """One shard's lexical arm: its units' term counts, stored and indexed, or nothing when it is off.

    :param analyzer: None when the arm is off.
    :param store: the shard's store, which holds the term counts.
    """

    def __init__(self, analyzer: Analyzer | None, store: ShardStore) -> None:
        self._analyzer = analyzer
        self._store = store
        self.reset()

    @property
    def enabled(self) -> bool:
        """Whether the shard keeps the arm (``lexical: true``)."""
        return self._analyzer is not None

    def __len__(self) -> int:
        """The units indexed now."""
        return len(self._index)

    def reset(self) -> None:
        """Forget the index (derived from RocksDB)."""
        self._index = LexicalIndex()

    def open(self, owners: Sequence[Owner], ids: np.ndarray, field_of: Callable[[int], str]) -> None:
        """Build the lexical arm from the stored term counts; first count them from the stored documents
        when the shard has none from this analyzer (an older shard, or the analyzer changed), or clear
        them when the arm is off (counts that stopped following writes must never be read again).

        :param owners: the stored vectors' owners, in the order of ``ids``.
        :param field_of: a stored vector's node's ``field_name``.
        """
        wanted = self._analyzer.name if self._analyzer is not None else ""
        if (self._store.analyzer or "") != wanted:  # None: no counts (a new or a format-2 shard)
            started = time.perf_counter()
            terms = self._terms_from_documents(owners, ids) if self._analyzer is not None else []
            self._store.replace_term_counts(terms, wanted)
            logger.info("lexical term counts rebuilt from the stored documents", extra={
                "path": str(self._store.path), "units": len(terms), "seconds": round(time.perf_counter() - started, 3)})
        if self._analyzer is not None:
            for vid, counts in self._store.term_counts():
                self._index.add(vid, counts, field_of(vid))

    def _terms_from_documents(self, owners: Sequence[Owner], ids: np.ndarray) -> TermCounts:
        """Each vector's node's text, analysed: read from the stored root documents."""
        assert self._analyzer is not None
        terms: TermCounts = []
        root_id, root = None, None  # a document's vectors have consecutive ids: one root held at a time
        for vid, (doc_id, path, _) in zip(ids.tolist(), owners):
            if doc_id != root_id:
                root_id, root = doc_id, self._store.document(doc_id)
            text = node_at(root, path).text if root is not None else None
            if text:
                terms.append((vid, self._analyzer.counts(text)))
        return terms

    # -- writes ----------------------------------------------------------------------------

    def stored_counts(self, write: ShardWrite, vids: Sequence[int]) -> TermCounts:
        """The stored term counts of these (removed) units, to take out of the index; none when the arm is off."""
        return write.stored_term_counts(vids) if self._analyzer is not None else []

    def stage(self, write: ShardWrite, vid: int, text: str | None) -> dict[str, int] | None:
        """Stage a new vector's node's term counts in the write; returns them, or None when the arm is off
        or the node has no text (not a unit)."""
        if self._analyzer is None or not text:
            return None
        counts = self._analyzer.counts(text)
        write.put_term_counts(vid, counts)
        return counts

    def follow(self, removed: FieldedTermCounts, added: FieldedTermCounts) -> set[tuple[str, str]]:
        """The index follows a committed write: the removed units out, the new ones in.

        :returns: the (field, term) keys whose statistics changed, with (field, "") for each field touched.
        """
        changed: set[tuple[str, str]] = set()
        for vid, counts, field in removed:
            self._index.remove(vid, counts, field)
            changed.update((field, term) for term in ("", *counts))
        for vid, counts, field in added:
            self._index.add(vid, counts, field)
            changed.update((field, term) for term in ("", *counts))
        return changed

    # -- reads -----------------------------------------------------------------------------

    def counts(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
        """This shard's own (count, tokens) of each (field, term) key: a term's document frequency in the
        field (tokens 0), or for (field, "") the field's units and tokens; (0, 0) where it has none.

        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        """
        self.require()
        return {key: self._index.count(*key) for key in keys}

    def keys(self) -> list[tuple[str, str]]:
        """Every (field, term) and (field, "") this shard holds statistics for: what a snapshot of them covers."""
        self.require()
        return self._index.keys()

    def stats(self, fields: Sequence[str] | None = None) -> CorpusStats:
        """This shard's own lexical statistics over ``fields`` (node ``field_name``s; "" for none), or over
        all of them: what it publishes for the corpus-wide sum, and what a search of those fields scores with.

        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        """
        self.require()
        return self._index.stats(fields)

    @property
    def analyzer_name(self) -> str:
        """The lexical arm's analyzer (``Analyzer.name``), which the fan-out's must equal.

        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        """
        return self.require().name

    def analyze(self, text: str) -> list[str]:
        """A query's terms, as the stored texts were analysed.

        :raises ConfigError: if this shard keeps no lexical arm (``lexical: false``).
        """
        return self.require().terms(text)

    def require(self) -> Analyzer:
        """Every lexical read refuses alike when the arm is off: empty statistics from one shard would
        silently skew a corpus-wide sum."""
        if self._analyzer is None:
            raise ConfigError("this index keeps no lexical arm (CompoundIndexer with lexical: false)")
        return self._analyzer

    def search(self, terms: Sequence[str], stats: CorpusStats, top_k: int, allowed: np.ndarray | None,
               k1: float, b: float) -> tuple[np.ndarray, np.ndarray]:
        """The ``top_k`` units scoring highest by BM25 (``k1``, ``b``) with these corpus-wide statistics:
        their vector ids and scores, among the ``allowed`` ids if given. The caller checked :meth:`require`
        first."""
        return self._index.search(terms, stats, top_k, allowed=allowed, k1=k1, b=b)
