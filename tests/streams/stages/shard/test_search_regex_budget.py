"""A shard whose request spends its regex budget answers that request with the error and keeps
running, also when the request waited for its ``after`` offsets (unit level: no broker)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from processors.document import Document
from processors.index.compound import CompoundIndexerConfig
from processors.rankers.chunk2doc import Chunk2DocRanker
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST
from streams.wire.records import Request
from streams.stages.shard.search import STALE_MARGIN_MS
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.search import ShardSearch
from streams.runtime.spec import Inbound
from streams.stages.shard.states import ShardStates
from streams.wire.topics import FlowTopics

DIM = 4
TOPICS = FlowTopics("regex-budget", 1)
SLOW = "a" * 60 + "!"  # `(a|aa)+$` takes 50 ms (its timeout) on each of these
CATASTROPHIC = {"operator": "filter", "stage": "index", "traversal_paths": ["m"],
                "parameters": {"conditions": {"text__regex": "(a|aa)+$"}}}


def _encoded(offset: int) -> Inbound:
    vector = np.eye(DIM, dtype=np.float32)[0]
    doc = Document(id=f"slow{offset}", text=SLOW,
                   chunks=[Document(id=f"slow{offset}/0", parent_id=f"slow{offset}", text=SLOW, embedding=vector)])
    return Inbound(TOPICS.encoded, 0, offset, doc.id.encode(), DOCUMENT.encode(doc),
                   {h.SCHEMA: DOCUMENT.header()[1], **dict([h.int_header(h.INGEST_OFFSET, offset)])})


def _search(deadline_ms: int, min_offsets: dict[int, int]) -> Inbound:
    request = Request(request_id="r", kind="search", reply_to="regex-budget.reply.t", deadline_ms=deadline_ms,
                      docs=[Document(id="q0", text="q", embedding=np.eye(DIM, dtype=np.float32)[0])],
                      parameters={"top_k": 20, "query_language": [CATASTROPHIC]}, min_offsets=min_offsets)
    return Inbound(TOPICS.search, 0, 0, b"r", REQUEST.encode(request),
                   {h.SCHEMA: REQUEST.header()[1], h.REQUEST_ID: b"r", h.REPLY_TO: b"regex-budget.reply.t",
                    **dict([h.int_header(h.DEADLINE_MS, deadline_ms)])})


def test_a_waiting_request_that_spends_its_regex_budget_is_answered_with_the_error(tmp_path: Path) -> None:
    states = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM))
    ingest = ShardIngest(states=states, topics=TOPICS)
    search = ShardSearch(states=states, ranker=Chunk2DocRanker(), topics=TOPICS)
    ingest.assigned([0])
    ingest.process([_encoded(offset) for offset in range(12)])
    ingest.end_reached(0)
    try:
        # It waits for an offset the shard has not applied, until shortly before its deadline.
        deadline = int(time.time() * 1000) + STALE_MARGIN_MS + 300
        assert search.process([_search(deadline, {0: 100})]) == []
        outputs: list = []
        while not outputs and time.time() * 1000 < deadline:
            outputs = search.tick()  # raised out of the stage loop before, and killed the stage
            time.sleep(0.02)
        [output] = outputs
        part = PARTIAL_RESULT.decode(output.value, dict(output.headers).get(h.SCHEMA))
        assert part.error is not None and "the limit regex_budget_s is 0.25 s" in part.error
        assert search.tick() == []  # answered once, no longer waiting
    finally:
        ingest.close()
