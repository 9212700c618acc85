"""Factory fixtures for integration tests: real flows on the session broker."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from processors.document import Document
from processors.segmenters.sentence import Sentencizer, SentencizerConfig
from streams.demo.corpora import stdlib_docstrings
from streams.flow.parse import load_flow
from streams.local.brokers import LocalBroker
from streams.local.runtime import LocalRuntime
from streams.local.supervisor import stage_log_files

FlowFactory = Callable[[str], LocalRuntime]


@pytest.fixture(scope="module")
def start_flow(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowFactory]:
    """Start a flow from YAML text (``{name}`` is replaced by a unique flow name) and wait
    until every stage answers; all flows started are stopped at the end of the module."""
    runtimes: list[LocalRuntime] = []

    def start(yaml_text: str) -> LocalRuntime:
        name = f"t{uuid.uuid4().hex[:8]}"
        folder = tmp_path_factory.mktemp(name)
        path = folder / "flow.yml"
        path.write_text(yaml_text.replace("{name}", name))
        runtime = LocalRuntime(load_flow(path), flow_path=path, state_dir=folder / "state").start()
        runtimes.append(runtime)
        client = runtime.client()
        try:
            runtime.wait_ready(client, timeout=180)
        finally:
            client.close()
        return runtime

    yield start
    for runtime in runtimes:
        runtime.stop()


RAW_LIBRDKAFKA_LINE = re.compile(r"%\d\|")
"""How librdkafka writes a line to stderr when no logger takes it: ``%4|<time>|GETPID|...``."""


def stage_logs(runtime: LocalRuntime) -> str:
    """Every stage log of a runtime's flow version, for assertion messages."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in stage_log_files(runtime.flow))


SEGMENTER = Sentencizer(SentencizerConfig(min_sent_len=3, punctuation=".,!?"))
"""The segmenter of ``SENTENCE_FLOW``: what decides which chunks the shards hold."""


def corpus_with_unique_sentences(count: int) -> list[tuple[Document, str]]:
    """Real docstrings that share no chunk under ``SENTENCE_FLOW``'s segmenter, each with its
    longest chunk (over 40 characters) as the query that must find it first.

    Two chosen documents holding the same chunk would tie on it, and either could come first
    (two docstrings share "Written by Marc-Andre Lemburg (mal@lemburg.com).").
    """
    chosen: list[tuple[Document, str]] = []
    seen: set[str] = set()
    for doc in stdlib_docstrings():
        doc = Document(id=f"std/{doc.id}", text=doc.text)
        chunks = [chunk.text or "" for chunk in SEGMENTER.run(docs=[doc]).docs[0].chunks]
        keys = {_chunk_key(text) for text in chunks}
        query = max(chunks, key=len, default="")
        if len(query) <= 40 or keys & seen:
            continue
        seen |= keys
        chosen.append((doc, query))
        if len(chosen) == count:
            return chosen
    raise AssertionError("not enough docstrings")


def _chunk_key(text: str) -> str:
    """Whitespace, case and end punctuation aside, chunks that embed alike compare equal."""
    return " ".join(text.split()).rstrip(".,!?").casefold()


SENTENCE_FLOW = """
name: {name}
stages:
  segment:
    uses: Sentencizer
    with: {min_sent_len: 3, punctuation: ".,!?"}
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [c], max_length: 128}
  index:
    uses: CompoundIndexer
    with: {dim: 384, metric: inner_product}
    shards: SHARDS
  join: {}
search:
  top_k: 3
"""


def sentence_flow_yaml(shards: int = 2, guarantee: str = "at_least_once") -> str:
    """A flow of sentence chunks, MiniLM, ``shards`` shards (``{name}`` still to fill in)."""
    return SENTENCE_FLOW.replace("SHARDS", str(shards)) + f"processing_guarantee: {guarantee}\n"


ROOT_FLOW = """
name: {name}
stages:
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [r], max_length: 128}
  index:
    uses: CompoundIndexer
    with: {dim: 384, metric: METRIC}
    ranker: {uses: Chunk2DocRanker, with: {aggregation: AGGREGATION, keep_chunks: 0}}
    shards: 2
  join: {}
"""


def root_flow_yaml(metric: str = "inner_product", aggregation: str = "max") -> str:
    """A flow of one vector per document (no segmenter), 2 shards (``{name}`` still to fill in)."""
    return ROOT_FLOW.replace("METRIC", metric).replace("AGGREGATION", aggregation)


def later_ms(seconds: float = 120.0) -> int:
    """A deadline ``seconds`` from now, in epoch ms: well inside ``max_deadline_s``, computed when the
    record is built (one built at collection would have expired in a long suite)."""
    return int((time.time() + seconds) * 1000)
