"""A flow without a model (no ``stages.encode``) on a real broker: documents carry their vectors and go
from ingest straight to the shards, the join stage fans queries out, no process loads torch, vectors
that do not fit are dead-lettered by the index stage with their reason, and a text query is refused
naming the missing encoder."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from processors.document import Document
from processors.index.huge_pages import kernel_collapses
from streams.client import Client, IndexReceipt
from streams.client.dead_letters import read_dead_letters
from streams.exceptions import SearchError
from streams.wire.codec import DOCUMENT
from streams.wire.partitioner import partition_of
from streams.wire.topics import FlowTopics
from streams.kafka.reader import fetch_high_watermarks
from streams.kafka.settings import KafkaSettings
from streams.local.runtime import LocalRuntime
from streams.ops.status import why_no_reply
from tests.e2e.fixtures import FlowFactory, stage_logs

pytestmark = pytest.mark.kafka

DIM = 16
DOCS = 200
FLOW = f"""name: "{{name}}"
stages:
  index:
    with: {{dim: {DIM}, metric: inner_product}}
    shards: 2
  join: {{}}
search:
  timeout_s: 30
"""


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(FLOW)


@pytest.fixture(scope="module")
def client(flow: LocalRuntime) -> Iterator[Client]:
    with flow.client() as c:
        yield c


@pytest.fixture(scope="module")
def indexed(client: Client) -> tuple[np.ndarray, IndexReceipt]:
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((DOCS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    receipt = client.index([Document(id=f"v{i}", embedding=v, text=f"label {i}") for i, v in enumerate(vectors)])
    return vectors, receipt


def test_a_vector_query_finds_its_document_through_the_shards_and_the_join(
        client: Client, flow: LocalRuntime, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    vectors, receipt = indexed
    picks = [0, 77, DOCS - 1]
    reply = client.search(vectors=vectors[picks], top_k=3, after=receipt, timeout_s=60)
    assert not reply.partial and not reply.errors and not reply.stale_shards, stage_logs(flow)
    for pick, query in zip(picks, reply.docs):
        exact = np.argsort(-(vectors @ vectors[pick]))[:3]
        assert [m.id for m in query.matches] == [f"v{i}" for i in exact]
        assert query.matches[0].text == f"label {pick}"


def test_documents_take_no_hop_they_do_not_need(flow: LocalRuntime, kafka_settings: KafkaSettings,
                                                indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    topics = flow.flow.topics
    assert [stage.name for stage in flow.flow.stages] == ["index", "join"]
    assert flow.flow.input_topic("index") == topics.ingest
    written = fetch_high_watermarks(kafka_settings, {topics.segmented: 2, topics.encoded: 2}, timeout=15)
    assert set(written.values()) == {0}, written  # the shards read ingest itself


def test_no_stage_process_loads_torch(flow: LocalRuntime, indexed: tuple[np.ndarray, IndexReceipt]) -> None:
    assert flow.local_flow is not None
    processes = [p.process for p in flow.local_flow.processes]
    assert len(processes) == 2 and all(p.poll() is None for p in processes)
    for process in processes:
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtorch" not in maps, f"pid {process.pid} ({process.args}) mapped torch"
    index = next(p for p in processes if "index" in p.args)
    assert "faiss" in Path(f"/proc/{index.pid}/maps").read_text()  # what is looked for would be seen


def test_the_index_stage_collapses_where_the_kernel_can_and_fixes_its_mmap_threshold_and_the_join_does_neither(
        flow: LocalRuntime) -> None:
    assert flow.local_flow is not None
    for own in ("glibc.malloc.hugetlb", "glibc.malloc.mmap_threshold"):
        assert own not in os.environ.get("GLIBC_TUNABLES", ""), f"the session's own {own} would reach the stages"
    for proc in flow.local_flow.processes:
        assert proc.process.poll() is None, stage_logs(flow)
        environ = dict(os.fsdecode(entry).split("=", 1) for entry in
                       Path(f"/proc/{proc.process.pid}/environ").read_bytes().split(b"\0") if b"=" in entry)
        assert "glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", ""), (proc.stage, environ)  # 4 KiB pages
        log = flow.local_flow.log_path(proc.stage, proc.replica).read_text()
        # the stage tries the kernel as this process does: the same kernel, the same huge page rights
        told = "collapsed into huge pages" if kernel_collapses() else "does not collapse memory into huge pages"
        assert (told in log) == (proc.stage == "index"), stage_logs(flow)
        assert ("malloc mmap threshold fixed" in log) == (proc.stage == "index"), stage_logs(flow)  # the process's own


def test_a_text_query_is_refused_naming_the_missing_encoder(client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(SearchError) as refused:
        client.search("what is kafka?", timeout_s=20)
    assert "has no encoder" in refused.value.errors[0] and "stages.encode" in refused.value.errors[0]
    assert time.monotonic() - started < 15  # answered at once, not by the deadline


def _produce_raw(kafka_settings: KafkaSettings, topics: FlowTopics, doc: Document) -> None:
    """What the client refuses to send (a NaN vector), written as another producer could."""
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
    producer.produce(topics.ingest, DOCUMENT.encode(doc), doc.id.encode(),
                     partition=partition_of(doc.id.encode(), topics.partitions))
    assert producer.flush(30) == 0


@pytest.mark.parametrize("embedding, error_class, reason", [
    pytest.param(np.ones(DIM + 1, np.float32), "DimensionMismatchError", f"shape ({DIM + 1},)", id="wrong-width"),
    pytest.param(np.full(DIM, np.nan, np.float32), "InvalidDocumentError", "NaN or infinite", id="nan"),
    pytest.param(np.eye(DIM, dtype=np.int64)[0], None, None, id="integers-are-vectors-too"),
    pytest.param(None, "BadDocumentError", "has no encoder", id="text-only"),
])
def test_a_document_whose_vector_does_not_fit_is_dead_lettered_by_the_index_stage(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings, embedding: np.ndarray | None,
        error_class: str | None, reason: str | None) -> None:
    key = f"bad-{time.monotonic_ns()}"
    doc = Document(id=key, text="no vector here", embedding=embedding)
    if embedding is not None and np.isnan(embedding).any():
        _produce_raw(kafka_settings, flow.flow.topics, doc)
        bad = IndexReceipt()
    else:
        bad = client.index([doc])
    # Every vector these tests store is a unit vector (inner product: a longer one could outscore a document's
    # own), so each search below finds its document alone at the top, at 1.0.
    later = np.random.default_rng(len(client.topics.flow) + time.monotonic_ns()).standard_normal(DIM).astype(np.float32)
    later /= np.linalg.norm(later)
    receipt = bad.merge(client.index([Document(id=f"after-{key}", embedding=later)]))
    if error_class is None:  # indexed: found by its own vector
        found = client.search(vectors=embedding[None, :].astype(np.float32), top_k=1, after=receipt, timeout_s=60)
        assert found.docs[0].matches[0].id == key
        return
    reply = client.search(vectors=later[None, :], top_k=1, after=receipt, timeout_s=60)
    assert not (reply.partial or reply.stale_shards or reply.errors), reply  # read its writes, from every shard
    assert reply.docs[0].matches[0].id == f"after-{key}", reply  # the shard went on
    deadline = time.monotonic() + 60
    while not (letters := [d for d in read_dead_letters(kafka_settings, flow.flow.topics) if d.key == key.encode()]):
        assert time.monotonic() < deadline, "no dead letter within 60 s"
    assert (letters[0].stage, letters[0].error_class) == ("index", error_class)
    assert reason in letters[0].message, letters[0].message


def test_status_expects_no_encode_stage(flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    """Nothing runs an encode stage, and nothing should: a missed deadline is blamed on the deadline."""
    assert why_no_reply(kafka_settings, flow.flow.topics, 1.0).startswith("no reply within 1s: flow")
