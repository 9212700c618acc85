"""Creating and checking topics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource, NewTopic, ResourceType

from streams.exceptions import BrokerError, UnknownFlowError
from streams.kafka.settings import KafkaSettings
from streams.wire.topics import RECORD_OVERHEAD_BYTES, FlowTopics, TopicRole, TopicSettings, TopicShape

__all__ = ["ensure_topics", "delete_topics", "check_broker", "require_flow", "describe_topics", "TopicDescription",
           "topic_warnings", "SHOWN_CONFIGS", "START_HINT", "max_message_bytes", "cluster_id"]

SHOWN_CONFIGS = ("cleanup.policy", "retention.ms", "min.insync.replicas", "max.message.bytes",
                 "unclean.leader.election.enable")
"""The topic configs ``status`` shows and checks."""

logger = logging.getLogger(__name__)

START_HINT = "start it with streamsearch run FLOW.yml"
"""What an error about a flow missing on the broker ends with: only ``run`` creates its topics."""


def _admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.base())


def cluster_id(settings: KafkaSettings, timeout: float = 5.0) -> str | None:
    """The cluster's id (DescribeCluster, KIP-700: one small request, no topic metadata); None when the
    broker does not answer within ``timeout`` or does not know the request (Kafka before 2.8)."""
    admin = _admin(settings)  # held until the answer: a client destroyed meanwhile fails its futures
    try:
        return admin.describe_cluster(request_timeout=timeout).result(timeout=timeout + 1).cluster_id
    except Exception as exc:  # KafkaException, a timeout, an unsupported request: the caller has a default
        logger.debug("no cluster id", extra={"bootstrap": settings.bootstrap_servers, "error": str(exc)})
        return None


def check_broker(settings: KafkaSettings, timeout: float = 10.0) -> None:
    """Fail fast with the address when the broker cannot be reached.

    :raises BrokerError: if no metadata arrives within ``timeout``.
    """
    _cluster_metadata(_admin(settings), settings, timeout)


def _cluster_metadata(admin: AdminClient, settings: KafkaSettings, timeout: float) -> ClusterMetadata:
    """The cluster's brokers and topics, asked once of ``admin``: the check that the broker answers is that
    answer (a second client for the check cost a connection and a metadata round trip, ~55 ms here, at every
    client's first call and every ``ensure_topics``).

    :raises BrokerError: if no metadata arrives within ``timeout``, or no broker is configured.
    """
    if not settings.bootstrap_servers:
        raise BrokerError("no broker configured: set KAFKA_BOOTSTRAP_SERVERS")
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc.args[0]}") from exc


def require_flow(settings: KafkaSettings, topics: FlowTopics, *roles: TopicRole, timeout: float = 10.0) -> dict[str, int]:
    """Check that a flow exists on the broker: its ingest topic and the topics of ``roles``
    (``DEAD_LETTER``, ``QUERY``, ... of ``topics.version``). Only ``run`` creates them.

    :returns: every topic on the broker and its partition count.
    :raises UnknownFlowError: naming the broker and the first missing topic.
    :raises BrokerError: if the broker is unreachable.
    """
    found = _cluster_metadata(_admin(settings), settings, timeout).topics
    existing = {name: len(meta.partitions) for name, meta in found.items() if not meta.error}
    where = settings.bootstrap_servers
    if topics.ingest not in existing:
        raise UnknownFlowError(f"no flow {topics.flow!r} on {where} (no topic {topics.ingest}); {START_HINT}")
    for role in roles:
        name = topics.name(role)
        if name not in existing:
            raise UnknownFlowError(f"flow {topics.flow!r} has no version {topics.version} on {where} (no topic {name}); "
                              f"{START_HINT}")
    return existing


def ensure_topics(settings: KafkaSettings, shapes: Sequence[TopicShape], timeout: float = 30.0, *,
                  topic_settings: TopicSettings | None = None, max_payload_bytes: int | None = None) -> None:
    """Create missing topics, replicated and configured for production, and wait until their
    metadata is visible. Existing topics are not altered.

    Replication: ``topic_settings`` (see :class:`TopicSettings`), one warning line when the cluster
    has fewer than 3 brokers. ``max.message.bytes`` is ``max_payload_bytes`` plus
    :data:`RECORD_OVERHEAD_BYTES` (Kafka's own default is about 1 MB), unless the flow sets it.

    :raises BrokerError: if a topic exists with another partition count (partition counts are
        fixed at creation: co-partitioning depends on them), the replication factor asked for
        exceeds the brokers, or creation fails.
    """
    admin = _admin(settings)
    metadata = _cluster_metadata(admin, settings, 10.0)
    existing = metadata.topics
    topic_settings = topic_settings or TopicSettings()
    brokers = len(metadata.brokers)
    for shape in shapes:
        if shape.name in existing and len(existing[shape.name].partitions) != shape.partitions:
            raise BrokerError(
                f"topic {shape.name} has {len(existing[shape.name].partitions)} partitions, "
                f"the flow needs {shape.partitions}: delete it or keep the old shard count"
            )
    missing = [s for s in shapes if s.name not in existing]
    if missing:
        replication = topic_settings.replication_for(brokers)
        if replication > brokers:
            raise BrokerError(f"topics: replication_factor {replication} but the cluster at "
                              f"{settings.bootstrap_servers} has {brokers} broker(s)")
        # Said for a flow's topics (they have a role); a client's reply topic is gone with the client.
        if topic_settings.replication_factor is None and brokers < 3 and any(s.role for s in missing):
            logger.warning(f"the cluster has {brokers} broker(s): topics get replication factor {replication} "
                           "(3 on a production cluster; set topics.replication_factor to choose)")
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, replication,
                      config=_topic_config(s, topic_settings, replication, max_payload_bytes)) for s in missing],
            operation_timeout=timeout, request_timeout=timeout + 5,  # the operation's wait included
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout + 6)
                logger.info("topic created", extra={"topic": name})
            except TimeoutError as exc:
                raise BrokerError(f"cannot create topic {name}: no answer from {settings.bootstrap_servers} "
                                  f"within {timeout + 5:g}s") from exc
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {name}: {exc.args[0]}") from exc
    _wait_visible(settings, admin, [s.name for s in shapes], timeout)


def _topic_config(shape: TopicShape, topic_settings: TopicSettings, replication: int,
                  max_payload_bytes: int | None) -> dict[str, str]:
    config = {"min.insync.replicas": str(topic_settings.min_insync_for(replication)),
              "unclean.leader.election.enable": "false", **dict(shape.config)}
    if max_payload_bytes is not None:
        config["max.message.bytes"] = str(max_payload_bytes + RECORD_OVERHEAD_BYTES)
    config.update(topic_settings.config.get(shape.role, {}))
    return config


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """A topic as the cluster has it: partitions, replication, ISR and the configs that matter."""

    name: str
    partitions: int
    replication_factor: int
    under_replicated: int
    """Partitions whose in-sync replicas are fewer than their replicas."""
    config: dict[str, str]


def describe_topics(settings: KafkaSettings, names: Sequence[str], timeout: float = 10.0) -> list[TopicDescription]:
    """Partitions, replication and :data:`SHOWN_CONFIGS` of existing topics (missing ones left out).

    A broker that does not answer DescribeConfigs (the memory-only one) gives empty configs.
    """
    admin = _admin(settings)
    topics = admin.list_topics(timeout=timeout).topics
    present = [n for n in names if n in topics and not topics[n].error]
    configs: dict[str, dict[str, str]] = {n: {} for n in present}
    if present:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in present],
                                         request_timeout=timeout)
        for resource, future in futures.items():
            try:
                entries = future.result(timeout=timeout + 5)
            except (KafkaException, TimeoutError) as exc:
                logger.debug("describe configs failed", extra={"topic": resource.name, "error": str(exc)})
                continue
            configs[resource.name] = {k: entries[k].value for k in SHOWN_CONFIGS if k in entries and entries[k].value is not None}
    described = []
    for name in present:
        parts = topics[name].partitions.values()
        described.append(TopicDescription(
            name, len(parts), max((len(p.replicas) for p in parts), default=0),
            sum(1 for p in parts if len(p.isrs) < len(p.replicas)), configs[name]))
    return described


def max_message_bytes(settings: KafkaSettings, topic: str, timeout: float = 10.0) -> int | None:
    """The largest record batch ``topic`` takes (its ``max.message.bytes``, the broker's default when
    the topic sets none); None when the broker does not say (the memory-only one)."""
    admin = _admin(settings)  # keep a reference: the futures never resolve if the client is collected
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=timeout)
    try:
        entries = next(iter(futures.values())).result(timeout=timeout + 5)
    except (KafkaException, TimeoutError) as exc:
        logger.debug("describe configs failed", extra={"topic": topic, "error": str(exc)})
        return None
    entry = entries.get("max.message.bytes")
    return int(entry.value) if entry is not None and entry.value and entry.value.isdigit() else None


def topic_warnings(described: Sequence[TopicDescription], brokers: int) -> list[str]:
    """What is unsafe for production in these topics, one line each."""
    warnings = []
    for topic in described:
        if brokers > 1 and topic.replication_factor == 1:
            warnings.append(f"{topic.name}: replication factor 1 on a {brokers}-broker cluster (a broker loss loses data)")
        if topic.config.get("unclean.leader.election.enable") == "true":
            warnings.append(f"{topic.name}: unclean.leader.election.enable=true (a failover can lose acknowledged records)")
        isr = topic.config.get("min.insync.replicas")
        if isr and topic.replication_factor >= 3 and int(isr) < 2:
            warnings.append(f"{topic.name}: min.insync.replicas={isr} with replication factor {topic.replication_factor} "
                            "(acks=all then survives on a single copy)")
        if topic.under_replicated:
            warnings.append(f"{topic.name}: {topic.under_replicated} partition(s) under-replicated")
    return warnings


def _wait_visible(settings: KafkaSettings, admin: AdminClient, names: Sequence[str], timeout: float) -> None:
    """Wait until every broker lists ``names``. Each broker applies new topics from the cluster's
    metadata log a moment after the controller created them (0.1 s and more on a loaded cluster);
    a client that asks a lagging broker meanwhile is told they do not exist."""
    deadline = time.monotonic() + timeout
    brokers = {b.id: f"{b.host}:{b.port}" for b in admin.list_topics(timeout=10).brokers.values()}
    confirmed: set[int] = set()
    while True:
        for broker in set(brokers) - confirmed:
            if len(brokers) == 1:
                asked = admin
            else:  # a client that knows only this broker asks it, most of the time: the answer says who answered
                asked = AdminClient({**settings.base(), "bootstrap.servers": brokers[broker]})
            try:
                metadata = asked.list_topics(timeout=10 if len(brokers) == 1 else 2)
            except KafkaException:
                if len(brokers) == 1:
                    raise
                confirmed.add(broker)  # a broker that died and is not fenced yet answers nobody
                continue
            if all(name in metadata.topics and not metadata.topics[name].error for name in names):
                confirmed.add(metadata.orig_broker_id if metadata.orig_broker_id in brokers else broker)
        if confirmed >= set(brokers):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics {list(names)} not visible on brokers {sorted(set(brokers) - confirmed)} "
                              f"after {timeout}s")
        time.sleep(0.05)


def delete_topics(settings: KafkaSettings, names: Sequence[str]) -> None:
    """Delete topics, ignoring those already gone (used for per-client reply topics)."""
    if not names:
        return
    admin = _admin(settings)  # keep a reference: the futures fail if the client is collected
    for name, future in admin.delete_topics(list(names), operation_timeout=10, request_timeout=15).items():
        try:
            future.result(timeout=16)
        except TimeoutError:
            logger.warning("topic not deleted", extra={"topic": name, "error": "no answer within 15s"})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                logger.warning("topic not deleted", extra={"topic": name, "error": str(exc)})
