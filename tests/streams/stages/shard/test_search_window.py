"""The shard's search handler widens its window for index-stage filters and reports its limit
(unit level: the shard handlers, no broker)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processors.document import Document
from processors.index.compound import CompoundIndexerConfig
from processors.query.window import WindowedSearchConfig
from processors.rankers.chunk2doc import Chunk2DocRanker
from streams.wire import headers as h
from streams.exceptions import InvalidRecordError
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST
from streams.wire.records import PartialResult, Request
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.search import ShardSearch
from streams.runtime.spec import Inbound
from streams.stages.shard.states import ShardStates
from streams.wire.topics import FlowTopics
from tests.streams.stages.shard.fixtures import later_ms

DIM = 8
TOPICS = FlowTopics("window", 1)
QUERY = np.eye(DIM, dtype=np.float32)[0]
GERMAN = {"operator": "filter", "stage": "index", "traversal_paths": ["m"],
          "parameters": {"conditions": {"tags.lang": "de"}}}


def _encoded(offset: int, doc_id: str, lang: str, similarity: float) -> Inbound:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[0], vector[1 + offset % (DIM - 1)] = similarity, np.sqrt(1 - similarity**2)
    doc = Document(id=doc_id, text=doc_id, tags={"lang": lang},
                   chunks=[Document(id=f"{doc_id}/0", parent_id=doc_id, text=doc_id, embedding=vector)])
    return Inbound(TOPICS.encoded, 0, offset, doc_id.encode(), DOCUMENT.encode(doc),
                   {h.SCHEMA: DOCUMENT.header()[1], **dict([h.int_header(h.INGEST_OFFSET, offset)])})


def _search_record(parameters: dict[str, Any]) -> Inbound:
    request = Request(request_id="r", kind="search", reply_to="window.reply.t", deadline_ms=later_ms(),
                      docs=[Document(id="q0", text="q", embedding=QUERY)], parameters=parameters, min_offsets={})
    return Inbound(TOPICS.search, 0, 0, b"r", REQUEST.encode(request),
                   {h.SCHEMA: REQUEST.header()[1], h.REQUEST_ID: b"r", h.REPLY_TO: b"window.reply.t",
                    **dict([h.int_header(h.DEADLINE_MS, request.deadline_ms)])})


def _answer(tmp_path: Path, parameters: dict[str, Any], max_vectors: int) -> PartialResult:
    states = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM))
    ingest = ShardIngest(states=states, topics=TOPICS)
    search = ShardSearch(states=states, ranker=Chunk2DocRanker(), topics=TOPICS,
                         window=WindowedSearchConfig(max_vectors=max_vectors))
    ingest.assigned([0])
    # 60 English documents nearer the query than 2 German ones; one German is nearest of all.
    records = [_encoded(0, "de-near", "de", 0.99)]
    records += [_encoded(1 + i, f"en{i:02}", "en", 0.9 - i / 1000) for i in range(60)]
    records += [_encoded(61, "de-far", "de", 0.2)]
    ingest.process(records)
    ingest.end_reached(0)
    [output] = search.process([_search_record(parameters)])
    ingest.close()
    return PARTIAL_RESULT.decode(output.value, dict(output.headers).get(h.SCHEMA))


def test_an_index_stage_filter_finds_the_documents_beyond_the_first_window(tmp_path: Path) -> None:
    part = _answer(tmp_path, {"top_k": 3, "query_language": [GERMAN]}, max_vectors=10_000)
    assert [m.id for m in part.docs[0].matches] == ["de-near", "de-far"] and part.error is None and part.warning is None


def test_the_window_limit_is_reported_with_what_was_found(tmp_path: Path) -> None:
    part = _answer(tmp_path, {"top_k": 3, "chunk_oversample": 1, "query_language": [GERMAN]}, max_vectors=5)
    assert [m.id for m in part.docs[0].matches] == ["de-near"]
    assert part.error is None and part.warning is not None  # a short result is a warning, not an error
    assert part.warning.startswith("shard 0: index-stage window limit reached (3 vectors read, MAX_WINDOW_VECTORS 5)")
    assert "q0" in part.warning


@pytest.mark.parametrize("top_k", [1, 3])
def test_without_a_filter_nothing_changes(tmp_path: Path, top_k: int) -> None:
    part = _answer(tmp_path, {"top_k": top_k}, max_vectors=1)
    assert [m.id for m in part.docs[0].matches] == ["de-near", "en00", "en01"][:top_k] and part.error is None


def test_a_search_record_no_encode_stage_wrote_is_refused_before_it_is_parked(tmp_path: Path) -> None:
    """A request written straight to the search topic, due in 10^8 years and waiting for an offset
    that never comes, would stay parked for good: refused, and nobody is told (it is dead-lettered)."""
    states = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM))
    search = ShardSearch(states=states, ranker=Chunk2DocRanker(), topics=TOPICS)
    record = _search_record({"top_k": 3})
    request = REQUEST.decode(record.value)
    far = Inbound(record.topic, 0, 1, b"r", REQUEST.encode(dataclasses.replace(
        request, deadline_ms=2**62, min_offsets={0: 10**12})), record.headers)
    with pytest.raises(InvalidRecordError, match="the limit max_deadline_s is 300"):
        search.process([far])
    assert search.on_failure(far, InvalidRecordError("x")) == [] and search.tick() == []
