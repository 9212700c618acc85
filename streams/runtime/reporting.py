"""What a running stage tells its operators, every few seconds: status records, lag gauges, and
whether its consumers are still in their groups."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Protocol

from confluent_kafka import Consumer, KafkaException

from streams.exceptions import GroupMembershipLost
from streams.kafka.producer import StageProducer
from streams.runtime.metrics import CONSUMER_LAG
from streams.runtime.spec import PathSpec, StageSpec
from streams.wire.codec import STAGE_STATUS
from streams.wire.records import ShardStatus, StageStatus

__all__ = ["MEMBER", "MembershipWatch", "StatusReport", "report_lag"]

logger = logging.getLogger(__name__)

MEMBER = f"{socket.gethostname()}:{os.getpid()}"
"""This process, in status reports."""


class Watched(Protocol):
    """A path as reporting sees it: its spec and its consumer."""

    spec: PathSpec
    consumer: Consumer


class StatusReport:
    """What this process does, for ``streamsearch status``: members, throughput, shards."""

    def __init__(self, spec: StageSpec, producer: StageProducer) -> None:
        """:param producer: for status reports only: one waiting for a broker failover holds no path's flush."""
        self._spec = spec
        self._producer = producer
        self._processed = 0
        self._at = time.monotonic()

    def publish(self, processed: int, dead_letters: int, index: Watched | None) -> None:
        if self._spec.status_topic is None:
            return
        now = time.monotonic()
        rate = (processed - self._processed) / max(now - self._at, 1e-3)
        self._processed, self._at = processed, now
        state = self._spec.index_path.partition_aware if self._spec.index_path else None
        report = StageStatus(
            stage=self._spec.name, member=MEMBER, ts_ms=int(time.time() * 1000),
            processed=processed, rate=rate, dead_letters=dead_letters,
            partitions=sorted(tp.partition for tp in index.consumer.assignment()) if index else [],
            shards=[ShardStatus(**s) for s in state.shard_status()] if state is not None else [],
        )
        value, headers = STAGE_STATUS.encode_record(report)
        self._producer.produce(self._spec.status_topic, value=value, key=f"{self._spec.name}/{MEMBER}",
                               headers=headers, best_effort=True)  # the next report replaces a lost one


def report_lag(spec: StageSpec, paths: Sequence[Watched]) -> None:
    """Lag from the high watermark seen in fetch responses: the embedded broker's
    ListOffsets answer is wrong, the fetch response's is right (and Kafka's are both)."""
    for path in paths:
        try:
            for tp in path.consumer.position(path.consumer.assignment()):
                _, high = path.consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    CONSUMER_LAG.labels(spec.flow, spec.name, tp.topic, str(tp.partition)).set(
                        max(0, high - tp.offset))
        except KafkaException as exc:
            logger.debug("lag not available", extra={"error": str(exc)})


class MembershipWatch:
    """Exit (the supervisor restarts the stage) when a consumer that had partitions has had none
    for ``orphaned_after_s``. Seen on Apache Kafka: a consumer whose group session timed
    out while its coordinator restarted never rejoined, and the stage sat idle for good. A
    replica that never had partitions (more replicas than partitions) is left alone."""

    def __init__(self, orphaned_after_s: float) -> None:
        self._orphaned_after_s = orphaned_after_s
        self._had_partitions: set[str] = set()
        self._empty_since: dict[str, float] = {}

    def check(self, paths: Sequence[Watched]) -> None:
        """:raises GroupMembershipLost: naming the topic and how long it has been without partitions."""
        now = time.monotonic()
        for path in paths:
            if path.spec.follow_index_path:
                continue
            group = path.spec.group_id
            if path.consumer.assignment():
                self._had_partitions.add(group)
                self._empty_since.pop(group, None)
            elif group in self._had_partitions:
                since = self._empty_since.setdefault(group, now)
                if now - since > self._orphaned_after_s:
                    raise GroupMembershipLost(
                        f"the consumer of {path.spec.topic} (group {path.spec.group_id}) has had no partitions for "
                        f"{now - since:.0f}s after it had some: restarting the stage to rejoin")
