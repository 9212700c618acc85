"""Which index version of a flow serves queries: one record on the compacted ``<flow>.versions``.

A reindex builds version N+1 beside the serving version N (its own topics, groups and shard
state; the ingest topic shared) and, once N+1 has caught up, writes this record. Clients and
the HTTP bridge follow it: they send each search to the serving version's query topic, so the
switch needs no restart and no request sees two versions. It is the alias of a search index,
kept in Kafka so that every process sees the same one.
"""

from __future__ import annotations

import time
import uuid
from typing import TypeVar

from confluent_kafka import TopicPartition

from streams.exceptions import BrokerError
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.reader import read_to_end
from streams.kafka.consumer import headers_of
from streams.wire.codec import SERVING_VERSION, VERSION_BUILD, Codec
from streams.wire.records import VersionBuild
from streams.wire.topics import FlowTopics
from streams.client.versions import SERVING_KEY, ServingVersion, serving_of

__all__ = ["SERVING_KEY", "claim_serving", "existing_versions", "publish_build", "publish_serving",
           "read_builds", "read_serving", "serving_of", "switch_serving"]

T = TypeVar("T")


def read_serving(settings: KafkaSettings, flow: str, *, timeout: float = 10.0) -> ServingVersion | None:
    """The latest serving record of a flow, read to the end of ``<flow>.versions``; None if
    the flow never named one.

    :raises BrokerError: if the flow has no ingest topic, or the end of ``<flow>.versions`` is
        not reached within ``timeout``.
    """
    return _read_versions(settings, flow, timeout)[0]


def read_builds(settings: KafkaSettings, flow: str, *, timeout: float = 10.0) -> dict[int, str]:
    """Version -> fingerprint of the executors each reindex built it with."""
    return _read_versions(settings, flow, timeout)[1]


def publish_build(settings: KafkaSettings, flow: str, version: int, fingerprint: str) -> None:
    _publish(settings, flow, f"build/v{version}".encode(), VERSION_BUILD,
             VersionBuild(version, fingerprint, int(time.time() * 1000)))


def _read_versions(settings: KafkaSettings, flow: str, timeout: float) -> tuple[ServingVersion | None, dict[int, str]]:
    topics = FlowTopics(flow, 1)
    existing = _topic_names(settings)
    if topics.ingest not in existing:
        raise BrokerError(f"no flow {flow!r} on {settings.bootstrap_servers} (no topic {topics.ingest})")
    topic = topics.versions
    if topic not in existing:
        return None, {}
    latest: ServingVersion | None = None
    builds: dict[int, str] = {}
    for msg in read_to_end(settings, [TopicPartition(topic, 0, 0)], group_id=f"{flow}.versions.{uuid.uuid4().hex[:8]}",
                           timeout=timeout):
        latest = serving_of(msg) or latest
        if (msg.key() or b"").startswith(b"build/v") and msg.value() is not None:
            build = VERSION_BUILD.decode_record(msg.value(), headers_of(msg))
            builds[build.version] = build.fingerprint
    return latest, builds


def existing_versions(settings: KafkaSettings, flow: str) -> list[int]:
    """The index versions of a flow that exist on the cluster (their query topics), oldest first."""
    names = _topic_names(settings)
    prefix = f"{flow}.v"
    found = {int(n[len(prefix):-len(".query")]) for n in names
             if n.startswith(prefix) and n.endswith(".query") and n[len(prefix):-len(".query")].isdigit()}
    return sorted(found | ({1} if FlowTopics(flow, 1).query in names else set()))


def _topic_names(settings: KafkaSettings) -> set[str]:
    from confluent_kafka.admin import AdminClient

    return set(AdminClient(settings.base()).list_topics(timeout=10).topics)


def publish_serving(settings: KafkaSettings, flow: str, version: int, *, previous: int | None,
                    reason: str) -> ServingVersion:
    """Name the version that serves from now on; followers switch within a poll."""
    serving = ServingVersion(version, int(time.time() * 1000), previous, reason)
    _publish(settings, flow, SERVING_KEY, SERVING_VERSION, serving)
    return serving


def _publish(settings: KafkaSettings, flow: str, key: bytes, codec: Codec[T], record: T) -> None:
    producer = StageProducer(settings)
    try:
        value, headers = codec.encode_record(record)
        producer.produce(FlowTopics(flow, 1).versions, key=key, value=value, headers=headers)
        producer.flush()
    finally:
        producer.close()


def claim_serving(settings: KafkaSettings, topics: FlowTopics) -> ServingVersion:
    """The serving version, after naming one if none is named yet: the oldest version that
    exists (its query topic), so stages of a newer version deployed before its reindex do not
    take over; a flow's first version serves itself."""
    serving = read_serving(settings, topics.flow)
    if serving is not None:
        return serving
    existing = _topic_names(settings)
    oldest = next((v for v in range(1, topics.version) if FlowTopics(topics.flow, 1, v).query in existing),
                  topics.version)
    return publish_serving(settings, topics.flow, oldest, previous=None,
                           reason="first run" if oldest == topics.version else "serving before a newer version ran")


def switch_serving(settings: KafkaSettings, flow: str, version: int) -> ServingVersion:
    """An operator's switch, e.g. back to the previous version after a reindex. The version
    must exist (its query topic); whether its stages still run is the operator's call.

    :raises BrokerError: if the flow has no such version.
    """
    query = FlowTopics(flow, 1, version).query
    if query not in _topic_names(settings):
        raise BrokerError(f"flow {flow!r} has no version {version} (no topic {query})")
    current = read_serving(settings, flow)
    return publish_serving(settings, flow, version, previous=current.version if current else None,
                           reason="switched by an operator")
