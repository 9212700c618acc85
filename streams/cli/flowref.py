"""How a command names a flow (``--flow NAME|FLOW.yml``) and the Kafka settings it runs a command with."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from streams.flow.parse import load_flow
from streams.flow.spec import FlowSpec, with_state_dir
from streams.kafka.settings import QUIET_LIBRDKAFKA, KafkaSettings
from streams.wire.topics import FlowTopics, TopicRole


class CommandFlow:
    """A flow as a command names it: by name (version 1's topics, no spec) or by its YAML (its
    version's topics and librdkafka settings). The YAML is read on first use, inside the command,
    so that a bad one is one line and exit 1 (``one_line_errors``), at the point the command needs it."""

    def __init__(self, value: str) -> None:
        self.value = value
        self._spec: FlowSpec | None = None

    def __str__(self) -> str:
        return self.value

    @property
    def spec(self) -> FlowSpec | None:
        if self._spec is None and self.value.endswith((".yml", ".yaml")):
            self._spec = load_flow(self.value)
        return self._spec

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else self.value

    @property
    def topics(self) -> FlowTopics:
        """A YAML's version's topics; a bare name's version 1 (the shared ingest topic names the flow)."""
        return self.spec.topics if self.spec else FlowTopics(self.value, 1)

    @property
    def kafka(self) -> Mapping[str, Any] | None:
        """A flow YAML's librdkafka settings (SASL, TLS, ...); a bare name has none."""
        return self.spec.kafka if self.spec else None


class FlowRef(click.ParamType):
    """``--flow NAME|FLOW.yml``: a :class:`CommandFlow`."""

    name = "flow"

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "TEXT"  # the help as it was: a name or a path

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> CommandFlow:
        return value if isinstance(value, CommandFlow) else CommandFlow(str(value))


FLOW = FlowRef()


def _client(flow: CommandFlow) -> Any:
    """A client of a flow that exists on the broker.

    :raises BrokerError: in one line, if the broker is unreachable or has no such flow.
    """
    from streams.client import Client

    logging.getLogger("streams.kafka.admin").setLevel(logging.ERROR)  # not the replication of the client's own reply topic
    settings = _connect(flow, quiet=max(logging.WARNING, logging.getLogger().level))  # before it creates anything
    return Client(flow.name, settings=settings)


def _connect(flow: CommandFlow, *roles: TopicRole, check: bool = True, quiet: int = logging.WARNING) -> KafkaSettings:
    """The settings of a command on a running flow: our log lines from ``quiet`` up only, and (``check``)
    the flow's ingest topic and its topics of ``roles`` checked to exist (``require_flow``).

    :raises BrokerError: in one line, if the broker is unreachable or has no such flow.
    """
    from streams.kafka.admin import require_flow

    logging.getLogger("streams").setLevel(quiet)  # keep output clean
    settings = _command_settings(flow.kafka)
    if check:
        require_flow(settings, flow.topics, *roles)
    return settings


def _command_settings(flow_extra: Mapping[str, Any] | None = None) -> KafkaSettings:
    """Settings for a short-lived command: the running flow's broker, and librdkafka's own log
    lines routed through Python logging (silenced), so a failure prints our one line only."""
    found = KafkaSettings.discover(flow_extra)
    return KafkaSettings(found.bootstrap_servers, {**found.extra, "logger": QUIET_LIBRDKAFKA})


def _spec(flow_path: Path, state_dir: Path | None) -> FlowSpec:
    """A flow YAML's spec, its shard state and logs under ``--state-dir`` when given."""
    flow = load_flow(flow_path)
    return with_state_dir(flow, state_dir) if state_dir else flow
