"""One input path of a running stage, and what runs its records."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import Consumer

from streams.kafka.producer import StageProducer
from streams.runtime.checkpoint import Checkpoint, TransactionalCheckpoint
from streams.runtime.failures import Failures
from streams.runtime.inflight import InFlightLog
from streams.runtime.keepalive import KeepAlive
from streams.runtime.restore import RestoreHooks
from streams.runtime.spec import Inbound, PathSpec

__all__ = ["InputPath"]


class InputPath:
    """A path's consumer and producer, the checkpoint that commits them and the crash-loop breaker's
    notes; the loop adds what runs its records (``failures``, and what its handler declares it needs)."""

    failures: Failures
    """Set by the loop once the path is made: what fails is produced with the path's producer."""

    def __init__(self, spec: PathSpec, consumer: Consumer, producer: StageProducer,
                 checkpoint: Checkpoint | None = None, inflight: InFlightLog | None = None) -> None:
        self.spec = spec
        self.consumer = consumer
        self.producer = producer
        self.checkpoint = checkpoint or Checkpoint(consumer, producer)
        self.inflight = inflight
        self.processed = 0
        self.keepalive: KeepAlive | None = None
        """Runs a stateless handler's batch while the path's thread keeps its consumer in the group."""
        self.restore: RestoreHooks | None = None
        """Tells a restoring handler what the consumer sees."""
        self.mirrored: set[int] | None = None
        """A path that follows the index path (``PathSpec.follow_index_path``): the partitions the index path's
        rebalances assigned it (``Rebalance``), None for any other path. Read instead of ``consumer.assignment()``,
        a round trip to librdkafka's main thread: 0.3 ms of each query batch on a loaded host (py-spy, a shard's
        ``_gather``, ``benchmarks/query_hops.py``)."""

    def assignment(self) -> set[tuple[str, int]]:
        """(topic, partition) of what this path's consumer is assigned: ``mirrored`` where the loop keeps it,
        else librdkafka's."""
        if self.mirrored is not None:
            return {(self.spec.topic, partition) for partition in self.mirrored}
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    @property
    def transactional(self) -> bool:
        return isinstance(self.checkpoint, TransactionalCheckpoint)

    def lettered(self, killers: Sequence[Inbound]) -> None:
        """Records that killed the stage were dead-lettered: delivered before the rest of the batch runs,
        and noted, so that a later crash does not send them twice."""
        self.producer.flush()
        assert self.inflight is not None
        self.inflight.lettered(killers)
