"""One input path of a running stage, and what runs its records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
        self.assigned: set[int] | None = None
        """The partitions of ``spec.topic`` this path's consumer holds, kept by the rebalance callbacks that assign
        them (``Rebalance``: the index path, and a path that follows it); None where librdkafka alone knows. Read
        instead of ``consumer.assignment()``, a round trip to librdkafka's main thread, which a busy consumer
        answers late: 0.3 ms of each query batch's gather, and 3 % of an index stage's main thread applying a
        bulk insert (py-spy, ``benchmarks/query_hops.py``: the restore watch asked every 0.1 s)."""

    def keep_assignment(self) -> None:
        """From now on the loop's rebalance callbacks tell this path what they assign (:meth:`took`,
        :meth:`gave_up`); a path of several topics is left to librdkafka."""
        if not self.spec.also_reads:
            self.assigned = set()

    def took(self, partitions: Iterable[int]) -> None:
        if self.assigned is not None:
            self.assigned |= set(partitions)

    def gave_up(self, partitions: Iterable[int]) -> None:
        if self.assigned is not None:
            self.assigned -= set(partitions)

    def assignment(self) -> set[tuple[str, int]]:
        """(topic, partition) of what this path's consumer is assigned: ``assigned`` where the loop keeps it,
        else librdkafka's."""
        if self.assigned is not None:
            return {(self.spec.topic, partition) for partition in self.assigned}
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
