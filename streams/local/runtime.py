"""Everything a one-command run needs: broker (embedded unless configured), topics, stages."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import TracebackType

from streams.admin import ensure_topics
from streams.local.brokers import BrokerKind, LocalBroker, start_local_broker
from streams.client import Client
from streams.exceptions import BrokerError
from streams.flow import FlowSpec, with_state_dir
from streams.kafka import KafkaSettings
from streams.local.supervisor import LocalFlow
from streams.versions import claim_serving

__all__ = ["LocalRuntime", "BOOTSTRAP_FILE"]

logger = logging.getLogger(__name__)

BOOTSTRAP_FILE = Path(".streamsearch") / "bootstrap"
"""Where ``streamsearch run`` leaves the embedded broker's address for ``index`` and ``search``."""


class LocalRuntime:
    """Starts a local broker when KAFKA_BOOTSTRAP_SERVERS is unset (``broker``: Apache Kafka with
    its data under the state dir, Tansu, or ``auto``), creates the flow's topics and runs its
    stages as supervised local processes."""

    def __init__(self, flow: FlowSpec, *, flow_path: Path, state_dir: Path | None = None,
                 stages: list[str] | None = None, replicas: dict[str, int] | None = None,
                 broker: BrokerKind | str = BrokerKind.AUTO) -> None:
        self.flow = with_state_dir(flow, state_dir) if state_dir else flow
        self.flow_path = flow_path
        self._stages = stages
        self._replicas = replicas
        self._broker_kind = BrokerKind(broker)
        self.broker: LocalBroker | None = None
        self.broker_kind: BrokerKind | None = None
        self.local_flow: LocalFlow | None = None
        self.settings: KafkaSettings | None = None

    def start(self) -> "LocalRuntime":
        settings = KafkaSettings.from_env(self.flow.kafka)
        if not settings.bootstrap_servers:
            self.broker_kind, self.broker = start_local_broker(self._broker_kind, self.flow.state_dir / "kafka")
            logger.info("local broker started", extra={"broker": self.broker_kind.value,
                                                       "bootstrap": self.broker.bootstrap_servers})
            settings = KafkaSettings(self.broker.bootstrap_servers, settings.extra)
            BOOTSTRAP_FILE.parent.mkdir(parents=True, exist_ok=True)
            BOOTSTRAP_FILE.write_text(self.broker.bootstrap_servers)
        self.settings = settings
        ensure_topics(settings, self.flow.topics.shapes(), topic_settings=self.flow.topic_settings,
                      max_payload_bytes=self.flow.max_payload_bytes)
        claim_serving(settings, self.flow.topics)
        self.local_flow = LocalFlow(
            self.flow, flow_path=self.flow_path, bootstrap_servers=settings.bootstrap_servers,
            log_dir=self.flow.state_dir / "logs", stages=self._stages, replicas=self._replicas,
        ).start()
        return self

    def client(self, **kwargs: object) -> Client:
        assert self.settings is not None, "start() first"
        return Client(self.flow.name, settings=self.settings, max_payload_bytes=self.flow.max_payload_bytes,
                      **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, client: Client, timeout: float = 120.0) -> None:
        """Wait until a search is answered by every shard (all stages are up and assigned).

        :raises BrokerError: if that does not happen within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = client.search("ready?", timeout_s=3)
            except Exception as exc:  # stages still starting: the request may expire unanswered
                logger.debug("not ready yet", extra={"error": str(exc)})
                continue
            if not reply.partial:
                return
        raise BrokerError(f"flow {self.flow.name!r} not ready after {timeout:.0f}s; see {self.flow.state_dir / 'logs'}")

    def stop(self) -> None:
        if self.local_flow is not None:
            self.local_flow.stop()
        if self.broker is not None:
            self.broker.stop()
            if BOOTSTRAP_FILE.exists() and BOOTSTRAP_FILE.read_text() == self.broker.bootstrap_servers:
                BOOTSTRAP_FILE.unlink()

    def __enter__(self) -> "LocalRuntime":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def discover_bootstrap() -> str:
    """KAFKA_BOOTSTRAP_SERVERS, else the address a local ``streamsearch run`` left behind."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        return configured
    if BOOTSTRAP_FILE.exists():
        return BOOTSTRAP_FILE.read_text().strip()
    raise BrokerError("no broker: set KAFKA_BOOTSTRAP_SERVERS or start a flow with `streamsearch run FLOW.yml`")
