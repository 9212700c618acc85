"""The loop keeps what its rebalance callbacks assign (``InputPath.assigned``): the index path's partitions and
their mirror on the query path that follows it, read by every query batch's gather and the restore watch instead
of asking librdkafka. A partition that leaves has the query path's commits stop at the search its handler holds."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from confluent_kafka import TopicPartition

from streams.exceptions import DeliveryError
from streams.kafka.admin import ensure_topics
from streams.kafka.consumer import make_consumer
from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from streams.runtime.paths import InputPath
from streams.runtime.rebalance import Rebalance
from streams.runtime.spec import AwaitsWrites, Inbound, PathSpec
from streams.wire.topics import TopicShape
from tests.streams.runtime.handlers import NoOutputs

pytestmark = pytest.mark.kafka


def _path(settings: KafkaSettings, topic: str, *, follow: bool, handler: NoOutputs | None = None) -> InputPath:
    spec = PathSpec(topic, f"mirror-test.{uuid.uuid4().hex[:8]}", handler or NoOutputs(), follow_index_path=follow)
    return InputPath(spec, make_consumer(settings, group_id=spec.group_id), StageProducer(settings))


class Holding(NoOutputs, AwaitsWrites):
    """A query handler holding the searches at ``held`` (as the shard's holds those parked for a write)."""

    def __init__(self, held: dict[tuple[str, int], int]) -> None:
        self.held = held

    @property
    def awaiting_writes(self) -> bool:
        return bool(self.held)

    def answerable(self) -> bool:
        return False

    def would_await(self, records: Sequence[Inbound]) -> bool:
        return False

    def parked_offsets(self) -> dict[tuple[str, int], int]:
        return self.held


def test_the_paths_hold_what_the_index_path_was_assigned_and_released_as_librdkafka_does(kafka_settings: KafkaSettings) -> None:
    index, query = _path(kafka_settings, "m.ingest", follow=False), _path(kafka_settings, "m.search", follow=True)
    rebalance = Rebalance("index")
    rebalance.subscribe(index, query)
    try:
        assert query.assigned == index.assigned == set()
        rebalance._on_assign(index.consumer, [TopicPartition("m.ingest", 0), TopicPartition("m.ingest", 1)])
        assert query.assignment() == {("m.search", 0), ("m.search", 1)}
        assert query.assignment() == {(tp.topic, tp.partition) for tp in query.consumer.assignment()}
        rebalance._on_lost(index.consumer, [TopicPartition("m.ingest", 1)])
        assert query.assignment() == {("m.search", 0)}
        assert query.assignment() == {(tp.topic, tp.partition) for tp in query.consumer.assignment()}
        assert index.assignment() == {("m.ingest", 0)}
        assert index.assignment() == {(tp.topic, tp.partition) for tp in index.consumer.assignment()}
    finally:
        for path in (index, query):
            path.consumer.close()
            path.producer.close()


def test_a_path_of_several_topics_is_left_to_librdkafka(kafka_settings: KafkaSettings) -> None:
    spec = PathSpec("m.partials", f"mirror-test.{uuid.uuid4().hex[:8]}", NoOutputs(), also_reads=("m.query",))
    path = InputPath(spec, make_consumer(kafka_settings, group_id=spec.group_id), StageProducer(kafka_settings))
    try:
        path.keep_assignment()
        path.consumer.assign([TopicPartition("m.partials", 0), TopicPartition("m.query", 0)])
        path.took([0])  # partition numbers alone cannot say which topic
        assert path.assigned is None
        assert path.assignment() == {("m.partials", 0), ("m.query", 0)}
    finally:
        path.consumer.close()
        path.producer.close()


def test_a_revoked_partition_is_committed_at_the_search_held_there_and_a_lost_one_not_at_all(
        kafka_settings: KafkaSettings) -> None:
    """The old owner drops a search held on a partition that leaves it; the new owner starts at the committed
    offset, so that offset must not pass the held search, or nobody ever answers it."""
    name = f"hold-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [TopicShape(f"{name}.ingest", 2), TopicShape(f"{name}.search", 2)])
    search = f"{name}.search"
    index = _path(kafka_settings, f"{name}.ingest", follow=False)
    handler = Holding({(search, 0): 3, (search, 1): 1})
    query = _path(kafka_settings, search, follow=True, handler=handler)
    rebalance = Rebalance("index")
    rebalance.subscribe(index, query)
    try:
        rebalance._on_assign(index.consumer, [TopicPartition(f"{name}.ingest", 0), TopicPartition(f"{name}.ingest", 1)])
        for partition in (0, 1):
            for offset in range(6):
                query.checkpoint.record(search, partition, offset)  # answered but the held one
        rebalance._on_revoke(index.consumer, [TopicPartition(f"{name}.ingest", 0)])  # commits both, at their holds
        del handler.held[(search, 0)]  # dropped when its partition left (``ShardSearch.tick``)
        del handler.held[(search, 1)]  # answered
        query.checkpoint.record(search, 1, 6)
        rebalance._on_lost(index.consumer, [TopicPartition(f"{name}.ingest", 1)])
        query.checkpoint.commit(asynchronous=False)  # the next round's: neither partition is this path's now
        committed = query.consumer.committed([TopicPartition(search, 0), TopicPartition(search, 1)], timeout=30)
        assert [(tp.partition, tp.offset) for tp in committed] == [(0, 3), (1, 1)]
    finally:
        for path in (index, query):
            path.consumer.close()
            path.producer.close()


@pytest.mark.parametrize("failing", ["index", "query"])
def test_partitions_leave_and_are_forgotten_even_when_committing_them_fails(kafka_settings: KafkaSettings,
                                                                           failing: str) -> None:
    """An undelivered output makes a revoke's commit raise (``Rebalance.raise_error`` raises it after the poll): the
    partitions still leave both paths, and neither path commits them later."""
    name = f"fail-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_settings, [TopicShape(f"{name}.ingest", 2), TopicShape(f"{name}.search", 2)])
    search, ingest = f"{name}.search", f"{name}.ingest"
    index = _path(kafka_settings, ingest, follow=False)
    query = _path(kafka_settings, search, follow=True, handler=Holding({(search, 0): 2}))
    rebalance = Rebalance("index")
    rebalance.subscribe(index, query)
    try:
        rebalance._on_assign(index.consumer, [TopicPartition(ingest, 0), TopicPartition(ingest, 1)])
        query.checkpoint.record(search, 0, 4)  # held at 2: stays noted after any commit, until forgotten
        index.checkpoint.record(ingest, 0, 7)
        broken = index if failing == "index" else query
        broken.producer.flush = _undelivered  # type: ignore[method-assign]
        with pytest.raises(DeliveryError):
            rebalance._on_revoke(index.consumer, [TopicPartition(ingest, 0)])
        assert index.assignment() == {(ingest, 1)} and query.assignment() == {(search, 1)}
        assert index.checkpoint.empty and query.checkpoint.empty
    finally:
        for path in (index, query):
            path.consumer.close()
            path.producer.close()


def _undelivered(*args: object, **kwargs: object) -> None:
    raise DeliveryError("delivery failed: an output of the path")
