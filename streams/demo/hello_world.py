"""The hello-world: index Python's own docstrings and search them while they stream in."""

from __future__ import annotations

import contextlib
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from processors.document import Document
from streams.client import Client, IndexReceipt
from streams.client.http import create_app, serving
from streams.client.progress import IndexProgress, index_with_progress
from streams.demo.corpora import TITLE_TAG, stdlib_docstrings
from streams.flow.parse import load_flow
from streams.flow.spec import FlowSpec
from streams.local.brokers import BrokerKind
from streams.local.runtime import LocalRuntime
from streams.local.supervisor import stage_logs_shown
from streams.ops.bridge import StatusInspector
from streams.resources import EXAMPLE_FLOWS
from streams.wire.records import SearchReply

__all__ = ["EXAMPLE_QUERIES", "demo_session", "format_reply", "keep_serving_until_interrupted", "run_hello_world"]

EXAMPLE_QUERIES = (
    "parse command line arguments",
    "compress data with gzip",
    "read a CSV file",
    "encode binary data as base64 text",
)

DEFAULT_FLOW = EXAMPLE_FLOWS / "hello.yml"


def _partial_note(reply: SearchReply) -> str:
    notes = [f"shard {s} missing" for s in reply.missing_shards] + [f"shard {s} restoring" for s in reply.restoring_shards]
    return f"  (partial: {', '.join(notes) or 'incomplete'})" if reply.partial else ""


SNIPPET_CHARS = 120
"""How much of a root-level match's text a result line shows."""


def format_reply(query: str, reply: SearchReply, index: int = 0) -> str:
    """The top matches of one query: rank, score, document id, and under it what makes the id
    readable: the sentence that matched (chunk-level flows), else the document's title and the
    start of its text (root-level flows, whose matches carry no chunk)."""
    lines = [f'\n  "{query}"' + _partial_note(reply)]
    matches = reply.docs[index].matches if index < len(reply.docs) else []
    if not matches:
        lines.append("     (no matches yet)")
    for rank, match in enumerate(matches, start=1):
        score = match.scores["score"]
        lines.append(f"  {rank}. {score.value:.3f}  {match.id}")
        chunk = match.chunks[0] if match.chunks else None
        shown = (chunk.text[:110] if chunk is not None and chunk.text
                 else f"patch {chunk.location} of {match.uri or 'the image'}" if chunk is not None and chunk.location
                 else _title_and_snippet(match) or (match.uri or ""))
        if shown:
            lines.append(f"           ↳ {shown}")
    return "\n".join(lines)


def _title_and_snippet(match: Document) -> str:
    """The ``title`` tag (unless it is the id, or the text starts with it, as BEIR's title + text
    does) and the first ``SNIPPET_CHARS`` of the text, whitespace collapsed, cut at a word."""
    title = match.tags.get(TITLE_TAG)
    title = " ".join(title.split()) if isinstance(title, str) and title.strip() != match.id else ""
    text = " ".join((match.text or "").split())
    snippet = textwrap.shorten(text, SNIPPET_CHARS, placeholder=" …") if text else ""
    if text and snippet == "…":  # one word longer than the width: cut it
        snippet = text[:SNIPPET_CHARS - 1] + "…"
    if title and text.startswith(title):
        title = ""
    return " — ".join(part for part in (title, snippet) if part)


@contextlib.contextmanager
def demo_session(flow: FlowSpec, *, flow_path: Path, state_dir: Path | None, bridge_port: int, broker: BrokerKind,
                 print_fn: Callable[[str], None]) -> Iterator[tuple[LocalRuntime, Client, str]]:
    """A demo's set-up: a local broker and the flow's stages, a client, the HTTP bridge (its URL printed),
    every shard answering. Yields the runtime, the client and the bridge's URL."""
    with LocalRuntime(flow, flow_path=flow_path, state_dir=state_dir, broker=broker) as runtime, \
            contextlib.ExitStack() as stack:
        assert runtime.settings is not None
        started = f" ({runtime.broker_kind.label}, started here)" if runtime.broker_kind else ""
        print_fn(f"streamsearch hello-world: broker {runtime.settings.bootstrap_servers}{started}, flow {flow.name!r} "
                 f"({', '.join(s.name for s in flow.stages)}; {flow.shards} shards)")
        print_fn(f"stage logs: {stage_logs_shown(runtime.flow)}")
        client = stack.enter_context(runtime.client())
        app = create_app(client, flow=runtime.flow, inspector=StatusInspector(client.settings, runtime.flow))
        url = stack.enter_context(serving(app, port=bridge_port))
        print_fn(f"search page and HTTP API: {url}/  (OpenAPI: {url}/docs)")
        print_fn("waiting for the stages to join their groups ...")
        runtime.wait_ready(client)
        yield runtime, client, url


def keep_serving_until_interrupted(url: str, print_fn: Callable[[str], None]) -> None:
    print_fn(f"\nstill serving {url}/ -- Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def run_hello_world(*, limit: int, flow_path: Path = DEFAULT_FLOW, state_dir: Path | None = None,
                    top_k: int = 3, print_fn: Callable[[str], None] = print, bridge_port: int = 0,
                    keep_serving: bool = False, broker: BrokerKind = BrokerKind.AUTO) -> dict[str, SearchReply]:
    """Start everything (the HTTP bridge too), stream the corpus, answer the example queries
    during and after indexing; with ``keep_serving``, go on serving until Ctrl-C.

    :returns: the final reply of each example query (for tests and callers).
    """
    flow = load_flow(flow_path)
    docs = list(stdlib_docstrings(limit=limit))
    with demo_session(flow, flow_path=flow_path, state_dir=state_dir, bridge_port=bridge_port, broker=broker,
                      print_fn=print_fn) as (runtime, client, url):
        print_fn(f"streaming {len(docs)} docstrings of the Python standard library onto {flow.topics.ingest}")
        receipt = index_with_progress(client, docs, topics=runtime.flow.topics,
                                      while_indexing=lambda progress: _search_while_indexing(client, progress, top_k,
                                                                                             print_fn))
        print_fn("\nindexing done; final answers (read-your-writes: the shards have applied every document):")
        final = _ask(client, top_k, receipt, print_fn)
        if keep_serving:
            keep_serving_until_interrupted(url, print_fn)
    return final


def _search_while_indexing(client: Client, progress: IndexProgress, top_k: int, print_fn: Callable[[str], None]) -> None:
    """Ask the first example query as soon as the documents are sent, then every 20 s (up to 3
    times) while the encoder works: the first answer always comes mid-stream, however fast the
    machine, since the stages have only begun when the last record is delivered."""
    for rounds in range(3):
        if rounds and progress.wait(timeout=20):
            return
        print_fn(f"\n-- while indexing ({progress.indexed} documents encoded so far) --")
        reply = client.search(EXAMPLE_QUERIES[0], top_k=top_k)
        print_fn(format_reply(EXAMPLE_QUERIES[0], reply))


def _ask(client: Client, top_k: int, receipt: IndexReceipt, print_fn: Callable[[str], None]) -> dict[str, SearchReply]:
    reply = client.search(list(EXAMPLE_QUERIES), top_k=top_k, after=receipt, timeout_s=30)
    for i, query in enumerate(EXAMPLE_QUERIES):
        print_fn(format_reply(query, reply, i))
    return {query: reply for query in EXAMPLE_QUERIES}
