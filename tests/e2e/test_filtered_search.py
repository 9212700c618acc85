"""Filtered search through a real flow (issue 19, part 3): the fan-out checks a ``filter`` against the
index's declared fields, each shard answers it from its field indexes before searching (a pre-filter),
so at every selectivity the reply is the exact filtered top-k over both shards, for the dense and the
lexical arm alike; tags changed by an upsert are filtered by their new values; the HTTP bridge answers a
bad filter with 400 naming it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from processors.document import Document
from streams.client import Client, IndexReceipt
from streams.client.http import create_app
from streams.exceptions import SearchError
from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import FlowFactory, call, stage_logs

pytestmark = pytest.mark.kafka

DIM = 16
DOCS = 2000
FLOW = f"""name: "{{name}}"
stages:
  index:
    with:
      dim: {DIM}
      metric: inner_product
      lexical: true
      filterable: {{bucket: number, parity: keyword, published: date}}
    shards: 2
  join: {{}}
search:
  timeout_s: 30
"""

SELECTIVITIES = {  # share of the documents each filter leaves out
    0.5: ({"bucket": {"$lt": 500}}, lambda i: i % 1000 < 500),
    0.9: ({"bucket": {"$gte": 900}}, lambda i: i % 1000 >= 900),
    0.99: ({"$and": [{"bucket": {"$lt": 20}}, {"parity": "even"}]}, lambda i: i % 1000 < 20 and i % 2 == 0),
    0.999: ({"bucket": {"$in": [7, 7000]}, "published": {"$gte": "2020-01-01"}}, lambda i: i % 1000 == 7),
}


def tags_of(i: int) -> dict[str, Any]:
    return {"bucket": i % 1000, "parity": "even" if i % 2 == 0 else "odd",
            "published": f"{2020 + i % 5}-03-0{1 + i % 9}T12:00:00Z"}


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(FLOW)


@pytest.fixture(scope="module")
def client(flow: LocalRuntime) -> Iterator[Client]:
    with flow.client() as c:
        yield c


@pytest.fixture(scope="module")
def indexed(client: Client) -> tuple[np.ndarray, IndexReceipt]:
    rng = np.random.default_rng(19)
    vectors = rng.standard_normal((DOCS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [Document(id=f"d{i:04d}", embedding=vectors[i], text=f"common term{i % 3}", tags=tags_of(i))
            for i in range(DOCS)]
    return vectors, client.index(docs)


def exact_top(vectors: np.ndarray, query: np.ndarray, accept: Any, k: int) -> list[str]:
    allowed = np.array([i for i in range(DOCS) if accept(i)])
    scores = vectors[allowed] @ query
    return [f"d{i:04d}" for i in allowed[np.lexsort((allowed, -scores))[:k]]]


@pytest.mark.parametrize("selectivity", sorted(SELECTIVITIES))
def test_every_selectivity_gives_the_exact_filtered_top_k_over_both_shards(
        client: Client, flow: LocalRuntime, indexed: tuple[np.ndarray, IndexReceipt], selectivity: float) -> None:
    vectors, receipt = indexed
    raw, accept = SELECTIVITIES[selectivity]
    queries = np.random.default_rng(int(selectivity * 1000)).standard_normal((4, DIM)).astype(np.float32)
    reply = client.search(vectors=queries, top_k=10, after=receipt, filter=raw, timeout_s=60)
    assert not reply.partial and not reply.errors, stage_logs(flow)
    for query, doc in zip(queries, reply.docs):
        got = [match.id for match in doc.matches]
        assert got == exact_top(vectors, query, accept, 10)  # full: a selective filter never empties it


def test_the_lexical_arm_is_filtered_on_the_shards_too(client: Client, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    _, receipt = indexed
    raw, accept = SELECTIVITIES[0.99]
    reply = client.search("term1", retrieval="lexical", top_k=50, after=receipt, filter=raw, timeout_s=60)
    expected = sorted(f"d{i:04d}" for i in range(DOCS) if accept(i) and i % 3 == 1)
    assert expected and sorted(match.id for match in reply.docs[0].matches) == expected


def test_an_upsert_is_filtered_by_its_new_tags(client: Client, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    vectors, receipt = indexed
    client.search(vectors=vectors[:1], top_k=1, after=receipt, timeout_s=60)
    moved = Document(id="d0003", embedding=vectors[3], text="moved", tags={"bucket": 4242, "parity": "odd"})
    receipt = client.index([moved])
    reply = client.search(vectors=vectors[3:4], top_k=5, after=receipt, filter={"bucket": 4242}, timeout_s=60)
    assert [match.id for match in reply.docs[0].matches] == ["d0003"]
    reply = client.search(vectors=vectors[3:4], top_k=5, after=receipt, filter={"bucket": 3}, timeout_s=60)
    assert [match.id for match in reply.docs[0].matches] == ["d1003"]  # d0003 left bucket 3


def test_a_filter_the_flow_cannot_answer_is_refused_by_the_fan_out_naming_it(
        client: Client, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    vectors, _ = indexed
    with pytest.raises(SearchError, match="'author' is not a filterable field; filterable: bucket \\(number\\)"):
        client.search(vectors=vectors[:1], filter={"author": "x"}, timeout_s=30)
    with pytest.raises(SearchError, match="\\$gt does not apply to 'parity', a keyword field"):
        client.search(vectors=vectors[:1], filter={"parity": {"$gt": "a"}}, timeout_s=30)
    with pytest.raises(ValueError, match="unknown operator '\\$regex'"):  # malformed: refused before sending
        client.search(vectors=vectors[:1], filter={"parity": {"$regex": "a"}}, timeout_s=30)


def test_the_http_bridge_answers_a_bad_filter_with_400_and_a_good_one_with_matches(
        client: Client, flow: LocalRuntime, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    app = create_app(client, token="", flow=flow.flow)
    assert call(app, "GET", "/status").json()["filterable"] == {"bucket": "number", "parity": "keyword",
                                                                 "published": "date"}
    ok = call(app, "POST", "/search", json={"texts": "term2", "retrieval": "lexical", "top_k": 3,
                                            "filter": {"bucket": {"$lt": 10}}})
    assert ok.status_code == 200, ok.text
    assert ok.json()["results"][0]["matches"] and all(
        int(m["id"][1:]) % 1000 < 10 for m in ok.json()["results"][0]["matches"])
    for body, status, message in (({"bucket": {"$lt": "ten"}}, 400, "'bucket' is a number field"),  # the flow's
                                  ({"$where": "1"}, 422, "unknown operator '\\$where'"),  # malformed: not sent
                                  ({"author": 1}, 400, "is not a filterable field")):
        refused = call(app, "POST", "/search", json={"texts": "term2", "retrieval": "lexical", "filter": body})
        assert refused.status_code == status, refused.text
        assert re.search(message, refused.text), refused.text
