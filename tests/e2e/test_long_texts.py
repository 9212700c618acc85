"""Nothing of a long text is dropped: a word near the end of a 25-times repeated, unpunctuated
log line finds its document, end to end through Kafka with the real model."""

import pytest

from processors.document import Document
from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import FlowFactory

pytestmark = pytest.mark.kafka

FLOW = """
name: {name}
stages:
  segment:
    uses: Sentencizer
    with: {min_sent_len: 8, max_sent_len: 300}
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [c], max_length: 128}
  index:
    uses: CompoundIndexer
    with: {dim: 384, metric: inner_product}
    ranker: {uses: Chunk2DocRanker, with: {aggregation: max, keep_chunks: 1}}
    shards: 2
  join: {}
"""
LOG_LINE = "2026-11-30 10:51:06 INFO worker-{n} processed batch 1234 from queue ingest in 12 ms"


def log(n: int, word: str | None = None) -> Document:
    """25 copies of one log line, no punctuation that ends a sentence; ``word`` in the 24th."""
    lines = [LOG_LINE.format(n=n)] * 25
    if word:
        lines[23] = lines[23].replace("queue ingest", f"queue {word}")
    return Document(id=f"log-{n}", text=" ".join(lines))


DOCS = [log(1, "whale")] + [log(n) for n in range(2, 6)] + [
    Document(id="kafka", text="Kafka is a distributed log. Consumers read partitions in order."),
    Document(id="bread", text="Knead the dough for ten minutes. Let it rise for an hour."),
    Document(id="cjk", text="东京是日本的首都。北京是中国的首都。"),
]


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(FLOW)


def test_a_word_near_the_end_of_a_long_unpunctuated_span_finds_its_document(flow: LocalRuntime) -> None:
    assert len(DOCS[0].text or "") > 2000 and (DOCS[0].text or "").index("whale") > 1800
    with flow.client() as client:
        receipt = client.index(DOCS)
        reply = client.search("whale", top_k=1, after=receipt, timeout_s=60)
    assert not reply.partial and not reply.errors
    [match] = reply.docs[0].matches
    assert match.id == "log-1" and "whale" in (match.chunks[0].text or "")


def test_each_chinese_sentence_is_a_chunk_of_its_own(flow: LocalRuntime) -> None:
    with flow.client() as client:
        receipt = client.index(DOCS)
        reply = client.search("北京是中国的首都。", top_k=1, after=receipt, timeout_s=60)
    [match] = reply.docs[0].matches
    assert match.id == "cjk" and match.chunks[0].text == "北京是中国的首都。"
