"""Restore before serve, and rebuild when the topic no longer holds what a shard applied
(unit level: the shard handlers and the tracker, no broker)."""

from __future__ import annotations


import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING
from rocksdict import Rdict

from processors.document import Document
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from processors.rankers.chunk2doc import Chunk2DocRanker, Chunk2DocRankerConfig
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST, STORED_DOCUMENT
from streams.wire.records import PartialResult, Request
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.search import STALE_MARGIN_MS, ShardSearch
from streams.runtime.spec import Inbound, Output
from streams.stages.shard.restore import RestoreTracker, Verdict
from streams.stages.shard.states import PRIVATE_INFIX, ShardStates
from streams.wire.topics import FlowTopics
from tests.streams.stages.shard.fixtures import later_ms

DIM = 8
TOPICS = FlowTopics("restore", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_shard_restores_until_its_position_reaches_the_fetched_high_watermark() -> None:
    tracker = RestoreTracker()
    tracker.start(0)
    assert tracker.observe(0, next_offset=5, low=0, high=-1001) is None  # no fetch response yet
    assert tracker.is_restoring(0)
    assert tracker.observe(0, next_offset=5, low=0, high=9) is None
    assert tracker.is_restoring(0)
    assert tracker.observe(0, next_offset=9, low=0, high=9) is Verdict.CAUGHT_UP
    assert not tracker.is_restoring(0)
    assert tracker.observe(0, next_offset=9, low=0, high=12) is None  # serving: later lag is not a restore


def test_an_empty_shard_on_an_empty_partition_is_caught_up_at_once() -> None:
    tracker = RestoreTracker()
    tracker.start(3)
    assert tracker.observe(3, next_offset=-1, low=0, high=0) is Verdict.CAUGHT_UP


def test_the_end_of_the_partition_ends_a_restore_even_below_the_watermark() -> None:
    """Transaction markers take offsets no record has: the consumer's end-of-partition is the truth."""
    tracker = RestoreTracker()
    tracker.start(0)
    assert tracker.end_reached(0)
    assert not tracker.is_restoring(0)
    assert not tracker.end_reached(0)


def test_a_position_past_the_end_is_out_of_range_only_after_the_grace_period() -> None:
    clock = Clock()
    tracker = RestoreTracker(grace_s=2.0, clock=clock)
    tracker.start(0)
    assert tracker.observe(0, next_offset=51, low=0, high=10) is None
    clock.now += 1.0
    assert tracker.observe(0, next_offset=51, low=0, high=10) is None
    clock.now += 1.5
    assert tracker.observe(0, next_offset=51, low=0, high=10) is Verdict.BEYOND_END


def test_a_fresher_watermark_within_the_grace_period_clears_the_suspicion() -> None:
    """A cached watermark from an earlier assignment may lag; the next fetch response corrects it."""
    clock = Clock()
    tracker = RestoreTracker(grace_s=2.0, clock=clock)
    tracker.start(0)
    assert tracker.observe(0, next_offset=51, low=0, high=10) is None
    clock.now += 1.0
    assert tracker.observe(0, next_offset=51, low=0, high=60) is None
    clock.now += 5.0
    assert tracker.observe(0, next_offset=51, low=0, high=10) is None  # suspicion starts over
    assert tracker.is_restoring(0)


def _states(tmp_path: Path) -> ShardStates:
    return ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM))


def _encoded(offset: int, doc_id: str, seed: int) -> Inbound:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    doc = Document(id=doc_id, text=f"text of {doc_id}",
                   chunks=[Document(id=f"{doc_id}/0", text=f"text of {doc_id}", embedding=vector / np.linalg.norm(vector))])
    return Inbound(TOPICS.encoded, 0, offset, doc_id.encode(), DOCUMENT.encode(doc),
                   {h.SCHEMA: DOCUMENT.header()[1], **dict([h.int_header(h.INGEST_OFFSET, offset)])})


def _search_record(request_id: str, *, after: int | None = None, deadline_ms: int | None = None) -> Inbound:
    """A search of partition 0; ``after``: the ingest offset it must read (read-your-writes)."""
    vector = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    request = Request(request_id=request_id, kind="search", reply_to="restore.reply.t",
                      deadline_ms=deadline_ms or later_ms(), docs=[Document(id="q", text="q", embedding=vector)],
                      parameters={"top_k": 3}, min_offsets={} if after is None else {0: after})
    wanted = [] if after is None else [h.int_header(h.MIN_INGEST_OFFSET, after)]
    return Inbound(TOPICS.search, 0, 0, request_id.encode(), REQUEST.encode(request),
                   {h.SCHEMA: REQUEST.header()[1], h.REQUEST_ID: request_id.encode(), h.REPLY_TO: b"restore.reply.t",
                    **dict([h.int_header(h.DEADLINE_MS, request.deadline_ms), *wanted])})


def _parts(outputs: list[Output]) -> list[PartialResult]:
    return [PARTIAL_RESULT.decode(o.value, dict(o.headers).get(h.SCHEMA)) for o in outputs]


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[tuple[ShardStates, ShardIngest, ShardSearch]]:
    states = _states(tmp_path)
    ingest = ShardIngest(states=states, topics=TOPICS)
    search = ShardSearch(states=states, ranker=Chunk2DocRanker(Chunk2DocRankerConfig()), topics=TOPICS)
    yield states, ingest, search
    ingest.close()


def test_a_restoring_shard_answers_at_once_flagged_restoring_and_without_matches(
        shard: tuple[ShardStates, ShardIngest, ShardSearch]) -> None:
    _, ingest, search = shard
    assert ingest.assigned([0]) == {0: OFFSET_BEGINNING}
    ingest.process([_encoded(i, f"d{i}", i) for i in range(3)])
    [restoring] = _parts(search.process([_search_record("r1")]))
    assert restoring.restoring and restoring.docs[0].matches == []

    assert ingest.watermarks(0, low=0, high=3) is None  # applied 0..2: caught up
    [serving] = _parts(search.process([_search_record("r2")]))
    assert not serving.restoring
    assert {m.id for m in serving.docs[0].matches} == {"d0", "d1", "d2"}


def test_a_search_for_a_write_waits_for_the_restore_to_end_and_is_answered_restoring_only_at_its_deadline(
        shard: tuple[ShardStates, ShardIngest, ShardSearch]) -> None:
    """A new owner of a partition reads again the searches its old owner held for a write (``parked_offsets``),
    usually while it restores: answered ``restoring`` at once, the read-your-writes search would fail."""
    _, ingest, search = shard
    ingest.assigned([0])
    ingest.process([_encoded(i, f"d{i}", i) for i in range(3)])  # applied up to 2, still restoring
    soon = int(time.time() * 1000) + 400
    assert _parts(search.process([_search_record("r1", after=2), _search_record("r2", after=2, deadline_ms=soon)])) == []
    assert search.awaiting_writes and search.would_await([_search_record("r3", after=1)])
    assert not search.would_await([_search_record("r4")])
    given_up = time.monotonic() + 10
    while not (parts := _parts(search.tick())):  # until r2's deadline comes near, its shard still restoring
        assert time.monotonic() < given_up
        time.sleep(0.01)
    [late] = parts
    assert late.request_id == "r2" and late.restoring and late.docs[0].matches == []
    assert time.time() * 1000 >= soon - STALE_MARGIN_MS  # not before
    assert ingest.watermarks(0, low=0, high=3) is None  # restored
    [found] = _parts(search.tick())
    assert found.request_id == "r1" and not found.restoring and not found.stale
    assert {m.id for m in found.docs[0].matches} == {"d0", "d1", "d2"}
    assert not search.awaiting_writes


def test_past_max_waiting_a_search_held_during_a_restore_is_answered_restoring_not_from_half_a_shard(
        shard: tuple[ShardStates, ShardIngest, ShardSearch]) -> None:
    _, ingest, search = shard
    search.MAX_WAITING = 1  # type: ignore[misc]
    ingest.assigned([0])
    ingest.process([_encoded(i, f"d{i}", i) for i in range(3)])
    [first] = _parts(search.process([_search_record("r1", after=2, deadline_ms=later_ms(60)),
                                     _search_record("r2", after=2)]))
    assert first.request_id == "r1" and first.restoring and not first.stale and first.docs[0].matches == []
    assert search.awaiting_writes


def test_a_reopened_shard_restores_again_from_its_stored_offset(
        shard: tuple[ShardStates, ShardIngest, ShardSearch]) -> None:
    states, ingest, _ = shard
    ingest.assigned([0])
    ingest.process([_encoded(i, f"d{i}", i) for i in range(4)])
    ingest.revoked([0])
    assert ingest.assigned([0]) == {0: 4}
    assert states.restore.is_restoring(0)
    ingest.end_reached(0)
    assert not states.restore.is_restoring(0)


def test_a_stored_offset_past_the_end_rebuilds_the_shard_from_the_beginning(
        shard: tuple[ShardStates, ShardIngest, ShardSearch], caplog: pytest.LogCaptureFixture) -> None:
    states, ingest, _ = shard
    clock = Clock()
    states.restore = RestoreTracker(grace_s=1.0, clock=clock)
    ingest.assigned([0])
    ingest.process([_encoded(i, f"old{i}", i) for i in range(20)])
    ingest.revoked([0])
    ingest.assigned([0])  # the topic was recreated meanwhile: it now ends at offset 5
    assert ingest.watermarks(0, low=0, high=5) is None
    clock.now += 1.5
    with caplog.at_level("WARNING"):
        assert ingest.watermarks(0, low=0, high=5) == OFFSET_BEGINNING
    aside = states.set_aside[0]
    expected_line = (f"shard 0: stored offset 19 is past the end of {TOPICS.encoded} (high watermark 5); the topic "
                     "was recreated or truncated (or the memory-only broker restarted): rebuilding the shard from the "
                     f"beginning of {TOPICS.encoded}; up to 20 documents it held may be missing (those not in the topic "
                     f"now); its previous state is kept at {aside} (delete it when not needed)")
    assert [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()] == [expected_line]
    # What the topic can no longer give back is kept, not deleted: the old shard opens with its 20 documents.
    kept = CompoundIndexer(states._config, path=aside, codec=STORED_DOCUMENT)
    kept.warm_up()
    try:
        assert sorted(kept.doc_ids()) == sorted(f"old{i}" for i in range(20))
    finally:
        kept.close()
    index = states.get(0)
    assert index is not None and list(index.doc_ids()) == [] and index.vector_count == 0
    assert states.checkpoint(0).encoded_offset == -1 and states.restore.is_restoring(0)
    assert states.checkpoint(0).missing == 20
    ingest.process([_encoded(i, f"new{i}", 100 + i) for i in range(5)])
    assert ingest.watermarks(0, low=0, high=5) is None
    assert sorted(index.doc_ids()) == [f"new{i}" for i in range(5)]
    assert not states.restore.is_restoring(0)


def test_out_of_range_past_the_end_rebuilds_at_once_from_the_log_start(
        shard: tuple[ShardStates, ShardIngest, ShardSearch]) -> None:
    states, ingest, _ = shard
    ingest.assigned([0])
    ingest.process([_encoded(i, f"d{i}", i) for i in range(3)])
    assert ingest.out_of_range(0, low=0, high=1) == 0  # the topic was recreated: it ends before offset 3
    index = states.get(0)
    assert index is not None and list(index.doc_ids()) == []
    assert states.checkpoint(0).missing == 3 and str(states.set_aside[0]) in states.checkpoint(0).missing_reason


def test_out_of_range_below_the_log_start_keeps_the_state_and_says_what_may_be_missing(
        shard: tuple[ShardStates, ShardIngest, ShardSearch], caplog: pytest.LogCaptureFixture) -> None:
    """Retention or delete_records removed records 3..7 before the shard applied them: what it
    holds is kept (the topic cannot give it back), it goes on from the log start, and it says, in
    its log and in status (across a restart), how many documents may be missing and why."""
    states, ingest, _ = shard
    ingest.assigned([0])
    ingest.process([_encoded(i, f"d{i}", i) for i in range(3)])
    with caplog.at_level("WARNING"):
        assert ingest.out_of_range(0, low=8, high=12) == 8
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"shard 0: records 3..7 of {TOPICS.encoded} were deleted (retention or delete_records) "
                           "before the shard applied them: up to 5 documents may be missing or stale; keeping its 3 "
                           "documents and going on from the log start offset 8."), line
    assert 0 not in states.set_aside
    ingest.process([_encoded(i, f"d{i}", i) for i in range(8, 10)])
    ingest.revoked([0])
    assert ingest.assigned([0]) == {0: 10}  # the note is stored with the data
    [status] = ingest.shard_status()
    assert status["documents"] == 5 and status["missing"] == 5
    assert status["missing_reason"] == (f"records 3..7 of {TOPICS.encoded} were deleted (retention or "
                                        "delete_records) before the shard applied them")


HOLD_LOCK = """
import sys
from rocksdict import Rdict
db = Rdict(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_shard_another_process_still_holds_is_restored_into_a_private_copy(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hung previous owner on a shared state dir keeps RocksDB's lock: the new owner restores
    a private copy from the topic, never touches the shared directory, and deletes its copy on close."""
    first = _states(tmp_path)
    ShardIngest(states=first, topics=TOPICS).assigned([0])
    ShardIngest(states=first, topics=TOPICS).process([_encoded(i, f"d{i}", i) for i in range(3)])
    first.close_all()
    shared = first.path(0)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(shared)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with pytest.raises(Exception, match="LOCK"):  # replay and tools: a held shard is an error
            _states(tmp_path).open(0)

        stage = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM),
                            private_when_locked=True)
        ingest = ShardIngest(states=stage, topics=TOPICS)
        with caplog.at_level("WARNING"):
            assert ingest.assigned([0]) == {0: OFFSET_BEGINNING}  # restores from the topic's beginning
        private = stage.path(0)
        assert private != shared and private.parent == shared.parent and private.is_dir()
        assert any("is held by another process" in r.getMessage() for r in caplog.records)
        assert stage.restore.is_restoring(0)
        ingest.process([_encoded(i, f"d{i}", i) for i in range(3)])
        index = stage.get(0)
        assert index is not None and sorted(index.doc_ids()) == ["d0", "d1", "d2"]

        assert stage.destroy(0).encoded_offset == -1  # a rebuild replaces the private copy only
        rebuilt = stage.get(0)
        assert stage.path(0) != shared and rebuilt is not None and list(rebuilt.doc_ids()) == []
        assert not private.exists() and stage.restore.is_restoring(0)
        private = stage.path(0)
        ingest.close()
        assert not private.exists()
    finally:
        holder.communicate("")
    reopened = _states(tmp_path)  # the shared directory kept what the previous owner applied
    assert reopened.open(0).encoded_offset == 2
    reopened.close_all()


def test_private_copies_are_removed_only_when_nobody_holds_them(tmp_path: Path) -> None:
    states = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM),
                         private_when_locked=True)
    folder = states.path(0).parent
    abandoned, held, starting = (folder / f"0{PRIVATE_INFIX}{name}" for name in ("abandoned", "held", "starting"))
    for copy in (abandoned, held):
        Rdict(str(copy)).close()  # a RocksDB directory with its LOCK file, as a killed owner leaves it
    starting.mkdir()  # an owner that has just created its directory
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(held)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        states._remove_abandoned_copies(0)
        assert not abandoned.exists() and held.exists() and starting.exists()
    finally:
        holder.communicate("")
