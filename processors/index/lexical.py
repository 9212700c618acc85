"""The lexical arm of a shard: BM25 over the texts it holds, scored with the statistics a request carries.

Scores must not depend on how many shards hold the corpus: with each shard's own document
frequencies a document's score moves with the shard count, and common words stop ranking
(Weaviate #2918, Elasticsearch #24232). So a search takes its statistics (units, tokens, document
frequencies) as an argument: every shard of one request scores with the same, corpus-wide numbers.

Why this module scores instead of a library (compared on SciFact, notes in the README): tantivy-py
0.27 scores only with its index's own statistics (``Bm25StatisticsProvider`` is not bound; its N
also counts deleted documents until a merge), and bm25s bakes idf and the average length into its
matrix at build time, with no add or delete. The library part is the analysis: tantivy's Rust
analyzer (simple tokenizer, lower-case, Lucene's English stop words, Snowball English stemmer).
The score is BM25 with Lucene's idf (Robertson & Zaragoza 2009; the formula of tantivy's ``bm25.rs``;
bm25s ``method="lucene"`` gives the same ranking and scores divided by k1 + 1, which a test checks).

Like FAISS, this index is derived: built from the term counts the shard stores, and following each
write after the store took it. A unit is what gets a vector id on the dense side (a chunk, or a root
with text), so a lexical hit ranks back to its document the same way.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["K1", "Analyzer", "B", "CorpusStats", "LexicalIndex"]

K1 = 0.75
"""Term-frequency saturation, the flows' default (``CompoundIndexerConfig.bm25_k1``): below Lucene's and
tantivy's 1.2, because hybrid retrieval scored best with it on the training queries of SciFact and NFCorpus
(``benchmarks/fusion_quality.py --select bm25``; the README's "How the defaults were chosen")."""
B = 0.75
"""Length normalisation: Lucene's and tantivy's default, and the flows' (``CompoundIndexerConfig.bm25_b``)."""

_COMPACT_DEAD_SHARE = 0.2
"""Postings of removed units are dropped once they are this share of all units (as HNSW's rebuild)."""


class Analyzer:
    """Text to index terms: Unicode NFC, then tantivy's Rust analyzer: split on non-alphanumerics,
    drop tokens over 40 bytes, lower-case, drop Lucene's 33 English stop words, Snowball English stemming.

    NFC first, so that a query typed with composed accents finds text stored decomposed (the
    tokenizer would split "cafe" + U+0301). The fan-out analyses a query with the same analyzer
    the shards used for the documents; :attr:`name`, which holds tantivy's version (its stemmer and
    Unicode tables may change between releases), is stored with a shard so that a changed analyzer
    is noticed and the counts redone, never mixed.
    """

    def __init__(self) -> None:
        from importlib.metadata import version

        from tantivy import Filter, TextAnalyzerBuilder, Tokenizer

        self._analyze: Callable[[str], list[str]] = (
            TextAnalyzerBuilder(Tokenizer.simple()).filter(Filter.remove_long(40)).filter(Filter.lowercase())
            .filter(Filter.stopword("english")).filter(Filter.stemmer("english")).build().analyze)
        self.name = (f"nfc,tantivy-{version('tantivy')}:simple,remove_long(40),lowercase,stopword(english),"
                     "stemmer(english)")

    def terms(self, text: str) -> list[str]:
        """The text's terms in order, repeats kept (a query's repeated term counts twice)."""
        return self._analyze(unicodedata.normalize("NFC", text))

    def counts(self, text: str) -> dict[str, int]:
        """Term -> occurrences in ``text``: what a shard stores for one unit."""
        return dict(Counter(self.terms(text)))


@dataclass(frozen=True, slots=True)
class CorpusStats:
    """What BM25 needs of a corpus: units (texts indexed), their tokens in all, and per term the
    units holding it. A shard's own (:meth:`LexicalIndex.stats`), or the sum of every shard's."""

    units: int = 0
    tokens: int = 0
    df: Mapping[str, int] = field(default_factory=dict)

    @property
    def avgdl(self) -> float:
        """Average unit length in tokens (1 for an empty corpus, so nothing divides by zero)."""
        return self.tokens / self.units if self.units else 1.0

    @classmethod
    def sum(cls, parts: Iterable[CorpusStats]) -> CorpusStats:
        """Corpus-wide statistics from every shard's own."""
        units = tokens = 0
        df: Counter[str] = Counter()
        for part in parts:
            units, tokens = units + part.units, tokens + part.tokens
            df.update(part.df)
        return cls(units, tokens, dict(df))

    def for_terms(self, terms: Iterable[str]) -> CorpusStats:
        """Only what a query with these terms needs: what a request carries to the shards."""
        return CorpusStats(self.units, self.tokens, {term: self.df.get(term, 0) for term in set(terms)})

    def idf(self, term: str) -> float:
        """Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5)); df is clamped to N (statistics that lag
        the shard's own writes must not make it negative)."""
        df = min(self.df.get(term, 0), self.units)
        return math.log(1 + (self.units - df + 0.5) / (df + 0.5))


class _Postings:
    """One term's units and term frequencies, in growable arrays (appends are amortised O(1))."""

    __slots__ = ("size", "tfs", "vids")

    def __init__(self) -> None:
        self.vids = np.empty(4, np.int64)
        self.tfs = np.empty(4, np.float32)
        self.size = 0

    def append(self, vid: int, tf: int) -> None:
        if self.size == len(self.vids):
            self.vids = np.resize(self.vids, 2 * self.size)
            self.tfs = np.resize(self.tfs, 2 * self.size)
        self.vids[self.size], self.tfs[self.size] = vid, tf
        self.size += 1


class _FieldCounts:
    """One field's units, tokens and document frequencies in one shard."""

    __slots__ = ("df", "tokens", "units")

    def __init__(self) -> None:
        self.units = 0
        self.tokens = 0
        self.df: Counter[str] = Counter()

    def stats(self) -> CorpusStats:
        return CorpusStats(self.units, self.tokens, dict(self.df))


class LexicalIndex:
    """One shard's inverted index over unit term counts, keyed by the units' vector ids. Not thread-safe:
    the shard searches in the thread that applies its writes.

    Statistics are kept per field (a node's ``field_name``; "" for none), as Lucene keeps them: a
    search restricted to some fields scores with theirs (:meth:`stats` of those fields), an
    unrestricted one with their sum over all fields.

    Removing a unit takes its counts (the shard reads them from its store, which it must do to
    delete them anyway): the shard's own statistics stay exact at once, and its postings are
    dropped lazily (a removed unit has length 0 and never scores).
    """

    def __init__(self) -> None:
        self._postings: dict[str, _Postings] = {}
        self._lengths = np.zeros(1024, np.int32)
        """By vector id: the unit's length in tokens; 0 for a removed or never-used id."""
        self._fields: dict[str, _FieldCounts] = {}
        self._units = 0
        self._dead = 0

    def __len__(self) -> int:
        return self._units

    def stats(self, fields: Iterable[str] | None = None) -> CorpusStats:
        """This shard's own statistics (a copy) over ``fields``, or over all of them: what it publishes
        for the corpus-wide sum."""
        chosen = self._fields if fields is None else {name: self._fields[name] for name in fields
                                                       if name in self._fields}
        return CorpusStats.sum(counts.stats() for counts in chosen.values())

    def count(self, field: str, term: str = "") -> tuple[int, int]:
        """(document frequency, 0) of ``term`` in ``field``; with no term, the field's (units, tokens);
        (0, 0) for what this shard does not hold."""
        counts = self._fields.get(field)
        if counts is None:
            return 0, 0
        return (counts.units, counts.tokens) if not term else (counts.df.get(term, 0), 0)

    def keys(self) -> list[tuple[str, str]]:
        """Every (field, "") and (field, term) this shard holds."""
        return [key for field, counts in self._fields.items() for key in ((field, ""), *((field, t) for t in counts.df))]

    def field_stats(self) -> dict[str, CorpusStats]:
        """This shard's own statistics by field (copies)."""
        return {name: counts.stats() for name, counts in self._fields.items()}

    def add(self, vid: int, counts: Mapping[str, int], field: str = "") -> None:
        """Index one unit of ``field``; ``vid`` is new (vector ids are never reused). A unit without terms
        is not indexed."""
        length = sum(counts.values())
        if not length:
            return
        if vid >= len(self._lengths):
            grown = np.zeros(max(2 * len(self._lengths), vid + 1), np.int32)
            grown[: len(self._lengths)] = self._lengths
            self._lengths = grown
        self._lengths[vid] = length
        self._units += 1
        for term, tf in counts.items():
            postings = self._postings.get(term)
            if postings is None:
                postings = self._postings[term] = _Postings()
            postings.append(vid, tf)
        field_counts = self._fields.get(field)
        if field_counts is None:
            field_counts = self._fields[field] = _FieldCounts()
        field_counts.units += 1
        field_counts.tokens += length
        field_counts.df.update(counts.keys())

    def remove(self, vid: int, counts: Mapping[str, int], field: str = "") -> None:
        """Unindex one unit, given the counts and field it was added with; an id not indexed is ignored."""
        if vid >= len(self._lengths) or not self._lengths[vid]:
            return
        self._units -= 1
        self._lengths[vid] = 0
        field_counts = self._fields[field]
        field_counts.units -= 1
        field_counts.tokens -= sum(counts.values())
        field_counts.df.subtract(counts.keys())
        for term in counts:
            if field_counts.df[term] <= 0:
                del field_counts.df[term]
        if not field_counts.units:
            del self._fields[field]
        self._dead += 1
        if self._dead > _COMPACT_DEAD_SHARE * max(self._units, 1):
            self._compact()  # amortised: O(postings) once per 20% of units removed, inside that write

    @property
    def dead(self) -> int:
        """Removed units whose postings are still held (dropped at the next compaction)."""
        return self._dead

    def search(self, terms: Sequence[str], stats: CorpusStats, k: int, allowed: np.ndarray | None = None,
               k1: float = K1, b: float = B) -> tuple[np.ndarray, np.ndarray]:
        """The units scoring highest for ``terms`` under ``stats``: every unit tied with the k-th
        included (the caller breaks ties by document id), best first, then by vector id.

        :param terms: the analysed query (``Analyzer.terms``); a repeated term weighs once per repeat.
        :param stats: corpus-wide statistics (the request's), so that scores match across shards.
        :param allowed: only these vector ids (a field-restricted search), before the cut.
        :param k1: term-frequency saturation (0 scores a term's presence only, by its idf).
        :param b: length normalisation, 0 (none) to 1 (full).
        :returns: vector ids (int64) and their BM25 scores (float64), as arrays of equal length.
        """
        vids_parts, weight_parts = [], []
        for term, repeats in Counter(terms).items():
            postings = self._postings.get(term)
            if postings is None:
                continue
            vids, tfs = postings.vids[: postings.size], postings.tfs[: postings.size].astype(np.float64)
            lengths = self._lengths[vids].astype(np.float64)
            live = lengths > 0
            if allowed is not None:
                live &= np.isin(vids, allowed)
            vids, tfs, lengths = vids[live], tfs[live], lengths[live]
            weight = stats.idf(term) * tfs * (k1 + 1) / (tfs + k1 * (1 - b + b * lengths / stats.avgdl))
            vids_parts.append(vids)
            weight_parts.append(repeats * weight)
        if not vids_parts:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        unique, inverse = np.unique(np.concatenate(vids_parts), return_inverse=True)
        scores = np.bincount(inverse, weights=np.concatenate(weight_parts))
        if len(scores) > k > 0:
            cut = np.partition(scores, len(scores) - k)[len(scores) - k]
            keep = scores >= cut
            unique, scores = unique[keep], scores[keep]
        order = np.lexsort((unique, -scores))
        return unique[order], scores[order]

    def _compact(self) -> None:
        """Drop the postings of removed units, and terms no unit holds any more."""
        for term in list(self._postings):
            postings = self._postings[term]
            vids = postings.vids[: postings.size]
            live = self._lengths[vids] > 0
            if not live.any():
                del self._postings[term]
                continue
            postings.vids, postings.tfs = vids[live].copy(), postings.tfs[: postings.size][live].copy()
            postings.size = len(postings.vids)
        self._dead = 0
