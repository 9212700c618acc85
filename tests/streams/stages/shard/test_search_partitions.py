"""A process owning several shards answers one batch's copies of a query side by side, in record order
(unit level: the shard handlers, no broker)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from processors.document import Document
from processors.index.compound import CompoundIndexerConfig
from processors.rankers.base import RankResult
from processors.rankers.chunk2doc import Chunk2DocRanker
from streams.runtime.spec import Inbound
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.search import ShardSearch
from streams.stages.shard.states import ShardStates
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST
from streams.wire.partitioner import partition_of
from streams.wire.records import PartialResult, Request
from streams.wire.topics import FlowTopics
from tests.streams.stages.shard.fixtures import later_ms

DIM = 8
TOPICS = FlowTopics("parts", 2)


class _ThreadNoting(Chunk2DocRanker):
    """The real ranker, noting the thread each search ranked on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def run(self, *args: Any, **kwargs: Any) -> RankResult:
        self.threads.add(threading.current_thread().name)
        return super().run(*args, **kwargs)


def _ids_on(partition: int, count: int) -> list[str]:
    ids = (f"d{i}" for i in range(10_000))
    return [doc_id for doc_id in ids if partition_of(doc_id.encode(), 2) == partition][:count]


def _doc(partition: int, offset: int, doc_id: str) -> Inbound:
    vector = np.random.default_rng(offset + 100 * partition).standard_normal(DIM).astype(np.float32)
    doc = Document(id=doc_id, embedding=vector / np.linalg.norm(vector))
    return Inbound(TOPICS.ingest, partition, offset, doc_id.encode(), DOCUMENT.encode(doc),
                   {h.SCHEMA: DOCUMENT.header()[1]})


def _search(partition: int, request_id: str, min_offsets: dict[int, int] | None = None) -> Inbound:
    request = Request(request_id=request_id, kind="search", reply_to="parts.reply.t", deadline_ms=later_ms(),
                      docs=[Document(id="q", embedding=np.eye(DIM, dtype=np.float32)[0])],
                      parameters={"top_k": 3}, min_offsets=min_offsets or {})
    headers = [h.int_header(h.DEADLINE_MS, request.deadline_ms)]
    if partition in request.min_offsets:  # as the fan-out writes each copy
        headers.append(h.int_header(h.MIN_INGEST_OFFSET, request.min_offsets[partition]))
    return Inbound(TOPICS.search, partition, 0, request_id.encode(), REQUEST.encode(request),
                   {h.SCHEMA: REQUEST.header()[1], **dict(headers)})


def _parts(outputs: Sequence[Any]) -> list[PartialResult]:
    return [PARTIAL_RESULT.decode(out.value, dict(out.headers).get(h.SCHEMA)) for out in outputs]


def test_copies_of_queries_on_two_shards_are_answered_each_from_its_shard_in_record_order(tmp_path: Path) -> None:
    states = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM))
    ingest = ShardIngest(states=states, topics=TOPICS)
    ranker = _ThreadNoting()
    search = ShardSearch(states=states, ranker=ranker, topics=TOPICS)
    ingest.assigned([0, 1])
    owned = {p: _ids_on(p, 5) for p in (0, 1)}
    ingest.process([_doc(p, offset, doc_id) for p in (0, 1) for offset, doc_id in enumerate(owned[p])])
    for p in (0, 1):
        ingest.end_reached(p)
    batch = [_search(1, "r1"), _search(0, "r1"), _search(1, "r2"), _search(0, "r2"),
             _search(0, "r3", min_offsets={0: 99})]  # waits for an offset: parked, not answered
    parts = _parts(search.process(batch))
    assert [(part.request_id, part.shard) for part in parts] == [("r1", 1), ("r1", 0), ("r2", 1), ("r2", 0)]
    for part in parts:
        assert {match.id for match in part.docs[0].matches} <= set(owned[part.shard])
        assert len(part.docs[0].matches) == 3
    assert len(ranker.threads) == 2 and threading.current_thread().name in ranker.threads
    ranker.threads.clear()
    alone = _parts(search.process([_search(1, "r4")]))
    assert [(part.request_id, part.shard) for part in alone] == [("r4", 1)]
    assert ranker.threads == {threading.current_thread().name}  # one shard's batch: no thread to hand it to
    ingest.close()


def test_a_batch_would_await_a_write_only_when_a_copy_names_an_offset_its_open_shard_has_not_applied(
        tmp_path: Path) -> None:
    """What the loop asks before answering a batch (``AwaitsWrites.would_await``), from each copy's
    ``ss-min-ingest-offset`` header, never decoding (the crash-loop breaker has not noted the batch yet): a copy
    naming an offset its shard has applied, none, or a header that is not a number is answered at once; one naming
    an offset ahead would be held. A copy without the header (an older fan-out's) is not waited for here, only
    in ``process``."""
    states = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM))
    ingest = ShardIngest(states=states, topics=TOPICS)
    search = ShardSearch(states=states, ranker=Chunk2DocRanker(), topics=TOPICS)
    ingest.assigned([0, 1])
    ingest.process([_doc(0, offset, doc_id) for offset, doc_id in enumerate(_ids_on(0, 3))])
    for p in (0, 1):
        ingest.end_reached(p)
    broken = Inbound(TOPICS.search, 0, 1, b"r9", b"\xff\x00not avro", {h.MIN_INGEST_OFFSET: b"ahead"})
    older = _search(0, "r0", min_offsets={0: 99})
    older = Inbound(older.topic, older.partition, older.offset, older.key, older.value,
                    {k: v for k, v in older.headers.items() if k != h.MIN_INGEST_OFFSET})
    assert not search.would_await([_search(0, "r1"), _search(0, "r2", min_offsets={0: 2}), broken, older])
    assert search.would_await([broken, _search(0, "r4", min_offsets={0: 3})])
    assert not search.awaiting_writes
    search.process([_search(0, "r5", min_offsets={0: 3})])
    assert search.awaiting_writes and not search.answerable()  # its write not applied yet: tick would not answer
    assert search.tick() == [] and search.awaiting_writes
    ingest.process([_doc(0, 3, _ids_on(0, 4)[3])])
    assert search.answerable()
    assert [part.request_id for part in _parts(search.tick())] == ["r5"]
    assert not search.awaiting_writes and not search.answerable()
    ingest.close()


def _at(record: Inbound, offset: int) -> Inbound:
    return Inbound(record.topic, record.partition, offset, record.key, record.value, record.headers)


def test_the_earliest_held_search_of_each_partition_is_what_its_commits_stop_at_until_answered(tmp_path: Path) -> None:
    """``parked_offsets``: the path's checkpoint commits no further on a partition (``Checkpoint.holds``), so that
    a new owner reads a held search again; the old owner drops it when the partition leaves (``tick``)."""
    states = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM))
    ingest = ShardIngest(states=states, topics=TOPICS)
    search = ShardSearch(states=states, ranker=Chunk2DocRanker(), topics=TOPICS)
    ingest.assigned([0, 1])
    ids = _ids_on(0, 6)
    ingest.process([_doc(0, offset, doc_id) for offset, doc_id in enumerate(ids[:3])])
    for p in (0, 1):
        ingest.end_reached(p)
    assert search.parked_offsets() == {}
    late, soon = _at(_search(0, "late", min_offsets={0: 5}), 7), _at(_search(0, "soon", min_offsets={0: 3}), 9)
    parts = _parts(search.process([soon, late, _at(_search(1, "now"), 4)]))  # parked in another order than read
    assert [part.request_id for part in parts] == ["now"]
    assert search.parked_offsets() == {(TOPICS.search, 0): 7}
    assert _parts(search.process([late, soon])) == []  # read again after a rewind: still held once
    ingest.process([_doc(0, 3, ids[3])])
    assert [part.request_id for part in _parts(search.tick())] == ["soon"]
    assert search.parked_offsets() == {(TOPICS.search, 0): 7}  # the earlier one still held
    ingest.process([_doc(0, offset, ids[offset]) for offset in (4, 5)])
    assert [part.request_id for part in _parts(search.tick())] == ["late"]
    assert search.parked_offsets() == {} and not search.awaiting_writes
    ingest.close()
