"""The lexical arm: tantivy's analysis, Lucene's BM25 (checked against bm25s), scores that do not
depend on the shard count when the statistics are corpus-wide, and writes that keep them exact."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from processors.index.lexical import K1, Analyzer, B, CorpusStats, LexicalIndex

WORDS = ["cell", "protein", "gene", "expression", "tumour", "growth", "factor", "immune", "response", "patient", "trial", "dose", "blood", "pressure", "heart", "risk", "mutation", "receptor", "signal", "pathway", "virus", "infection", "vaccine", "brain", "neuron", "memory", "sleep", "diet", "obesity", "insulin", "glucose", "liver", "kidney"]


def corpus(size: int = 300, seed: int = 7) -> list[tuple[str, str]]:
    """Texts with a skewed vocabulary (common and rare words), so that df and length matter."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    return [(f"d{i:04d}", " ".join(rng.choices(WORDS, weights, k=rng.randint(3, 40)))) for i in range(size)]


QUERIES = ["tumour growth", "immune response vaccine", "insulin", "blood pressure heart risk", "cell cell signal",
           "kidney liver glucose diet", "neuron memory sleep", "gene mutation receptor pathway"]


def build(docs: list[tuple[str, str]], analyzer: Analyzer) -> tuple[LexicalIndex, dict[int, str]]:
    index, owners = LexicalIndex(), {}
    for vid, (doc_id, text) in enumerate(docs):
        index.add(vid, analyzer.counts(text))
        owners[vid] = doc_id
    return index, owners


def ranked(index: LexicalIndex, owners: dict[int, str], terms: list[str], stats: CorpusStats,
           k: int = 10, k1: float = K1, b: float = B) -> list[tuple[str, float]]:
    vids, scores = index.search(terms, stats, k, k1=k1, b=b)
    return [(owners[int(v)], float(s)) for v, s in zip(vids, scores)]


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer()


def test_the_analyzer_lower_cases_stems_and_drops_stop_words(analyzer: Analyzer) -> None:
    assert analyzer.terms("The Running cells and THE tumours of IL-6") == ["run", "cell", "tumour", "il", "6"]
    assert analyzer.counts("cells cell the") == {"cell": 2}


@pytest.mark.parametrize(("k1", "b"), [(K1, B), (1.2, 0.75), (0.0, 0.0), (2.0, 1.0)])
def test_the_ranking_is_lucene_bm25_as_bm25s_computes_it(analyzer: Analyzer, k1: float, b: float) -> None:
    """Same analysed tokens, same k1 and b (the flows', Lucene's, the extremes): the top 10 of every query is
    bm25s's, in its order."""
    import bm25s  # type: ignore[import-untyped]  # the test extra's
    docs = corpus()
    index, owners = build(docs, analyzer)
    reference = bm25s.BM25(method="lucene", k1=k1, b=b)
    reference.index([analyzer.terms(text) for _, text in docs], show_progress=False)
    for query in QUERIES:
        terms = analyzer.terms(query)
        mine = ranked(index, owners, terms, index.stats(), k1=k1, b=b)
        found, scores = reference.retrieve([terms], k=len(mine), show_progress=False)
        theirs = [(docs[int(i)][0], float(s)) for i, s in zip(found[0], scores[0])]
        # bm25s, as Lucene since 8.0, leaves out the constant factor (k1 + 1) that tantivy and Robertson keep
        assert [score / (k1 + 1) for _, score in mine] == pytest.approx([score for _, score in theirs], rel=1e-5), query
        assert mine == sorted(mine, key=lambda hit: (-hit[1], hit[0]))  # equal scores by document id
        assert {doc for doc, _ in mine} == {doc for doc, _ in theirs} or _tied_at_cut(mine), query


def _tied_at_cut(hits: list[tuple[str, float]]) -> bool:
    return len(hits) > 1 and hits[-1][1] == pytest.approx(hits[-2][1])


def test_scores_do_not_depend_on_the_shard_count_with_corpus_wide_statistics(analyzer: Analyzer) -> None:
    docs = corpus()
    whole, whole_owners = build(docs, analyzer)
    shards = [build([d for d in docs if zlib.crc32(d[0].encode()) % 4 == s], analyzer) for s in range(4)]
    corpus_wide = CorpusStats.sum(index.stats() for index, _ in shards)
    assert corpus_wide == whole.stats()
    differs_with_own = 0
    for query in QUERIES:
        terms = analyzer.terms(query)
        one = ranked(whole, whole_owners, terms, whole.stats())
        merged = sorted((hit for index, owners in shards for hit in ranked(index, owners, terms, corpus_wide.for_terms(terms))),
                        key=lambda hit: (-hit[1], hit[0]))[:10]
        assert merged == one[:10], query  # bit-identical scores, same order
        own = sorted((hit for index, owners in shards for hit in ranked(index, owners, terms, index.stats())),
                     key=lambda hit: (-hit[1], hit[0]))[:10]
        differs_with_own += own != one[:10]
    assert differs_with_own  # each shard's own statistics would have moved the scores


def test_removed_and_re_added_units_leave_what_a_fresh_build_has(analyzer: Analyzer) -> None:
    docs = corpus(200)
    index, owners = build(docs, analyzer)
    rng = random.Random(3)
    next_vid = len(docs)
    live = dict(enumerate(docs))
    for vid in rng.sample(range(len(docs)), 120):  # past the compaction threshold
        doc_id, text = live.pop(vid)
        index.remove(vid, analyzer.counts(text))
        if vid % 2:  # an upsert: the same document under a new vector id, with another text
            text = text + " vaccine"
            index.add(next_vid, analyzer.counts(text))
            live[next_vid], owners[next_vid] = (doc_id, text), doc_id
            next_vid += 1
    assert index.dead < 60  # compacted at least once on the way (120 removals)
    fresh, fresh_owners = build([live[vid] for vid in sorted(live)], analyzer)
    assert index.stats() == fresh.stats()
    for query in QUERIES:
        terms = analyzer.terms(query)
        assert ranked(index, owners, terms, index.stats()) == ranked(fresh, fresh_owners, terms, fresh.stats())


def test_ties_at_the_cut_are_all_returned_best_first_then_by_vector_id(analyzer: Analyzer) -> None:
    index = LexicalIndex()
    for vid in (5, 3, 9, 1):
        index.add(vid, analyzer.counts("insulin glucose"))
    index.add(7, analyzer.counts("insulin"))
    vids, scores = index.search(["insulin"], index.stats(), k=2)
    assert vids.tolist() == [7, 1, 3, 5, 9]  # the shorter unit first, then four tied, all past k
    assert scores[1] == scores[4] < scores[0]


def test_nothing_matches_and_empty_texts_are_not_units(analyzer: Analyzer) -> None:
    index = LexicalIndex()
    index.add(0, analyzer.counts("the and of"))  # stop words only
    assert len(index) == 0 and index.stats() == CorpusStats()
    vids, scores = index.search(["absent"], CorpusStats(), k=10)
    assert vids.size == scores.size == 0 and vids.dtype == np.int64
    index.remove(0, {})  # never indexed: nothing happens
    assert len(index) == 0


def test_statistics_are_kept_per_field_and_sum_over_fields(analyzer: Analyzer) -> None:
    """A search of one field scores with that field's statistics, as an index of that field alone would."""
    docs = corpus(120)
    both, titles_only = LexicalIndex(), LexicalIndex()
    for vid, (_, text) in enumerate(docs):
        field = "title" if vid % 3 == 0 else "abstract"
        both.add(vid, analyzer.counts(text), field)
        if field == "title":
            titles_only.add(vid, analyzer.counts(text), field)
    assert both.stats(["title"]) == titles_only.stats()
    assert both.stats() == CorpusStats.sum(both.field_stats().values()) and set(both.field_stats()) == {"title", "abstract"}
    allowed = np.arange(0, 120, 3, dtype=np.int64)
    for query in QUERIES:
        terms = analyzer.terms(query)
        restricted = both.search(terms, both.stats(["title"]), 10, allowed=allowed)
        alone = titles_only.search(terms, titles_only.stats(), 10)
        assert restricted[0].tolist() == alone[0].tolist() and restricted[1].tolist() == alone[1].tolist(), query
    for vid in range(0, 120, 3):  # the field emptied: gone from the statistics
        both.remove(vid, analyzer.counts(docs[vid][1]), "title")
    assert set(both.field_stats()) == {"abstract"} and both.stats(["title"]) == CorpusStats()
