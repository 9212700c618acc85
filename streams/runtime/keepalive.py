"""Running a long batch without leaving the consumer group.

A batch can take longer than ``max.poll.interval.ms`` (a 0.5 MB document of short sentences on 2
cores): the member would be evicted, its commit refused and the batch run again, forever. So a
stateless handler's batch runs in a worker thread while the thread that owns the consumers pauses
them and polls them every ``every_s`` (no records come from paused partitions; the poll serves the
interval, heartbeats and rebalances). A handler that owns partition state (``PartitionAware``) runs
inline instead, and so does one that reads it (a path that ``follow_index_path``, a shard's search): rebalance
callbacks open and close that state, and their batches are bounded anyway.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, TopicPartition

from streams.runtime.spec import Inbound, Output

__all__ = ["KeepAlive"]

logger = logging.getLogger(__name__)


class KeepAlive:
    """One path's worker thread, started on the first batch."""

    def __init__(self, stage: str, every_s: float) -> None:
        self._stage = stage
        self._every_s = every_s
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    def call(self, process: Callable[[Sequence[Inbound]], list[Output]], records: list[Inbound],
             consumers: Sequence[Consumer]) -> list[Output]:
        """``process(records)`` in the worker, keeping ``consumers`` (those the calling thread polls)
        in their groups however long it runs."""
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="process")
        future = self._worker.submit(process, records)
        try:
            return future.result(timeout=self._every_s)
        except concurrent.futures.TimeoutError:
            pass
        for consumer in consumers:
            consumer.pause(consumer.assignment())  # drops what was prefetched: fetched again on resume
        logger.info("long batch: polling paused consumers to stay in the group",
                    extra={"stage": self._stage, "records": len(records)})
        try:
            while True:
                try:
                    return future.result(timeout=self._every_s)
                except concurrent.futures.TimeoutError:
                    for consumer in consumers:
                        _keep_alive(consumer)
        finally:
            for consumer in consumers:
                consumer.resume(consumer.assignment())

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)


def _keep_alive(consumer: Consumer) -> None:
    """Poll a paused consumer; a record from a partition assigned meanwhile (not paused) is put back."""
    msg = consumer.poll(0)
    if msg is None or msg.error() is not None:
        return
    where = TopicPartition(msg.topic(), msg.partition(), msg.offset())
    consumer.pause([where])
    consumer.seek(where)
