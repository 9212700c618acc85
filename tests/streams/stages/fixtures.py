"""What tests of several stages share."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from processors.document import Document
from processors.encoders.base import EncodeResult
from processors.index.base import FlatScan
from processors.index.config import CompoundIndexerConfig
from processors.index.lexical import Analyzer
from processors.query.parameters import SearchParameters
from processors.rankers.chunk2doc import Chunk2DocRanker
from streams.runtime.spec import Inbound, Output
from streams.stages.fanout import QueryFanout
from streams.stages.join import Joiner
from streams.stages.lexical_table import LexicalTable
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.search import ShardSearch
from streams.stages.shard.states import ShardStates
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT, REQUEST, SEARCH_REPLY
from streams.wire.partitioner import partition_of
from streams.wire.records import Request, SearchReply
from streams.wire.topics import FlowTopics


class FixedEncoder:
    """An encoder without a model: every text gets the same 4-d vector (for tests of what the stage does
    around encoding, not of the encoding)."""

    dim = output_dim = 4

    def warm_up(self) -> None: ...

    def run(self, *, docs: Sequence[Document], traversal_paths: Sequence[str] | None = None,
            filter_by: Sequence[str] | None = None) -> EncodeResult:
        return EncodeResult(docs=tuple(Document(id=d.id, text=d.text, embedding=np.ones(4, np.float32)) for d in docs))


DIM = 8
ANALYZER = Analyzer()


def vector(doc_id: str) -> np.ndarray:
    row = np.random.default_rng(int(doc_id[1:])).standard_normal(DIM).astype(np.float32)
    return row / np.linalg.norm(row)


def inbound(output: Output, offset: int = 0) -> Inbound:
    assert output.partition is not None or output.topic.endswith("partials")
    return Inbound(output.topic, output.partition or 0, offset, output.key if isinstance(output.key, bytes | None)
                   else output.key.encode(), output.value, dict(output.headers))


class Pipeline:
    """One flow's query path, stage by stage, with ``partitions`` shards in one process."""

    def __init__(self, root: Path, partitions: int, *, lexical: bool = True, flat_scan: FlatScan = "float32",
                 flow: str | None = None) -> None:
        self.topics = FlowTopics(flow or f"lexq{partitions}", partitions)
        self.states = ShardStates(root=root, flow=self.topics.flow,
                                  config=CompoundIndexerConfig(dim=DIM, lexical=lexical, flat_scan=flat_scan))
        self.ingest = ShardIngest(states=self.states, topics=self.topics, source=self.topics.ingest, given_dim=DIM)
        self.ingest.assigned(list(range(partitions)))
        for partition in range(partitions):
            self.ingest.end_reached(partition)  # restored: the shards answer
        self.table = LexicalTable(ANALYZER.name)
        self.fanout = QueryFanout(encoder=None, dim=DIM, topics=self.topics, defaults=SearchParameters(),
                                  stage="join", lexical=(ANALYZER, self.table) if lexical else None)
        self.search = ShardSearch(states=self.states, ranker=Chunk2DocRanker(), topics=self.topics)
        self.joiner = Joiner(topics=self.topics)

    def index(self, docs: Mapping[str, str], offset: int = 0) -> None:
        """Index texts, each with its id's :func:`vector`."""
        self.index_documents([Document(id=doc_id, text=text, embedding=vector(doc_id))
                              for doc_id, text in sorted(docs.items())], offset)

    def index_documents(self, docs: Sequence[Document], offset: int = 0) -> None:
        """Index documents as they are (tags, chunks, vectors of their own), from ingest offset ``offset`` on."""
        records = []
        for i, doc in enumerate(docs):
            doc_id = doc.id
            value, headers = DOCUMENT.encode_record(doc)
            records.append(Inbound(self.topics.ingest, partition_of(doc_id.encode(), self.topics.partitions),
                                   offset + i, doc_id.encode(), value, dict(headers)))
        outputs = self.ingest.process(records) + self.ingest.tick()
        self.table.apply(inbound(o) for o in outputs if o.topic == self.topics.lexical_stats)

    def ask(self, text: str, *, embedding: np.ndarray | None = None, **parameters: object) -> SearchReply:
        """One search through fan-out, shards and joiner; the query's vector is ``embedding`` (default: q99's)."""
        reply_to = f"{self.topics.flow}.reply.t"
        query = Document(id="q0", text=text, embedding=vector("q99") if embedding is None else embedding)
        request = Request("r", "search", [query], reply_to,
                          int(time.time() * 1000) + 60_000, dict(parameters), {})
        record = Inbound(self.topics.query, 0, 0, b"r", REQUEST.encode(request), {
            h.REQUEST_ID: b"r", h.REPLY_TO: reply_to.encode(), h.DEADLINE_MS: str(request.deadline_ms).encode()})
        fanned = self.fanout.process([record])
        searches = [inbound(o) for o in fanned if o.topic == self.topics.search]
        parts = [inbound(o) for o in fanned if o.topic == self.topics.partials]
        parts += [inbound(o) for o in self.search.process(searches)]
        self.joiner = Joiner(topics=self.topics)  # a fresh one: each ask has request id "r"
        [reply] = self.joiner.process(parts)
        return SEARCH_REPLY.decode(reply.value)

    def close(self) -> None:
        self.ingest.close()
