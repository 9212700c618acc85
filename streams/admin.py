"""Creating and checking topics."""

from __future__ import annotations

import logging
import time
from typing import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.exceptions import BrokerError
from streams.kafka import KafkaSettings
from streams.topics import TopicShape

__all__ = ["ensure_topics", "delete_topics", "check_broker"]

logger = logging.getLogger(__name__)


def _admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.base())


def check_broker(settings: KafkaSettings, timeout: float = 10.0) -> None:
    """Fail fast with the address when the broker cannot be reached.

    :raises BrokerError: if no metadata arrives within ``timeout``.
    """
    if not settings.bootstrap_servers:
        raise BrokerError("no broker configured: set KAFKA_BOOTSTRAP_SERVERS")
    try:
        _admin(settings).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc.args[0]}") from exc


def ensure_topics(settings: KafkaSettings, shapes: Sequence[TopicShape], timeout: float = 30.0) -> None:
    """Create missing topics and wait until their metadata is visible.

    :raises BrokerError: if a topic exists with another partition count (partition counts are
        fixed at creation: co-partitioning depends on them) or creation fails.
    """
    admin = _admin(settings)
    check_broker(settings)
    existing = admin.list_topics(timeout=10).topics
    for shape in shapes:
        if shape.name in existing and len(existing[shape.name].partitions) != shape.partitions:
            raise BrokerError(
                f"topic {shape.name} has {len(existing[shape.name].partitions)} partitions, "
                f"the flow needs {shape.partitions}: delete it or keep the old shard count"
            )
    missing = [s for s in shapes if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, 1, config=dict(s.config)) for s in missing], operation_timeout=timeout
        )
        for name, future in futures.items():
            try:
                future.result()
                logger.info("topic created", extra={"topic": name})
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {name}: {exc.args[0]}") from exc
    _wait_visible(admin, [s.name for s in shapes], timeout)


def _wait_visible(admin: AdminClient, names: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=10).topics
        if all(name in topics and not topics[name].error for name in names):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics not visible after {timeout}s: {[n for n in names if n not in topics]}")
        time.sleep(0.05)


def delete_topics(settings: KafkaSettings, names: Sequence[str]) -> None:
    """Delete topics, ignoring those already gone (used for per-client reply topics)."""
    if not names:
        return
    admin = _admin(settings)  # keep a reference: the futures fail if the client is collected
    for name, future in admin.delete_topics(list(names), operation_timeout=10).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                logger.warning("topic not deleted", extra={"topic": name, "error": str(exc)})
