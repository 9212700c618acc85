"""The shard of a flow without a model reads ingest itself: it checks what the encode stage would have
(the record's partition, and each vector's width, type and values) before anything is applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from processors.document import Document
from processors.exceptions import BadDocumentError, DimensionMismatchError
from processors.index import store_flush
from processors.index.config import CompoundIndexerConfig
from streams.exceptions import InvalidRecordError
from streams.runtime.spec import Inbound
from streams.stages.shard import ingest as shard_ingest
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.states import ShardStates
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT
from streams.wire.partitioner import partition_of
from streams.wire.topics import FlowTopics

DIM = 8
TOPICS = FlowTopics("given", 2)


@pytest.fixture
def ingest(tmp_path: Path) -> Iterator[ShardIngest]:
    states = ShardStates(root=tmp_path, flow=TOPICS.flow, config=CompoundIndexerConfig(dim=DIM))
    handler = ShardIngest(states=states, topics=TOPICS, source=TOPICS.ingest, given_dim=DIM)
    handler.assigned([0, 1])
    yield handler
    handler.close()


def record(doc: Document, partition: int | None = None, offset: int = 0) -> Inbound:
    key = doc.id.encode()
    value, headers = DOCUMENT.encode_record(doc)
    return Inbound(TOPICS.ingest, partition_of(key, 2) if partition is None else partition, offset, key, value,
                   dict(headers))


def test_a_document_with_its_vector_is_applied_with_its_ingest_offset(ingest: ShardIngest) -> None:
    doc = Document(id="a", text="alpha", embedding=np.ones(DIM, np.float32))
    part = partition_of(b"a", 2)
    assert ingest.process([record(doc, offset=41)]) == []
    index = ingest._states.get(part)  # noqa: SLF001 - the shard the record's partition feeds
    assert index is not None and index.vector_count == 1 and index.get("a").text == "alpha"
    assert ingest._states.checkpoint(part).ingest_offset == 41  # noqa: SLF001 - read-your-writes counts it


@pytest.mark.parametrize("doc, error, message", [
    (Document(id="wide", embedding=np.ones(DIM + 2, np.float32)), DimensionMismatchError, r"shape \(10,\); .* 8-d"),
    (Document(id="text", text="only a text"), BadDocumentError, "no stages.encode"),
    (Document(id="chunk", chunks=[Document(id="c", embedding=np.ones(3, np.float32))]), DimensionMismatchError,
     "node 'c'"),
])
def test_a_document_whose_vectors_do_not_fit_is_refused(ingest: ShardIngest, doc: Document,
                                                         error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ingest.process([record(doc)])


def test_a_record_on_the_wrong_partition_is_refused_naming_the_partitioner(ingest: ShardIngest) -> None:
    doc = Document(id="a", embedding=np.ones(DIM, np.float32))
    wrong = 1 - partition_of(b"a", 2)
    with pytest.raises(InvalidRecordError, match="murmur2"):
        ingest.process([record(doc, partition=wrong)])


def test_a_tombstone_and_a_watermark_pass_unchecked(ingest: ShardIngest) -> None:
    part = partition_of(b"a", 2)
    ingest.process([record(Document(id="a", embedding=np.ones(DIM, np.float32)), offset=1)])
    tombstone = Inbound(TOPICS.ingest, part, 2, b"a", None, {})
    marker = Inbound(TOPICS.ingest, part, 3, h.WATERMARK_KEY, None, {h.KIND: h.WATERMARK})
    ingest.process([tombstone, marker])
    assert ingest._states.get(part).vector_count == 0  # noqa: SLF001


def test_a_dead_lettered_record_counted_as_applied_is_flushed_at_the_next_tick_an_ordinary_write_later(
        ingest: ShardIngest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard writes without RocksDB's log: an ordinary write reaches the disk within ``FLUSH_INTERVAL_S``, a
    dead-lettered record's count as applied within ``DEAD_LETTERED_FLUSH_S`` (a crash would letter it again)."""
    monkeypatch.setattr(store_flush, "FLUSH_INTERVAL_S", 3600.0)
    monkeypatch.setattr(shard_ingest, "DEAD_LETTERED_FLUSH_S", 0.0)
    good = Document(id="a", embedding=np.ones(DIM, np.float32))
    bad = Document(id="b", text="only a text")
    index = {doc.id: ingest._states.get(partition_of(doc.id.encode(), 2)) for doc in (good, bad)}  # noqa: SLF001
    ingest.process([record(good, offset=3)])
    ingest.tick()
    assert index["a"] is not None and not index["a"].flush_if_due(interval_s=3600.0)  # still only in memory
    ingest.on_failure(record(bad, offset=4), BadDocumentError("no stages.encode"))
    assert index["b"] is not None and not index["b"].flush_if_due(interval_s=3600.0)
    ingest.tick()
    assert index["b"].flush_if_due(interval_s=3600.0)  # nothing left unflushed
