"""The shard's lexical arm kept in step with its store: fed by the same writes as FAISS, rebuilt on open,
counted from the stored documents for a shard that has no counts from this analyzer."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from rocksdict import Options, Rdict

from processors.document import Direction, Document
from processors.exceptions import ConfigError
from processors.index.base import Change
from processors.index.compound import LEXICAL_OP_NAME, CompoundIndexer, CompoundIndexerConfig
from processors.index.lexical import Analyzer, CorpusStats
from processors.index.store import FORMAT
from streams.wire.codec import STORED_DOCUMENT

DIM = 8


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def doc(doc_id: str, *texts: str, field_name: str | None = None) -> Document:
    return Document(id=doc_id, chunks=[
        Document(id=f"{doc_id}/{i}", parent_id=doc_id, text=text, embedding=unit(zlib.crc32(f"{doc_id}/{i}".encode())),
                 field_name=field_name) for i, text in enumerate(texts)])


def open_index(path: Path, *, lexical: bool = True, **config: float) -> CompoundIndexer:
    index = CompoundIndexer(CompoundIndexerConfig(dim=DIM, lexical=lexical, **config), path=path,  # type: ignore[arg-type]
                            codec=STORED_DOCUMENT)  # type: ignore[arg-type]
    index.warm_up()
    return index


def found(index: CompoundIndexer, query: str, top_k: int = 10, **kwargs: object) -> list[tuple[str, str]]:
    terms = index.analyze(query)
    return [(hit.root.id, hit.node.id) for hit in
            index.search_lexical(terms=terms, stats=index.lexical_stats(), top_k=top_k, **kwargs)]  # type: ignore[arg-type]


CORPUS = [doc("a", "insulin resistance in the liver", "cells divide"),
          doc("b", "tumour growth factor", "Insulin signalling and insulin receptors"),
          doc("c", "sleep and memory consolidation")]


def test_a_rare_term_finds_its_chunk_with_a_bm25_score(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=[Change(d.id, d) for d in CORPUS], checkpoint=b"1")
    hits = index.search_lexical(terms=index.analyze("consolidated memories"), stats=index.lexical_stats(), top_k=3)
    assert [(h.root.id, h.node.id) for h in hits] == [("c", "c/0")]
    assert hits[0].score.op_name == LEXICAL_OP_NAME and hits[0].score.direction is Direction.SIMILARITY
    assert found(index, "insulin") == [("b", "b/1"), ("a", "a/0")]  # two occurrences beat one
    assert index.lexical_stats().units == 5


def test_the_flows_bm25_constants_score_the_search(tmp_path: Path) -> None:
    """``bm25_k1`` 0 scores a term's presence only: "insulin" twice in b/1 no longer beats once in a/0, and the two
    (one unit length apart, which ``bm25_b`` 0 ignores) tie and rank by document id."""
    for path, config, expected in [("k1", {"bm25_k1": 0.0, "bm25_b": 0.0}, [("a", "a/0"), ("b", "b/1")]),
                                   ("default", {}, [("b", "b/1"), ("a", "a/0")])]:
        index = open_index(tmp_path / path, **config)
        index.apply(changes=[Change(d.id, d) for d in CORPUS], checkpoint=b"1")
        hits = index.search_lexical(terms=index.analyze("insulin"), stats=index.lexical_stats(), top_k=3)
        assert [(h.root.id, h.node.id) for h in hits] == expected, config
        assert (hits[0].score.value == hits[1].score.value) == bool(config)


@pytest.mark.parametrize("config", [{"bm25_k1": -0.1}, {"bm25_b": 1.5}, {"bm25_k1": float("nan")}])
def test_bm25_constants_outside_their_range_are_refused(config: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="bm25_k1"):
        CompoundIndexerConfig(dim=DIM, lexical=True, **config)  # type: ignore[arg-type]


def test_upserts_and_deletes_keep_the_counts_exact(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=[Change(d.id, d) for d in CORPUS], checkpoint=b"1")
    index.apply(changes=[Change("b", doc("b", "kidney function")), Change("c", None)], checkpoint=b"2")
    assert found(index, "insulin") == [("a", "a/0")]
    assert found(index, "kidney") == [("b", "b/0")] and found(index, "memory") == []
    fresh = open_index(tmp_path / "fresh")
    fresh.apply(changes=[Change("a", CORPUS[0]), Change("b", doc("b", "kidney function"))], checkpoint=b"1")
    assert index.lexical_stats() == fresh.lexical_stats()


def test_a_reopened_shard_rebuilds_the_arm_from_its_stored_counts(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=[Change(d.id, d) for d in CORPUS], checkpoint=b"1")
    before, stats = found(index, "insulin growth memory"), index.lexical_stats()
    index.close()
    again = open_index(tmp_path)
    assert found(again, "insulin growth memory") == before and again.lexical_stats() == stats


def test_a_shard_without_counts_from_this_analyzer_counts_its_stored_documents(tmp_path: Path) -> None:
    """A shard written before the lexical arm (format 2), or with it off, gets its counts on the first
    open with it on; a shard opened with it off drops its counts, which stopped following writes."""
    dense_only = open_index(tmp_path, lexical=False)
    dense_only.apply(changes=[Change(d.id, d) for d in CORPUS], checkpoint=b"1")
    dense_only.close()
    with_arm = open_index(tmp_path)
    assert found(with_arm, "insulin") == [("b", "b/1"), ("a", "a/0")] and with_arm.lexical_stats().units == 5
    with_arm.close()
    db = Rdict(str(tmp_path), options=Options(raw_mode=True))
    try:
        assert db[b"m/analyzer"] == Analyzer().name.encode() and db[b"m/format"] == str(FORMAT).encode()
        del db[b"m/analyzer"]  # as a format-2 shard has it: no counts, no analyzer, format 2
        for key in [key for key in db.keys(from_key=b"l/") if key.startswith(b"l/")]:
            del db[key]
        db[b"m/format"] = b"2"
    finally:
        db.close()
    open_index(tmp_path, lexical=False).close()
    assert _stored(tmp_path, b"m/format") == str(FORMAT).encode()  # every open shard is moved to format 5
    recounted = open_index(tmp_path)
    assert found(recounted, "insulin") == [("b", "b/1"), ("a", "a/0")]
    live = open_index(tmp_path / "live")
    live.apply(changes=[Change(d.id, d) for d in CORPUS], checkpoint=b"1")
    assert recounted.lexical_stats() == live.lexical_stats()
    recounted.close()
    assert _stored(tmp_path, b"m/format") == str(FORMAT).encode()
    open_index(tmp_path, lexical=False).close()
    db = Rdict(str(tmp_path), options=Options(raw_mode=True))
    try:
        assert not [key for key in db.keys(from_key=b"l/") if key.startswith(b"l/")]
    finally:
        db.close()


def test_a_field_restricted_search_cuts_before_the_top_k(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=[Change("t", doc("t", "insulin insulin insulin", field_name="title")),
                         Change("x", doc("x", "insulin", field_name="abstract"))], checkpoint=b"1")
    assert found(index, "insulin", top_k=1) == [("t", "t/0")]
    assert found(index, "insulin", top_k=1, fields=["abstract"]) == [("x", "x/0")]


def test_equal_scores_come_by_document_id(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=[Change(i, doc(i, "sleep")) for i in ("z", "m", "b")], checkpoint=b"1")
    assert found(index, "sleep", top_k=2) == [("b", "b/0"), ("m", "m/0")]


def test_corpus_wide_statistics_score_a_shard_as_the_whole(tmp_path: Path) -> None:
    whole = open_index(tmp_path / "whole")
    whole.apply(changes=[Change(d.id, d) for d in CORPUS], checkpoint=b"1")
    shards = [open_index(tmp_path / f"s{i}") for i in range(2)]
    shards[0].apply(changes=[Change("a", CORPUS[0])], checkpoint=b"1")
    shards[1].apply(changes=[Change(d.id, d) for d in CORPUS[1:]], checkpoint=b"1")
    stats = CorpusStats.sum(shard.lexical_stats() for shard in shards)
    terms = whole.analyze("insulin")
    expected = [(h.root.id, h.score.value) for h in whole.search_lexical(terms=terms, stats=whole.lexical_stats(), top_k=5)]
    merged = sorted(((h.root.id, h.score.value) for shard in shards
                     for h in shard.search_lexical(terms=terms, stats=stats.for_terms(terms), top_k=5)),
                    key=lambda hit: (-hit[1], hit[0]))
    assert merged == expected


def test_the_arm_off_refuses_every_lexical_read(tmp_path: Path) -> None:
    """Empty statistics from one shard would skew a corpus-wide sum without a word."""
    from processors.exceptions import ConfigError

    index = open_index(tmp_path, lexical=False)
    for read in (lambda: index.analyze("insulin"), index.lexical_stats,
                 lambda: index.search_lexical(terms=["insulin"], stats=CorpusStats(), top_k=1)):
        with pytest.raises(ConfigError, match="no lexical arm"):
            read()


def test_units_without_terms_come_and_go_without_counts(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=[Change("s", doc("s", "the and of", "")), Change("a", CORPUS[0])], checkpoint=b"1")
    assert index.lexical_stats().units == 2 and index.stats().vectors == 4
    index.apply(changes=[Change("s", None), Change("a", doc("a", "of the"))], checkpoint=b"2")
    assert index.lexical_stats() == CorpusStats() and found(index, "insulin") == []


def test_a_failure_after_the_write_leaves_the_arm_with_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAISS training after the write is what may fail (memory): the arm has followed the write already."""
    index = open_index(tmp_path)
    index.apply(changes=[Change(d.id, d) for d in CORPUS[:2]], checkpoint=b"1")

    def fails() -> None:
        raise MemoryError("training")

    monkeypatch.setattr(index, "_refresh_approximate", fails)
    with pytest.raises(MemoryError):
        index.apply(changes=[Change("b", None), Change("c", CORPUS[2])], checkpoint=b"2")
    monkeypatch.undo()
    served = index.lexical_stats(), found(index, "memory insulin")
    index.close()
    reopened = open_index(tmp_path)
    assert served == (reopened.lexical_stats(), found(reopened, "memory insulin"))
    assert ("c", "c/0") in served[1] and not any(doc_id == "b" for doc_id, _ in served[1])  # the write applied


def _stored(path: Path, key: bytes) -> bytes | None:
    db = Rdict(str(path), options=Options(raw_mode=True))
    try:
        return db.get(key)
    finally:
        db.close()


def test_a_field_search_scores_with_that_fields_statistics(tmp_path: Path) -> None:
    mixed = open_index(tmp_path / "mixed")
    mixed.apply(changes=[Change("t1", doc("t1", "insulin and glucose", field_name="title")),
                         Change("t2", doc("t2", "sleep", field_name="title")),
                         Change("x", doc("x", "insulin insulin", "glucose liver", field_name="abstract"))],
                checkpoint=b"1")
    titles = open_index(tmp_path / "titles")
    titles.apply(changes=[Change("t1", doc("t1", "insulin and glucose", field_name="title")),
                          Change("t2", doc("t2", "sleep", field_name="title"))], checkpoint=b"1")
    assert mixed.lexical_stats(["title"]) == titles.lexical_stats()
    terms = mixed.analyze("insulin glucose")
    restricted = mixed.search_lexical(terms=terms, stats=mixed.lexical_stats(["title"]), top_k=5, fields=["title"])
    alone = titles.search_lexical(terms=terms, stats=titles.lexical_stats(), top_k=5)
    assert [(h.node.id, h.score.value) for h in restricted] == [(h.node.id, h.score.value) for h in alone]
    mixed.close()
    reopened = open_index(tmp_path / "mixed")  # fields come back with the owners on open
    assert reopened.lexical_stats(["title"]) == titles.lexical_stats()


def test_with_vectors_a_lexical_hit_carries_its_units_vector(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.apply(changes=[Change(d.id, d) for d in CORPUS], checkpoint=b"1")
    hits = index.search_lexical(terms=index.analyze("insulin"), stats=index.lexical_stats(), top_k=2, with_vectors=True)
    assert [h.node.id for h in hits] == ["b/1", "a/0"]
    for h in hits:
        assert np.array_equal(h.node.embedding, unit(zlib.crc32(h.node.id.encode())))
