"""Score directions and index switching, end to end through Kafka."""

from typing import Any

import pytest

from processors.document import Direction
from streams.demo.corpora import stdlib_docstrings
from streams.exceptions import SearchError
from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import FlowFactory, root_flow_yaml

pytestmark = pytest.mark.kafka

QUERIES = ["parse command line arguments", "compress a file", "send an email", "random numbers", "date and time"]
CORPUS = list(stdlib_docstrings(limit=60))


@pytest.fixture(scope="module")
def similarity_flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(root_flow_yaml("inner_product", "max"))


@pytest.fixture(scope="module")
def distance_flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(root_flow_yaml("l2", "min"))


def ranked(runtime: LocalRuntime, **options: Any) -> tuple[list[list[str]], list[Direction]]:
    with runtime.client() as client:
        receipt = client.index(CORPUS)
        reply = client.search(QUERIES, top_k=10, after=receipt, timeout_s=90, **options)
    assert not reply.partial, reply.errors
    return ([[m.id for m in q.matches] for q in reply.docs],
            [m.scores["score"].direction for q in reply.docs for m in q.matches])


def test_distance_and_similarity_flows_give_the_same_document_order(
        similarity_flow: LocalRuntime, distance_flow: LocalRuntime) -> None:
    by_similarity, similarity_directions = ranked(similarity_flow)
    by_distance, distance_directions = ranked(distance_flow)
    assert set(similarity_directions) == {Direction.SIMILARITY}
    assert set(distance_directions) == {Direction.DISTANCE}
    assert by_similarity == by_distance
    assert all(len(ids) == 10 for ids in by_similarity)


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_switching_the_index_type_per_request_gives_the_exact_top_10(
        similarity_flow: LocalRuntime, index_type: str) -> None:
    exact, _ = ranked(similarity_flow)
    switched, _ = ranked(similarity_flow, index_type=index_type)
    assert switched == exact
    with similarity_flow.client() as client:
        reply = client.search(QUERIES[0], index_type=index_type, timeout_s=30)
    assert reply.docs[0].matches[0].scores["score"].op_name.startswith(f"chunk2doc.max(faiss.{index_type}")


def test_unknown_index_type_is_an_error_reply(similarity_flow: LocalRuntime) -> None:
    with similarity_flow.client() as client:
        with pytest.raises(SearchError) as refused:
            client.search("x", index_type="annoy", timeout_s=10)
    assert "annoy" in refused.value.errors[0] and "hnsw" in refused.value.errors[0]
