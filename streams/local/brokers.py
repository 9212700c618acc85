"""Which local broker to start: Apache Kafka (durable, the real semantics) or Tansu (memory-only, no JVM).

One declaration of the choice that ``run --broker``, ``hello-world --broker``, the test session and
the benchmarks share. ``auto`` takes Apache Kafka when Java ≥ 17 and the jars ``make install``
resolves are present, else Tansu.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Protocol

from streams.local.apache_kafka import KAFKA_VERSION, KafkaCluster, kafka_available
from streams.local.tansu import TansuBroker

__all__ = ["BrokerKind", "LocalBroker", "resolve_kind", "start_local_broker"]

logger = logging.getLogger(__name__)


class BrokerKind(str, enum.Enum):
    KAFKA = "kafka"
    TANSU = "tansu"
    AUTO = "auto"

    @property
    def label(self) -> str:
        """How the CLI names the broker it started."""
        return {"kafka": f"Apache Kafka {KAFKA_VERSION}", "tansu": "Tansu, memory-only: nothing survives a stop",
                "auto": "auto"}[self.value]


class LocalBroker(Protocol):
    """What the runtime and the tests need of a broker they started themselves."""

    @property
    def bootstrap_servers(self) -> str: ...

    def stop(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


def resolve_kind(kind: BrokerKind | str) -> BrokerKind:
    """``auto`` → ``kafka`` when it can run here, else ``tansu``; the others unchanged."""
    kind = BrokerKind(kind)
    if kind is BrokerKind.AUTO:
        return BrokerKind.KAFKA if kafka_available() else BrokerKind.TANSU
    return kind


def start_local_broker(kind: BrokerKind | str, data_dir: Path) -> tuple[BrokerKind, LocalBroker]:
    """Start the chosen broker on free loopback ports (Apache Kafka keeps its log under ``data_dir``
    and resumes it on the next start).

    :returns: the kind actually started and the running broker.
    :raises BrokerError: when it cannot start (no jars, no Java, the binary missing).
    """
    chosen = resolve_kind(kind)
    if chosen is BrokerKind.KAFKA:
        return chosen, KafkaCluster(data_dir, size=1).start()
    return chosen, TansuBroker().start()
