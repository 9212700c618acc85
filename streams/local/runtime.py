"""Everything a one-command run needs: broker (embedded unless configured), topics, stages."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from streams.kafka.admin import ensure_topics
from streams.local.bootstrap import BOOTSTRAP_FILE, DirectoryBroker, JoinedBroker
from streams.local.apache_kafka import kafka_available
from streams.local.brokers import BrokerKind, LocalBroker, start_local_broker
from streams.client import Client
from streams.exceptions import BrokerError, StateConfigError
from streams.stages.extras import require_stage_extras
from streams.flow.executors import TEXT
from streams.flow.parse import load_flow
from streams.flow.spec import FlowSpec, with_state_dir
from streams.kafka.settings import KafkaSettings
from streams.local.supervisor import LocalFlow, stage_logs_shown
from streams.ops.versions import claim_serving
from streams.stages.kinds import INDEX

__all__ = ["LocalRuntime", "BOOTSTRAP_FILE", "broker_data_dir", "durable_local_broker"]

logger = logging.getLogger(__name__)


def broker_data_dir(flow_path: Path) -> Path:
    """Where the directory's local Apache Kafka keeps its log: under the ``state_dir`` the flow YAML
    names, never a ``--state-dir`` override. The broker holds the topics every state dir is built
    from: a run with another state dir (say, one a replay filled) must find the same topics, not
    start an empty broker whose offsets would make its shards set their state aside."""
    return load_flow(flow_path).state_dir / "kafka"


@contextlib.contextmanager
def durable_local_broker(flow: FlowSpec, flow_path: Path) -> Iterator[KafkaSettings]:
    """The broker a command on a flow needs while no ``run`` may be up: the configured cluster, the
    directory's running broker, or else its Apache Kafka started again from its log for the
    command's duration (published, so a ``run`` started meanwhile joins it; stopped after).

    :raises BrokerError: when the flow never ran here on a durable broker (no log to start from),
        or the local broker would be the memory-only one, whose topics are gone once it stopped.
    """
    settings = KafkaSettings.from_env(flow.kafka)
    if settings.bootstrap_servers:
        yield settings
        return
    directory = DirectoryBroker()
    joined = directory.claim()
    if joined is not None:
        yield KafkaSettings(joined.bootstrap_servers, settings.extra)
        return
    broker: LocalBroker | None = None
    try:
        data_dir = broker_data_dir(flow_path)
        if not data_dir.is_dir():
            raise BrokerError(f"no broker: nothing runs here and no local broker log is in {data_dir} (flow "
                              f"{flow.name!r} never ran in this directory on Apache Kafka); set "
                              "KAFKA_BOOTSTRAP_SERVERS or start the flow with `streamsearch run FLOW.yml`")
        if not kafka_available():
            raise BrokerError("no broker: the local Apache Kafka cannot start here (Java >= 17 and `make install`'s "
                              "jars); the memory-only broker would hold no topics")
        _, broker = start_local_broker(BrokerKind.KAFKA, data_dir)
        directory.publish(broker.bootstrap_servers)
        logger.info("local broker started from its log", extra={"bootstrap": broker.bootstrap_servers,
                                                               "log_dir": str(data_dir)})
        yield KafkaSettings(broker.bootstrap_servers, settings.extra)
    finally:
        if broker is not None:
            broker.stop()
        directory.release()


class LocalRuntime:
    """Starts a local broker when KAFKA_BOOTSTRAP_SERVERS is unset (``broker``: Apache Kafka with
    its data under the state dir, Tansu, or ``auto``), creates the flow's topics and runs its
    stages as supervised local processes.

    One local broker per working directory: when another ``run`` here has started one, this
    runtime joins it (``joined``) and neither starts, stops nor records a broker.
    """

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
        self.joined: JoinedBroker | None = None
        """The directory's broker another ``run`` started, when this runtime joined it."""
        self._directory: DirectoryBroker | None = None

    def start(self) -> "LocalRuntime":
        """Broker (started or joined), topics, stages; on failure, stop what was started.

        :raises BrokerError: if the broker cannot start or be reached.
        """
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> "LocalRuntime":
        require_stage_extras(self.flow, self._stages)
        self.flow.check_dimensions()
        settings = KafkaSettings.from_env(self.flow.kafka)
        if not settings.bootstrap_servers:
            self._directory = DirectoryBroker()
            self.joined = self._directory.claim()
            if self.joined is not None:
                logger.info("joined the local broker of this directory",
                            extra={"bootstrap": self.joined.bootstrap_servers, "owner_pid": self.joined.owner_pid})
                settings = KafkaSettings(self.joined.bootstrap_servers, settings.extra)
            else:
                self.broker_kind, self.broker = start_local_broker(self._broker_kind, broker_data_dir(self.flow_path))
                logger.info("local broker started", extra={"broker": self.broker_kind.value,
                                                           "bootstrap": self.broker.bootstrap_servers})
                settings = KafkaSettings(self.broker.bootstrap_servers, settings.extra)
                self._directory.publish(self.broker.bootstrap_servers)
        self.settings = settings
        ensure_topics(settings, self.flow.topics.shapes(), topic_settings=self.flow.topic_settings,
                      max_payload_bytes=self.flow.max_payload_bytes)
        claim_serving(settings, self.flow.topics)
        self.local_flow = LocalFlow(
            self.flow, flow_path=self.flow_path, bootstrap_servers=settings.bootstrap_servers,
            stages=self._stages, replicas=self._replicas,
        ).start()
        return self

    def client(self, **kwargs: object) -> Client:
        assert self.settings is not None, "start() first"
        return Client(self.flow.name, settings=self.settings, max_payload_bytes=self.flow.max_payload_bytes,
                      **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, client: Client, timeout: float = 120.0) -> None:
        """Wait until a search is answered by every shard (all stages are up and assigned).

        :raises BrokerError: if that does not happen within ``timeout``.
        :raises StateConfigError: if a stage stopped for good (its state was built with other settings).
        """
        deadline = time.monotonic() + timeout
        # A text model's probe is a text (it is embedded: the encoder has loaded); any other flow's a
        # vector of the index's size, which every encoder passes through unchanged.
        probe: dict[str, Any] = ({"texts": "ready?"} if TEXT in (self.flow.embeds or ()) else
                                 {"vectors": np.zeros((1, self.flow.stage(INDEX.name).config.dim), np.float32)})
        while time.monotonic() < deadline:
            stopped = self.local_flow.stopped if self.local_flow is not None else {}
            if stopped:
                name, reason = next(iter(stopped.items()))
                raise StateConfigError(f"stage {name} stopped: {reason}")
            try:
                reply = client.search(timeout_s=3, **probe)
            except Exception as exc:  # stages still starting: the request may expire unanswered
                logger.debug("not ready yet", extra={"error": str(exc)})
                continue
            if not reply.partial:
                return
        raise BrokerError(f"flow {self.flow.name!r} not ready after {timeout:.0f}s; see {stage_logs_shown(self.flow)}")

    def stop(self) -> None:
        """Stop the stages, then the broker if this runtime started it (and remove its address)."""
        if self.local_flow is not None:
            self.local_flow.stop()
            self.local_flow = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self._directory is not None:
            self._directory.release()
            self._directory = None

    def __enter__(self) -> "LocalRuntime":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

