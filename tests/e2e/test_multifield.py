"""Multi-field search (JEP 3) end to end through Kafka, with the shipped example flow."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.document import Document
from streams.client import Client, IndexReceipt
from streams.exceptions import SearchError
from streams.local.runtime import LocalRuntime
from streams.resources import EXAMPLE_FLOWS
from streams.wire.records import SearchReply
from tests.e2e.fixtures import FlowFactory

pytestmark = pytest.mark.kafka

FLOW = (EXAMPLE_FLOWS / "jep3.yml").read_text().replace(
    "name: jep3", "name: {name}")
BOOKS = [
    Document(id="10", tags={"title": "the story of the art",
                            "summary": "This is a book about the history of the art, and the stories of the great painters"}),
    Document(id="11", tags={"title": "hackers and painters",
                            "summary": "This book discusses hacking, start-up companies, and many other technological issues"}),
]


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(FLOW)


@pytest.fixture(scope="module")
def indexed(flow: LocalRuntime) -> Iterator[tuple[Client, IndexReceipt]]:
    with flow.client() as client:
        yield client, client.index(BOOKS)


def ids(reply: SearchReply) -> list[str]:
    assert not reply.partial, reply
    return [m.id for m in reply.docs[0].matches]


def test_title_only_search_finds_hackers_and_painters(indexed: tuple[Client, IndexReceipt]) -> None:
    client, receipt = indexed
    assert ids(client.search("painter", filter_by=["title"], top_k=1, after=receipt, timeout_s=60)) == ["11"]
    reply = client.search("painter", filter_by=["title"], after=receipt, timeout_s=60)
    assert ids(reply)[0] == "11"
    assert reply.docs[0].matches[0].chunks[0].field_name == "title"


def test_summary_only_search_ranks_the_art_book_first(indexed: tuple[Client, IndexReceipt]) -> None:
    client, receipt = indexed
    reply = client.search("painter", filter_by=["summary"], after=receipt, timeout_s=60)
    assert ids(reply)[0] == "10"
    assert all(chunk.field_name == "summary" for m in reply.docs[0].matches for chunk in m.chunks)


def test_no_filter_returns_both(indexed: tuple[Client, IndexReceipt]) -> None:
    client, receipt = indexed
    assert sorted(ids(client.search("painter", after=receipt, timeout_s=60))) == ["10", "11"]


def test_unknown_field_is_an_error_reply(indexed: tuple[Client, IndexReceipt]) -> None:
    client, _ = indexed
    with pytest.raises(SearchError) as refused:
        client.search("painter", filter_by=["author"], timeout_s=10)
    assert "author" in refused.value.errors[0] and "title, summary" in refused.value.errors[0]


def test_a_one_field_query_does_not_wait_for_the_other_fields_deadline(indexed: tuple[Client, IndexReceipt]) -> None:
    client, receipt = indexed
    # With a 20 s deadline, a reply that is complete (not partial) can only come from the joiner
    # counting title parts alone: had it waited for summary parts, it would answer partial at 20 s.
    reply = client.search("painter", filter_by=["title"], after=receipt, timeout_s=20)
    assert not reply.partial and reply.missing_shards == []


def test_the_jep3_example_file_indexes_through_the_cli(flow: LocalRuntime) -> None:
    """``streamsearch index streams/flows/jep3-books.jsonl`` (no text, only the mapped fields), as the
    README runs it; re-indexing the same two books changes nothing the other tests see."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    indexed = subprocess.run(
        [sys.executable, "-m", "streams.cli", "index", "streams/flows/jep3-books.jsonl", "--flow", flow.flow.name,
         "--wait", "--timeout", "120"],
        capture_output=True, text=True, cwd=root, timeout=180)  # KAFKA_BOOTSTRAP_SERVERS: the session broker's
    assert indexed.returncode == 0, indexed.stderr
    assert indexed.stdout.splitlines()[-1] == "2 documents searchable by index version 1", indexed.stdout
    with flow.client() as client:
        assert ids(client.search("painter", filter_by=["title"], top_k=1, timeout_s=60)) == ["11"]
