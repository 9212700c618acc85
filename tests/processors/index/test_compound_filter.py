"""Filtered search in a shard: the field indexes restrict both arms before they search (a pre-filter),
follow upserts and deletes in the same write, come back on open, and follow a changed declaration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rocksdict import Options, Rdict

from processors.document import Document
from processors.exceptions import InvalidParameterError
from processors.index.base import Change
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from processors.index.store_layout import FORMAT
from processors.query.filter import parse_filter
from streams.wire.codec import STORED_DOCUMENT

DIM = 16
N = 3000
SCHEMA = {"bucket": "number", "parity": "keyword"}


def parse(raw: Any) -> Any:
    return parse_filter(raw, max_conditions=32, max_in_items=1000, max_depth=16)


def corpus(seed: int = 0) -> tuple[list[Document], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [Document(id=f"d{i:05d}", text=f"word{i % 7} common", embedding=vectors[i],
                     tags={"bucket": i % 1000, "parity": "even" if i % 2 == 0 else "odd"}) for i in range(N)]
    return docs, vectors


def open_index(path: Path, **config: Any) -> CompoundIndexer:
    index = CompoundIndexer(CompoundIndexerConfig(dim=DIM, **{"filterable": SCHEMA, **config}), path=path,
                            codec=STORED_DOCUMENT)  # type: ignore[arg-type]
    index.warm_up()
    return index


def exact(vectors: np.ndarray, allowed: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    scores = vectors[allowed] @ query
    order = np.lexsort((allowed, -scores))[:k]  # ties by id, which is document id order here
    return [f"d{i:05d}" for i in allowed[order]]


# bucket < 500: 50 % allowed; < 100: 10 %; < 10: 1 %; == 3: 0.1 %
SELECTIVE = [({"bucket": {"$lt": 500}}, lambda i: i % 1000 < 500),
             ({"bucket": {"$lt": 100}}, lambda i: i % 1000 < 100),
             ({"bucket": {"$lt": 10}, "parity": {"$in": ["even", "odd"]}}, lambda i: i % 1000 < 10),
             ({"bucket": 3}, lambda i: i % 1000 == 3)]


@pytest.mark.parametrize("index_type, exact_filter_limit, wanted_recall", [
    ("flat", 5000, 1.0),   # the flat index with a selector: exact
    ("flat", 0, 1.0),
    ("hnsw", 0, 0.97),     # the graph walked with a selector, however few vectors it allows (share 0 below)
    ("hnsw", 5000, 1.0),   # at most 5000 allowed: scanned exactly instead
])
def test_a_filter_restricts_the_search_to_the_documents_it_accepts(tmp_path: Path, index_type: str,
                                                                     exact_filter_limit: int,
                                                                     wanted_recall: float) -> None:
    docs, vectors = corpus()
    index = open_index(tmp_path, index_type=index_type, exact_filter_limit=exact_filter_limit, hnsw_m=16,
                       exact_filter_share=0.0)
    index.apply(changes=[Change(d.id, d) for d in docs], checkpoint=b"1")
    queries = np.random.default_rng(7).normal(size=(20, DIM)).astype(np.float32)
    for raw, accept in SELECTIVE:
        allowed = np.array([i for i in range(N) if accept(i)])
        found = [0, 0]
        for query in queries:
            hits = index.search(embeddings=query[None, :], top_k=10, filter=parse(raw))[0]
            assert all(accept(int(hit.root.id[1:])) for hit in hits)  # never a document the filter refuses
            truth = exact(vectors, allowed, query, 10)
            assert len(hits) == len(truth)  # a selective filter never empties a result that exists
            found[0] += len({hit.root.id for hit in hits} & set(truth))
            found[1] += len(truth)
            if wanted_recall == 1.0:
                assert [hit.root.id for hit in hits] == truth
        assert found[0] / found[1] >= wanted_recall, (raw, found)
    index.close()


def test_values_follow_upserts_and_deletes_and_come_back_on_open(tmp_path: Path) -> None:
    docs, _ = corpus()
    index = open_index(tmp_path)
    index.apply(changes=[Change(d.id, d) for d in docs[:20]], checkpoint=b"1")
    query = docs[3].embedding[None, :]  # type: ignore[index]

    def ids(raw: Any, top_k: int = 50) -> list[str]:
        return sorted(hit.root.id for hit in index.search(embeddings=query, top_k=top_k, filter=parse(raw))[0])

    assert ids({"bucket": 3}) == ["d00003"]
    moved = Document(id="d00003", text="x", embedding=docs[3].embedding, tags={"bucket": 7, "parity": "odd"})
    index.apply(changes=[Change("d00003", moved), Change("d00005", None)], checkpoint=b"2")
    assert ids({"bucket": 3}) == [] and ids({"bucket": 7}) == ["d00003", "d00007"]
    assert ids({"bucket": 5}) == []  # deleted
    index.close()
    index = open_index(tmp_path)
    assert ids({"bucket": 7}) == ["d00003", "d00007"] and ids({"bucket": 5}) == []
    assert ids({"parity": "even"}) == [f"d{i:05d}" for i in range(0, 20, 2) if i != 5]
    index.close()


def test_a_tag_that_does_not_fit_its_type_is_not_filterable_and_the_document_stays_searchable(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    vector = np.ones(DIM, np.float32) / np.sqrt(DIM)
    index.apply(changes=[Change("a", Document(id="a", embedding=vector, tags={"bucket": "many"})),
                         Change("n", Document(id="n", embedding=vector, tags={"bucket": float("nan")})),
                         Change("b", Document(id="b", embedding=vector, tags={"bucket": 2}))], checkpoint=b"1")
    found = {hit.root.id for hit in index.search(embeddings=vector[None, :], top_k=5)[0]}
    assert found == {"a", "b", "n"}
    exists = index.search(embeddings=vector[None, :], top_k=5, filter=parse({"bucket": {"$exists": True}}))[0]
    assert [hit.root.id for hit in exists] == ["b"]
    index.close()


def test_a_changed_declaration_is_applied_to_the_stored_documents_on_open(tmp_path: Path) -> None:
    docs, _ = corpus()
    index = open_index(tmp_path, filterable={})
    index.apply(changes=[Change(d.id, d) for d in docs[:10]], checkpoint=b"1")
    query = docs[0].embedding[None, :]  # type: ignore[index]
    with pytest.raises(InvalidParameterError, match="declare them"):
        index.search(embeddings=query, top_k=5, filter=parse({"bucket": 1}))
    index.close()
    index = open_index(tmp_path)  # now declared: extracted from the stored documents
    assert [h.root.id for h in index.search(embeddings=query, top_k=5, filter=parse({"bucket": 4}))[0]] == ["d00004"]
    index.close()
    db = Rdict(str(tmp_path), options=Options(raw_mode=True))
    try:
        assert db[b"m/format"] == str(FORMAT).encode() and db[b"s/d00004"] == b'{"bucket":[4.0],"parity":["even"]}'
    finally:
        db.close()
    index = open_index(tmp_path, filterable={"parity": "keyword"})  # narrowed: only parity kept
    assert len(index.search(embeddings=query, top_k=10, filter=parse({"parity": "odd"}))[0]) == 5
    with pytest.raises(InvalidParameterError, match="'bucket' is not a filterable field"):
        index.search(embeddings=query, top_k=5, filter=parse({"bucket": 1}))
    index.close()


def test_the_lexical_arm_is_filtered_too_and_scores_as_unfiltered(tmp_path: Path) -> None:
    docs, _ = corpus()
    index = open_index(tmp_path, lexical=True)
    index.apply(changes=[Change(d.id, d) for d in docs[:100]], checkpoint=b"1")
    terms, stats = index.analyze("word3"), index.lexical_stats()
    unfiltered = {h.root.id: h.score.value for h in index.search_lexical(terms=terms, stats=stats, top_k=100)}
    hits = index.search_lexical(terms=terms, stats=stats, top_k=100, filter=parse({"parity": "odd"}))
    assert [h.root.id for h in hits] == sorted(i for i in unfiltered if int(i[1:]) % 2)
    assert all(h.score.value == unfiltered[h.root.id] for h in hits)
    index.close()


def test_the_path_follows_the_count_and_the_share_the_filter_allows(tmp_path: Path) -> None:
    docs, _ = corpus()
    index = open_index(tmp_path, index_type="hnsw", hnsw_m=16, exact_filter_limit=100, exact_filter_share=0.05)
    index.apply(changes=[Change(d.id, d) for d in docs], checkpoint=b"1")
    query = docs[0].embedding[None, :]  # type: ignore[index]

    def answered_by(raw: Any) -> str:
        return index.search(embeddings=query, top_k=3, filter=parse(raw))[0][0].score.op_name

    assert answered_by({"bucket": {"$lt": 3}}) == "faiss.flat_ip"     # 9 allowed: under the count
    assert answered_by({"bucket": {"$lt": 40}}) == "faiss.flat_ip"    # 120 allowed, 4 %: under the share
    assert answered_by({"bucket": {"$lt": 100}}) == "faiss.hnsw_ip"   # 300 allowed, 10 %: the walk
    assert index.search(embeddings=query, top_k=3)[0][0].score.op_name == "faiss.hnsw_ip"
    index.close()


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_a_filter_against_the_neighbourhood_still_fills_every_row(tmp_path: Path, index_type: str) -> None:
    """Queries on one side, the filter keeping the other: a graph walk (or the lists scanned) may end before
    top_k allowed vectors are met; the search then scans the allowed ones exactly (found by an attack)."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(6000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [Document(id=f"d{i:05d}", embedding=vectors[i], tags={"bucket": float(vectors[i, 0])}) for i in range(6000)]
    index = open_index(tmp_path, index_type=index_type, hnsw_m=8, hnsw_ef_search=16, ivf_nprobe=1,
                       exact_filter_limit=0, exact_filter_share=0.0)
    index.apply(changes=[Change(d.id, d) for d in docs], checkpoint=b"1")
    queries = rng.normal(size=(40, DIM)).astype(np.float32)
    queries[:, 0] = np.abs(queries[:, 0]) + 2.0  # far on the side the filter leaves out
    allowed = np.flatnonzero(vectors[:, 0] < -0.6)
    for query in queries:
        hits = index.search(embeddings=query[None, :], top_k=10, filter=parse({"bucket": {"$lt": -0.6}}))[0]
        assert len(hits) == 10 and all(float(h.root.tags["bucket"]) < -0.6 for h in hits)  # type: ignore[arg-type]
    assert len(allowed) > 10
    index.close()
