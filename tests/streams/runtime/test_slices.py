"""An index path with ``slice_records`` and a query path on the same thread (a shard's): a batch is applied
in slices, and the searches that arrived meanwhile are served between them, so a search waits for one slice
of a bulk ingest rather than a whole batch (``StageLoop._take``)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from streams.kafka.admin import ensure_topics
from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from streams.runtime.inline import InlineQueries
from streams.runtime.loop import StageLoop
from streams.runtime.spec import AwaitsWrites, Inbound, Output, PathSpec, StageSpec
from streams.wire.topics import TopicShape

pytestmark = pytest.mark.kafka


class Journal:
    """What the two handlers saw, in the order the loop called them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []


class IndexHandler:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        self._journal.events.append(("slice", len(records)))
        return []

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return []

    def tick(self) -> list[Output]:
        return []


class QueryHandler(IndexHandler):
    def process(self, records: Sequence[Inbound]) -> list[Output]:
        self._journal.events.append(("search", len(records)))
        return []


class ParkingQueryHandler(QueryHandler, AwaitsWrites):
    """A query handler that says whether it holds a search for a write (as the shard's does)."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.parked = False
        self.would = False
        self.due = False

    @property
    def awaiting_writes(self) -> bool:
        return self.parked

    def answerable(self) -> bool:
        return self.parked and self.due

    def tick(self) -> list[Output]:
        self._journal.events.append(("tick", int(self.due)))
        return []

    def would_await(self, records: Sequence[Inbound]) -> bool:
        return self.would

    def parked_offsets(self) -> dict[tuple[str, int], int]:
        return {}


def _loop(settings: KafkaSettings, *, slice_records: int, follow: bool, inflight: Path | None = None,
          query_handler: type[QueryHandler] = QueryHandler) -> tuple[StageLoop, Journal, str, str]:
    """A loop with both paths built (not subscribed): its query consumer assigned to a new search topic."""
    ingest, search = (f"slices-{name}-{uuid.uuid4().hex[:8]}" for name in ("ingest", "search"))
    ensure_topics(settings, [TopicShape(ingest, 1), TopicShape(search, 1)])
    journal = Journal()
    group = f"slices-test.{uuid.uuid4().hex[:8]}"
    stage = StageSpec(flow="f", name="index", dead_letter_topic="f.dead-letter", inflight_dir=inflight,
                      index_path=PathSpec(ingest, group, IndexHandler(journal), batch_size=256,
                                          slice_records=slice_records),
                      query_path=PathSpec(search, f"{group}.search", query_handler(journal), follow_index_path=follow))
    loop = StageLoop(stage, settings)
    assert stage.index_path is not None and stage.query_path is not None
    loop._index, loop._query = loop._path(stage.index_path), loop._path(stage.query_path)
    loop._query.consumer.assign([TopicPartition(search, 0, OFFSET_BEGINNING)])
    return loop, journal, ingest, search


def _ask(settings: KafkaSettings, search: str) -> None:
    producer = StageProducer(settings)
    producer.produce(search, value=b"query", partition=0)
    producer.flush()
    producer.close()


def _batches_until_searched(loop: StageLoop, journal: Journal, ingest: str) -> None:
    """Index batches of 16 until the search was served (the consumer fetches it within a few batches)."""
    assert loop._index is not None
    deadline, start = time.monotonic() + 30, 0
    while ("search", 1) not in journal.events:
        assert time.monotonic() < deadline, "the search was never served during an index batch"
        loop._take(loop._index, _batch(ingest, start, 16))
        start += 16


def _batch(topic: str, start: int, count: int) -> list[Inbound]:
    return [Inbound(topic, 0, offset, b"doc", b"vector", {}) for offset in range(start, start + count)]


def _close(loop: StageLoop) -> None:
    for path in (loop._index, loop._query):
        assert path is not None
        path.close(commit=False)
    loop.producer.close()


def test_a_search_that_arrives_during_a_batch_is_served_between_its_slices(kafka_settings: KafkaSettings) -> None:
    loop, journal, ingest, search = _loop(kafka_settings, slice_records=4, follow=True)
    _ask(kafka_settings, search)
    try:
        _batches_until_searched(loop, journal, ingest)
    finally:
        _close(loop)
    served = journal.events.index(("search", 1))
    assert served % 4 != 0, "served before or after a batch of 4 slices, not between two of them"
    assert {event for event in journal.events if event[0] == "slice"} == {("slice", 4)}


def test_no_index_record_is_noted_in_flight_while_queries_run_between_slices(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """A query that kills the process between slices must not be counted as a crash over the index batch."""
    loop, journal, ingest, search = _loop(kafka_settings, slice_records=4, follow=True, inflight=tmp_path)
    assert loop._index is not None and loop._query is not None
    notes: list[bytes] = []
    process = loop._query.spec.handler.process

    def noting(records: Sequence[Inbound]) -> list[Output]:
        notes.extend(path.read_bytes() for path in tmp_path.glob(f"{loop._index.spec.group_id}__*.json"))
        return process(records)

    loop._query.spec.handler.process = noting  # type: ignore[method-assign]
    _ask(kafka_settings, search)
    try:
        _batches_until_searched(loop, journal, ingest)
    finally:
        _close(loop)
    assert notes and all(not note.strip() for note in notes)  # the batch's note file exists, blank


def _notes_at_each_slice(loop: StageLoop, note: Path) -> list[dict[str, object]]:
    """The index handler wrapped to read, as each slice begins, the note its batch has in ``note``."""
    assert loop._index is not None
    seen: list[dict[str, object]] = []
    process = loop._index.spec.handler.process

    def noting(records: Sequence[Inbound]) -> list[Output]:
        seen.append(json.loads(note.read_bytes()))
        return process(records)

    loop._index.spec.handler.process = noting  # type: ignore[method-assign]
    return seen


def test_with_nothing_to_serve_between_slices_the_whole_batch_stays_noted(kafka_settings: KafkaSettings,
                                                                         tmp_path: Path) -> None:
    """No query waits: the notes are not dropped and written again at every slice (two writes and two walks of the
    batch each); a crash in any slice is counted over the batch's offsets, by this process, and the batch through
    blanks the note."""
    loop, _, ingest, _ = _loop(kafka_settings, slice_records=4, follow=True, inflight=tmp_path)
    assert loop._index is not None
    note = tmp_path / f"{loop._index.spec.group_id}__{ingest}__0.json"
    seen = _notes_at_each_slice(loop, note)
    try:
        loop._take(loop._index, _batch(ingest, 100, 14))
    finally:
        _close(loop)
    assert [(n["first"], n["last"], n["crashes"]) for n in seen] == [(100, 113, 0)] * 4
    assert {n["pid"] for n in seen} == {os.getpid()} and not note.read_bytes().strip()


def test_after_queries_ran_between_slices_the_rest_of_the_batch_is_noted_again(kafka_settings: KafkaSettings,
                                                                             tmp_path: Path) -> None:
    """Dropped while a search ran between two slices, the notes are written again over the offsets not yet
    applied (``InFlightLog.resume``): a crash in a later slice is counted over them."""
    loop, journal, ingest, search = _loop(kafka_settings, slice_records=4, follow=True, inflight=tmp_path)
    assert loop._index is not None
    notes = _notes_at_each_slice(loop, tmp_path / f"{loop._index.spec.group_id}__{ingest}__0.json")
    _ask(kafka_settings, search)
    try:
        _batches_until_searched(loop, journal, ingest)  # batches of 16 from offset 0, in slices of 4
    finally:
        _close(loop)
    after = journal.events[:journal.events.index(("search", 1))].count(("slice", 4))  # the slice after the search
    assert after % 4 != 0, "served before or after a batch, not between two of its slices"
    expected = [(4 * after if after <= j < 4 * (after // 4 + 1) else 16 * (j // 4), 16 * (j // 4) + 15)
                for j in range(len(notes))]
    assert [(n["first"], n["last"]) for n in notes] == expected


@pytest.mark.parametrize("due", [False, True])
def test_a_parked_search_has_its_timer_run_between_slices_only_once_it_can_be_answered(
        kafka_settings: KafkaSettings, tmp_path: Path, due: bool) -> None:
    """A search parked for a write a bulk ingest has not reached waits through thousands of slices: between two, its
    handler's timer runs (and the batch's notes are dropped for it) only where it would answer (``answerable``)."""
    loop, journal, ingest, _ = _loop(kafka_settings, slice_records=4, follow=True, inflight=tmp_path,
                                     query_handler=ParkingQueryHandler)
    assert loop._index is not None and loop._query is not None
    handler = loop._query.spec.handler
    assert isinstance(handler, ParkingQueryHandler)
    handler.parked, handler.due = True, due
    note = tmp_path / f"{loop._index.spec.group_id}__{ingest}__0.json"
    notes = _notes_at_each_slice(loop, note)
    during_ticks: list[bytes] = []
    tick = handler.tick

    def noting_tick() -> list[Output]:
        during_ticks.append(note.read_bytes())
        return tick()

    handler.tick = noting_tick  # type: ignore[method-assign]
    try:
        loop._take(loop._index, _batch(ingest, 0, 12))
    finally:
        _close(loop)
    assert journal.events == ([("slice", 4), ("tick", 1), ("slice", 4), ("tick", 1), ("slice", 4)] if due
                              else [("slice", 4)] * 3)
    assert [note["first"] for note in notes] == ([0, 4, 8] if due else [0, 0, 0])
    assert all(not written.strip() for written in during_ticks)  # no index record noted while the timer runs


def test_a_batch_with_a_crash_count_is_not_sliced(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """The crash-loop breaker judges it whole, as before slices: its notes must not be dropped between slices."""
    loop, journal, ingest, _ = _loop(kafka_settings, slice_records=4, follow=True, inflight=tmp_path)
    assert loop._index is not None
    dead = {"first": 0, "last": 15, "crashes": 0, "pid": 2 ** 22 + 1, "poisoned": {}, "lettered": []}
    (tmp_path / f"{loop._index.spec.group_id}__{ingest}__0.json").write_text(json.dumps(dead))
    try:
        loop._take(loop._index, _batch(ingest, 0, 16))
    finally:
        _close(loop)
    assert journal.events == [("slice", 16)]


@pytest.mark.parametrize(("slice_records", "follow"), [(0, True), (4, False)])
def test_whole_batches_without_slices_or_without_a_query_path_on_the_thread(
        kafka_settings: KafkaSettings, slice_records: int, follow: bool) -> None:
    """Unsliced (0), or a query path with a thread of its own (not following: the loop starts one),
    a batch is one call: nothing to serve in between."""
    loop, journal, ingest, _ = _loop(kafka_settings, slice_records=slice_records, follow=follow)
    if not follow:
        loop._query_thread = threading.Thread(target=lambda: None)  # as run() sets it (not started here)
    try:
        assert loop._index is not None
        loop._take(loop._index, _batch(ingest, 0, 16))
    finally:
        _close(loop)
    assert journal.events == [("slice", 16)]


def test_while_a_search_awaits_a_write_the_idle_loop_blocks_on_the_index_consumer(
        kafka_settings: KafkaSettings) -> None:
    """Idle, a shard's loop blocks on its query consumer; while a search is parked for a write (read-your-writes),
    on its index consumer instead, so the write is applied as soon as it is fetched, not after the query
    consumer's idle poll ran out (write→found)."""
    loop, _, _, _ = _loop(kafka_settings, slice_records=4, follow=True, query_handler=ParkingQueryHandler)
    assert loop._index is not None and loop._query is not None
    handler = loop._query.spec.handler
    assert isinstance(handler, ParkingQueryHandler)
    waits: list[tuple[str, float]] = []
    poll = loop._poll

    def timed_poll(path: object, timeout: float) -> bool:
        waits.append(("index" if path is loop._index else "query", timeout))
        return poll(path, timeout)  # type: ignore[arg-type]

    loop._inline._poll = timed_poll  # the loop's polls, in the order and with the waits InlineQueries gives
    try:
        loop.step()
        idle = list(waits)
        waits.clear()
        handler.parked = True
        loop.step()
        parked = list(waits)
    finally:
        _close(loop)
    assert idle == [("query", InlineQueries.IDLE_POLL_S), ("index", 0.0)]
    assert parked == [("query", 0.0), ("index", InlineQueries.AWAITING_POLL_S)]


@pytest.mark.parametrize(("would_await", "backlog"), [(True, False), (False, False), (True, True)])
def test_a_query_batch_that_would_await_a_write_is_answered_after_the_writes_already_fetched(
        kafka_settings: KafkaSettings, would_await: bool, backlog: bool) -> None:
    """A search held for a write ran after the other searches of its batch (two shards of one process: one after
    the other, not side by side); when one would be held, what the index consumer has fetched is applied first,
    whole (no queries served between its slices: they would overtake the batch that waits). Otherwise, and
    behind a backlog (a bulk ingest: the awaited write is further back, and a whole batch would hold every query
    where a slice does), the queries go first, as always."""
    loop, journal, ingest, search = _loop(kafka_settings, slice_records=4, follow=True, query_handler=ParkingQueryHandler)
    assert loop._index is not None and loop._query is not None
    handler = loop._query.spec.handler
    assert isinstance(handler, ParkingQueryHandler)
    handler.would = would_await
    loop._inline.index_has_backlog = backlog  # as the loop's last poll of the index path found
    producer = StageProducer(kafka_settings)
    for _ in range(6):
        producer.produce(ingest, value=b"doc", partition=0)
    producer.flush()
    producer.close()
    loop._index.consumer.assign([TopicPartition(ingest, 0, OFFSET_BEGINNING)])
    deadline = time.monotonic() + 30
    while loop._index.consumer.get_watermark_offsets(TopicPartition(ingest, 0), cached=True)[1] != 6:
        assert time.monotonic() < deadline, "the index consumer never fetched the six records"
        time.sleep(0.01)  # between checks of the condition: librdkafka's fetcher fills its queue meanwhile
    _ask(kafka_settings, search)
    try:
        while ("search", 1) not in journal.events:
            assert time.monotonic() < deadline + 30, "the search never arrived"
            loop._poll(loop._query, 1.0)
    finally:
        _close(loop)
    assert journal.events == ([("slice", 6), ("search", 1)] if would_await and not backlog else [("search", 1)])


class ThreadNotingQueryHandler(QueryHandler):
    """Notes the thread each search batch runs on."""

    threads: list[threading.Thread]

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        self.threads = [*getattr(self, "threads", []), threading.current_thread()]
        return super().process(records)


@pytest.mark.parametrize("follow", [True, False])
def test_a_query_path_that_follows_the_index_path_searches_on_the_loops_thread(kafka_settings: KafkaSettings,
                                                                                 follow: bool) -> None:
    """A shard's search reads the state the index path's rebalances open and close: run in a keep-alive worker, a
    long search batch would have the loop's thread poll the index consumer meanwhile, and a revoke in that poll
    closed the shard under the search. A query path of its own (the encode stage's) keeps its worker."""
    loop, _, _, search = _loop(kafka_settings, slice_records=0, follow=follow, query_handler=ThreadNotingQueryHandler)
    assert loop._query is not None
    try:
        loop._take(loop._query, [Inbound(search, 0, 0, b"k", b"query", {})])
        handler = loop._query.spec.handler
        assert isinstance(handler, ThreadNotingQueryHandler)
        assert (handler.threads == [threading.current_thread()]) is follow
    finally:
        _close(loop)
