"""``streamsearch status``: what each stage and shard of a running flow is doing.

Lag is computed here, from the groups' committed offsets and the high watermark of fetch
responses (the embedded broker's ListOffsets is wrong), so a stopped stage shows its true
lag. Members, throughput and shard contents come from the reports stage processes publish
on ``<flow>.status``; a report older than ``STALE_AFTER_S`` is a process that is gone.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.admin import TopicDescription, describe_topics, topic_warnings
from streams.flow import FlowSpec
from streams.kafka import KafkaSettings, consume_batch, fetch_high_watermarks, make_consumer
from streams.serde import STAGE_STATUS
from streams.versions import read_serving

__all__ = ["PartitionLag", "StageState", "FlowStatus", "collect_status", "STALE_AFTER_S"]

STALE_AFTER_S = 15.0


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int
    high_watermark: int
    lag: int


@dataclass(slots=True)
class StageState:
    stage: str
    group: str
    members: int
    throughput: float
    lag: list[PartitionLag] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.lag)


@dataclass(slots=True)
class FlowStatus:
    flow: str
    stages: list[StageState]
    shards: list[dict[str, Any]]
    dead_letters: int
    version: int = 1
    serving_version: int = 1
    """The version ``<flow>.versions`` names: queries go there, whichever version this status is of."""
    brokers: int = 0
    topics: list[TopicDescription] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Unsafe topic settings for production (replication 1 on a cluster, unclean leader election)."""


def collect_status(settings: KafkaSettings, flow: FlowSpec, *, timeout: float = 15.0) -> FlowStatus:
    """Read groups, offsets, watermarks and the latest live reports of every stage."""
    topics = flow.topics
    inputs = {s.name: (flow.input_topic(s.name) if s.name != "join" else topics.partials) for s in flow.stages}
    partitions = {topic: topics.partitions for topic in inputs.values()} | {topics.dead_letter: 1}
    highs = fetch_high_watermarks(settings, partitions, timeout)
    admin = AdminClient(settings.base())
    reports = _live_reports(settings, topics.status, highs_timeout=timeout)
    stages = []
    for stage in flow.stages:
        group = topics.group(stage.name)
        topic = inputs[stage.name]
        committed = _committed(admin, group, topic, topics.partitions)
        lag = [PartitionLag(topic, p, committed[p], highs[(topic, p)], max(0, highs[(topic, p)] - max(committed[p], 0)))
               for p in range(topics.partitions)]
        mine = [r for r in reports if r["stage"] == stage.name]
        # The embedded broker describes its groups with no members: live reports count them too.
        members = max(_members(admin, group), len({r["member"] for r in mine}))
        stages.append(StageState(stage.name, group, members, sum(r["rate"] for r in mine), lag, mine))
    shards = sorted((dict(s, owner=r["member"]) for r in reports if r["stage"] == "index" for s in r["shards"]),
                    key=lambda s: s["partition"])
    serving = read_serving(settings, flow.name, timeout=timeout)
    brokers = len(admin.list_topics(timeout=timeout).brokers)
    described = describe_topics(settings, [shape.name for shape in topics.shapes()], timeout=timeout)
    return FlowStatus(flow.name, stages, shards, highs[(topics.dead_letter, 0)], flow.version,
                      serving.version if serving else 1, brokers, described, topic_warnings(described, brokers))


def _committed(admin: AdminClient, group: str, topic: str, count: int) -> dict[int, int]:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(count)])
    result = admin.list_consumer_group_offsets([request])[group].result()
    found = {tp.partition: tp.offset for tp in result.topic_partitions}
    return {p: found.get(p, -1) for p in range(count)}


def _members(admin: AdminClient, group: str) -> int:
    try:
        return len(admin.describe_consumer_groups([group])[group].result().members)
    except Exception:  # an unknown group has no members
        return 0


def _live_reports(settings: KafkaSettings, topic: str, *, highs_timeout: float) -> list[dict[str, Any]]:
    """The latest report of each stage process, if it is recent."""
    high = fetch_high_watermarks(settings, {topic: 1}, highs_timeout)[(topic, 0)]
    consumer = make_consumer(settings, group_id=f"status.{uuid.uuid4().hex[:8]}")
    consumer.assign([TopicPartition(topic, 0, 0)])
    latest: dict[bytes, dict[str, Any]] = {}
    deadline = time.monotonic() + highs_timeout
    try:
        position = 0
        while position < high and time.monotonic() < deadline:
            for msg in consume_batch(consumer, max_records=500, timeout=0.2):
                if msg.error() is None and msg.value() is not None:
                    latest[msg.key()] = STAGE_STATUS.decode(msg.value())
                    position = msg.offset() + 1
    finally:
        consumer.close()
    now_ms = time.time() * 1000
    return [r for r in latest.values() if now_ms - r["ts_ms"] <= STALE_AFTER_S * 1000]
