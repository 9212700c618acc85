"""A shard with the lexical arm publishes its own statistics, absolute, on its partition of
``<flow>.lexical-stats``: the changed ones after each batch, all of them when a partition opens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from processors.document import Document
from processors.index.config import CompoundIndexerConfig
from streams.runtime.spec import Inbound, Output
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.states import ShardStates
from streams.wire.codec import DOCUMENT, LEXICAL_COUNT
from streams.wire.partitioner import partition_of
from streams.wire.records import LexicalCount, parse_lexical_key
from streams.wire.topics import FlowTopics

DIM = 4
TOPICS = FlowTopics("lex", 2)


def shard(root: Path, *, lexical: bool = True) -> ShardIngest:
    states = ShardStates(root=root, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM, lexical=lexical))
    handler = ShardIngest(states=states, topics=TOPICS, source=TOPICS.ingest, given_dim=DIM)
    handler.assigned([0, 1])
    return handler


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[ShardIngest]:
    handler = shard(tmp_path)
    yield handler
    handler.close()


def record(doc: Document | None, doc_id: str, offset: int) -> Inbound:
    key = doc_id.encode()
    value, headers = DOCUMENT.encode_record(doc) if doc is not None else (None, ())
    return Inbound(TOPICS.ingest, partition_of(key, 2), offset, key, value, dict(headers))


def text(doc_id: str, words: str, field_name: str | None = None) -> Document:
    return Document(id=doc_id, text=words, embedding=np.ones(DIM, np.float32), field_name=field_name)


def published(outputs: list[Output]) -> dict[tuple[int, str, str], LexicalCount | None]:
    """(partition, field, term) -> the record (None: a tombstone)."""
    out: dict[tuple[int, str, str], LexicalCount | None] = {}
    for output in outputs:
        assert output.topic == TOPICS.lexical_stats and output.partition is not None
        assert isinstance(output.key, bytes)
        value = None if output.value is None else LEXICAL_COUNT.decode_record(output.value, dict(output.headers))
        out[(output.partition, *parse_lexical_key(output.key))] = value
    return out


def test_a_batch_publishes_the_statistics_it_changed_on_its_partition(ingest: ShardIngest) -> None:
    p = partition_of(b"a", 2)
    first = published(ingest.process([record(text("a", "insulin insulin glucose", "title"), "a", 0)]))
    assert first == {(p, "title", ""): LexicalCount(1, 3), (p, "title", "insulin"): LexicalCount(1),
                     (p, "title", "glucos"): LexicalCount(1)}
    updated = published(ingest.process([record(text("a", "glucose"), "a", 1)]))  # now no field
    assert updated == {(p, "title", ""): None, (p, "title", "insulin"): None, (p, "title", "glucos"): None,
                       (p, "", ""): LexicalCount(1, 1), (p, "", "glucos"): LexicalCount(1)}
    assert published(ingest.process([record(None, "a", 2)])) == {(p, "", ""): None, (p, "", "glucos"): None}


def test_an_opened_partition_publishes_all_it_holds_at_the_next_tick(tmp_path: Path) -> None:
    first = shard(tmp_path)
    first.tick()
    first.process([record(text(doc_id, "sleep memory"), doc_id, i) for i, doc_id in enumerate(("a", "b", "c", "d"))])
    first.close()
    again = shard(tmp_path)
    snapshot = published(again.tick())
    held = {(partition_of(doc_id.encode(), 2)) for doc_id in "abcd"}
    for partition in held:
        units = sum(partition_of(doc_id.encode(), 2) == partition for doc_id in "abcd")
        assert snapshot[(partition, "", "")] == LexicalCount(units, 2 * units)
        assert snapshot[(partition, "", "sleep")] == LexicalCount(units)
    assert again.tick() == []  # once
    again.close()


def test_a_shard_without_the_arm_publishes_nothing(tmp_path: Path) -> None:
    dense = shard(tmp_path, lexical=False)
    assert dense.process([record(text("a", "insulin"), "a", 0)]) == [] and dense.tick() == []
    dense.close()


def test_a_snapshot_makes_readers_forget_what_a_crash_left_in_the_topic(tmp_path: Path) -> None:
    """A crash after the store's write and before the records leaves a count the shard no longer holds
    (here: 'insulin', deleted, its tombstone never sent). The snapshot at the next open is bracketed by
    markers, and a reader of the topic drops the partition's keys the snapshot did not refresh."""
    from processors.index.lexical import Analyzer
    from streams.stages.lexical_table import LexicalTable

    table = LexicalTable(Analyzer().name)
    topic: list[Inbound] = []

    def send(outputs: list[Output]) -> None:  # the topic, in order, and what a reader applies
        records = [Inbound(o.topic, o.partition or 0, len(topic) + i, o.key if isinstance(o.key, bytes) else None,
                           o.value, dict(o.headers)) for i, o in enumerate(outputs)]
        topic.extend(records)
        table.apply(records)

    first = shard(tmp_path)
    send(first.tick())
    send(first.process([record(text("a", "insulin"), "a", 0), record(text("b", "sleep"), "b", 1)]))
    lost = first.process([record(text("a", "memory"), "a", 2)])  # applied in the store, never sent: the crash
    assert {parse_lexical_key(o.key)[1] for o in lost if isinstance(o.key, bytes)} >= {"insulin"}
    first.close()
    assert table.statistics(["insulin"]).fields[""].df["insulin"] == 1  # stale
    again = shard(tmp_path)
    send(again.tick())
    assert table.statistics(["insulin", "memori", "sleep"]).fields[""].df == {"insulin": 0, "memori": 1, "sleep": 1}
    fresh = LexicalTable(Analyzer().name)  # a reader that starts at the beginning of the topic sees the same
    fresh.apply(topic)
    assert fresh.statistics(["insulin", "memori"]).fields[""] == table.statistics(["insulin", "memori"]).fields[""]
    again.close()
