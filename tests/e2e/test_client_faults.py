"""What a user of the Python client and the CLI is told, on Apache Kafka: a host clock some
seconds behind loses no search, a request taken up after its deadline is answered with the
expiry, a misspelt flow and an invalid parameter raise typed errors, and a read-your-writes wait
names the documents a stage dead-lettered on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.document import Document
from streams.kafka.admin import describe_topics
from streams.client import Client
from streams.client.progress import IndexProgress
from streams.client.queries import raise_for_errors
from streams.exceptions import RequestExpiredError, SearchError, UnknownFlowError
from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import FlowFactory, sentence_flow_yaml

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]

MAX_PAYLOAD_BYTES = 16_384
"""Small, so that one document of many short sentences grows past the ``encoded`` topic's
``max.message.bytes`` (this plus 64 KiB) once each sentence carries a 384-d vector (1.5 KB)."""

FLOW = sentence_flow_yaml(shards=1) + f"max_payload_bytes: {MAX_PAYLOAD_BYTES}\n"

DOCS = [Document(id="volcano", text="Volcanic eruptions release sulfur dioxide into the air."),
        Document(id="violin", text="The violin concerto was premiered in Leipzig.")]

TOO_LARGE_ONCE_ENCODED = Document(id="many-sentences", text=" ".join(f"Fact {i} is here." for i in range(60)))
"""1 KB of text, 10 KB once segmented, both under the flow's payload limit; 60 chunks of 1.5 KB
vectors, over 80 KiB, once encoded."""

TOO_LARGE_ONCE_SEGMENTED = " ".join(f"Sentence number {i} talks about a different topic." for i in range(120))
"""6 KB of text, under the flow's payload limit, but over it once segmented (the encode stage's input)."""


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(FLOW)


@pytest.fixture(scope="module")
def client(flow: LocalRuntime) -> Iterator[Client]:
    with flow.client() as client:
        yield client


def test_a_client_whose_clock_is_behind_gets_its_answers(flow: LocalRuntime, client: Client) -> None:
    """A host clock 20 s behind the stages' (inside the documented tolerance): every search is
    answered, complete, within its 5 s timeout, as for a client whose clock agrees."""
    receipt = client.index(DOCS)
    client.search("volcanic eruptions", after=receipt, timeout_s=60)  # applied, so that every answer is complete
    with flow.client(clock=lambda: time.time() - 20) as behind:
        for text in ("volcanic eruptions", "a violin concerto"):
            reply = behind.search(text, top_k=1, timeout_s=5)
            assert not reply.partial and not reply.errors, reply
        assert [doc.matches[0].id for doc in behind.search(["volcanic eruptions", "a violin concerto"], top_k=1,
                                                          timeout_s=5).docs] == ["volcano", "violin"]


def test_a_request_taken_up_after_its_deadline_is_answered_with_the_expiry(client: Client) -> None:
    """Not skipped in silence: the encode stage answers it with RequestExpiredError, at once."""
    reply = client.search_async("volcanic eruptions", timeout_s=0.0001).result(timeout=60)
    assert reply.errors and reply.errors[0].startswith("RequestExpiredError: the encode stage took the request up "), reply
    with pytest.raises(RequestExpiredError, match="after its deadline"):
        raise_for_errors(reply)


def test_an_invalid_parameter_raises_a_typed_error_not_an_empty_reply(client: Client) -> None:
    with pytest.raises(SearchError, match="top_k") as refused:
        client.search("anything", parameters={"top_k": "ten"}, timeout_s=10)
    assert refused.value.errors and "top_k" in refused.value.errors[0]


def test_a_flow_that_does_not_exist_is_named_in_one_typed_error(flow: LocalRuntime) -> None:
    name = f"nosuch{uuid.uuid4().hex[:6]}"
    with Client(name, settings=flow.settings) as client:
        with pytest.raises(UnknownFlowError, match=f"no flow '{name}'"):
            client.index([Document(id="a", text="anything at all.")])
        with pytest.raises(UnknownFlowError, match=f"no flow '{name}'"):
            client.search("anything", timeout_s=5)
    assert describe_topics(flow.settings, [f"{name}.versions", f"{name}.ingest"]) == [], "a client creates no flow"


def test_the_wait_names_the_documents_dead_lettered_on_the_way(flow: LocalRuntime, client: Client) -> None:
    receipt = client.index([Document(id="bread", text="Bake the bread for forty minutes."), TOO_LARGE_ONCE_ENCODED])
    searchable = client.wait_searchable(receipt, timeout=120)
    assert searchable.reply is not None and not searchable.reply.partial
    [letter] = searchable.dead_letters
    assert (letter.key, letter.stage, letter.error_class) == (b"many-sentences", "encode", "PayloadTooLargeError")
    assert "over the topic's max.message.bytes" in letter.message, letter.message
    assert client.wait_searchable(client.index(DOCS), timeout=120).dead_letters == [], "only this receipt's letters"


def test_index_wait_exits_1_naming_the_dead_lettered_documents(flow: LocalRuntime, tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    lines = [{"id": "kafka", "text": "Kafka is a distributed log."},
             {"id": "too-large-once-segmented", "text": TOO_LARGE_ONCE_SEGMENTED}]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": flow.settings.bootstrap_servers, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "index", str(data), "--flow", flow.flow.name,
                             "--wait", "--timeout", "120"], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "1 documents searchable" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("streamsearch: error: 1 of 2 documents were dead-lettered on the way and are not "
                           "searchable: 'too-large-once-segmented' by encode: PayloadTooLargeError: "), last
    assert "Traceback" not in result.stderr


def test_the_progress_bar_counts_only_what_was_written_after_it_started(flow: LocalRuntime, client: Client) -> None:
    """An eval stopped half-way and run again re-sends its corpus: the bar counted the first run's records too
    (6,399 "indexed" of SciFact's 5,183)."""
    assert flow.settings is not None
    client.wait_searchable(client.index(DOCS), timeout=120)  # written before the bar
    progress = IndexProgress(flow.settings, flow.flow.topics, total=1, disable=True)
    try:
        progress.expect(client.index([Document(id="bread", text="Bake the bread for forty minutes.")]))
        assert progress.wait(120)
        assert progress.indexed == 1
    finally:
        progress.close()
