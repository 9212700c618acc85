"""Pre-embedded documents and vector queries through a real flow (no segmenter, encoder at root):
a vector query finds the document whose stored vector it is, a given vector is indexed byte for
byte, text documents beside them are still encoded, and vectors that do not fit the model are
answered with an error reply (query) or dead-lettered with their reason (document)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from processors.document import Document
from streams.client import Client, IndexReceipt
from streams.client.dead_letters import read_dead_letters
from streams.exceptions import SearchError
from streams.kafka.settings import KafkaSettings
from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import FlowFactory, stage_logs
from tests.e2e.fixtures import root_flow_yaml
from tests.e2e.recovery import read_shards

pytestmark = pytest.mark.kafka

FLOW = root_flow_yaml() + """search:
  top_k: 5
  timeout_s: 30
"""

DOCS = 300
TEXT_DOC = Document(id="text-kafka", text="Kafka is a distributed, partitioned, replicated commit log.")


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(FLOW)


@pytest.fixture(scope="module")
def client(flow: LocalRuntime) -> Iterator[Client]:
    with flow.client() as c:
        yield c


@pytest.fixture(scope="module")
def indexed(client: Client) -> tuple[np.ndarray, IndexReceipt]:
    """DOCS random unit vectors as root documents (half with a text label the encoder must not
    embed), and one text document the encoder must embed."""
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((DOCS, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs = [Document(id=f"v{i}", embedding=vector, text=f"label {i}" if i % 2 else None)
            for i, vector in enumerate(vectors)]
    receipt = client.index([*docs, TEXT_DOC])
    return vectors, receipt


def test_a_vector_query_finds_the_document_whose_vector_it_is(
        client: Client, flow: LocalRuntime, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    vectors, receipt = indexed
    picks = [0, 3, 150, DOCS - 1]
    reply = client.search(vectors=vectors[picks], top_k=3, after=receipt, timeout_s=60)
    assert not reply.partial and not reply.errors and not reply.stale_shards, stage_logs(flow)
    assert [q.id for q in reply.docs] == ["q0", "q1", "q2", "q3"]
    for pick, query in zip(picks, reply.docs):
        top = query.matches[0]
        assert top.id == f"v{pick}"
        assert top.scores["score"].value == pytest.approx(1.0, abs=1e-5)
        assert "flat_ip" in top.scores["score"].op_name
        exact = np.argsort(-(vectors @ vectors[pick]))[:3]
        assert [m.id for m in query.matches] == [f"v{i}" for i in exact]
    # A list of lists works the same way.
    listed = client.search(vectors=[vectors[42].tolist()], top_k=1, after=receipt, timeout_s=60)
    assert listed.docs[0].matches[0].id == "v42"


def test_a_text_document_beside_them_is_still_encoded(client: Client, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    _, receipt = indexed
    reply = client.search("what is kafka? a replicated log", top_k=1, after=receipt, timeout_s=60)
    assert reply.docs[0].matches[0].id == TEXT_DOC.id
    assert reply.docs[0].matches[0].scores["score"].value > 0.4  # a real MiniLM embedding, not noise


def test_a_query_vector_of_the_wrong_width_gets_an_error_reply(client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(SearchError) as refused:
        client.search(vectors=np.ones((1, 100), np.float32), timeout_s=20)
    assert refused.value.reply.partial and "384-d" in refused.value.errors[0], refused.value.reply
    assert time.monotonic() - started < 15  # answered at once, not by the deadline


def test_a_document_vector_of_the_wrong_width_is_dead_lettered_with_its_reason(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    bad = client.index([Document(id="too-wide", embedding=np.ones(768, np.float32))])
    later = np.zeros(384, np.float32)
    later[5] = 1.0
    receipt = bad.merge(client.index([Document(id="after-too-wide", embedding=later)]))
    reply = client.search(vectors=later[None, :], top_k=1, after=receipt, timeout_s=60)
    assert reply.docs[0].matches[0].id == "after-too-wide"  # the stage went on
    deadline = time.monotonic() + 60
    while not (letters := [d for d in read_dead_letters(kafka_settings, flow.flow.topics) if d.key == b"too-wide"]):
        assert time.monotonic() < deadline, "no dead letter within 60 s"
    letter = letters[0]
    assert (letter.stage, letter.error_class) == ("encode", "DimensionMismatchError")
    assert "document 'too-wide': embedding has shape (768,)" in letter.message and "384-d" in letter.message


def _at(score: float, axis: int) -> np.ndarray:
    """A 384-d unit vector whose inner product with the first axis is ``score``, the rest along ``axis``."""
    vector = np.zeros(384, dtype=np.float32)
    vector[0], vector[axis] = score, np.sqrt(1 - score**2)
    return vector


def test_grouping_and_diversity_through_the_client(client: Client, flow: LocalRuntime) -> None:
    """Tagged documents near the first axis, among whatever else the flow holds: grouped by journal, the best
    paper of each; diversified, a near-duplicate gives way to a different paper; no vector reaches the client."""
    near_b = _at(0.93, 1) + 0.02 * _at(0.0, 2)
    papers = [("n-1", _at(0.95, 1), "nature"), ("n-2", near_b / np.linalg.norm(near_b), "nature"),
              ("s-1", _at(0.80, 3), "science"), ("c-1", _at(0.10, 4), "cell")]
    receipt = client.index([Document(id=doc_id, embedding=vector, tags={"journal": journal, "set": "grouped"})
                            for doc_id, vector, journal in papers])
    query = _at(1.0, 1)[None, :]
    only = {"query_language": [{"operator": "filter", "stage": "index", "traversal_paths": ["m"],
                                "parameters": {"conditions": {"tags.set": "grouped"}}}]}
    grouped = client.search(vectors=query, top_k=3, after=receipt, timeout_s=60,
                            parameters={"group_by": "journal", **only})
    assert not grouped.partial and not grouped.errors, stage_logs(flow)
    assert [(m.id, m.tags["journal"], m.scores["group.rank"].value) for m in grouped.docs[0].matches] == [
        ("n-1", "nature", 1.0), ("s-1", "science", 2.0), ("c-1", "cell", 3.0)]
    plain = client.search(vectors=query, top_k=2, after=receipt, timeout_s=60, parameters=only)
    assert [m.id for m in plain.docs[0].matches] == ["n-1", "n-2"]
    diverse = client.search(vectors=query, top_k=2, after=receipt, timeout_s=60, parameters={"diversity": 0.5, **only})
    assert [m.id for m in diverse.docs[0].matches] == ["n-1", "s-1"], stage_logs(flow)
    assert all(m.embedding is None for m in diverse.docs[0].matches)


def test_pre_embedded_documents_are_indexed_with_exactly_the_given_bytes(
        client: Client, flow: LocalRuntime, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    """Last in the module: it stops the flow to open its shards."""
    vectors, receipt = indexed
    reply = client.search(vectors=vectors[:1], top_k=1, after=receipt, timeout_s=60)
    assert not reply.stale_shards
    assert flow.local_flow is not None
    flow.local_flow.stop()
    spec = flow.flow
    contents = read_shards(spec.state_dir, spec.name, spec.topics.partitions, spec.stage("index").config)
    for i, vector in enumerate(vectors):
        assert contents.vector_table[(f"v{i}", "", "")] == vector.tobytes(), f"v{i}"
    assert contents.per_doc[TEXT_DOC.id] == 1
    assert set(contents.shards_of[f"v{i}"][0] for i in range(DOCS)) == {0, 1}  # both shards hold some
    assert contents.docs["v1"].text == "label 1" and contents.docs["v0"].text is None
