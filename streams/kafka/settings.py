"""Where the cluster is and how every client is configured: ``KafkaSettings``.

The bootstrap address comes from ``KAFKA_BOOTSTRAP_SERVERS``, else (``KafkaSettings.discover``)
from the file a local ``streamsearch run`` in this directory leaves behind; librdkafka settings
come from the flow's ``kafka:`` map and ``STREAMSEARCH_KAFKA_*`` variables, checked once here.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.exceptions import BrokerError, KafkaConfigError
from streams.logs import RepeatLimit

__all__ = ["KafkaSettings", "BOOTSTRAP_ENV", "BOOTSTRAP_FILE", "ENV_PREFIX", "LIBRDKAFKA_LOGGER", "QUIET_LIBRDKAFKA",
           "check_client_properties"]

LIBRDKAFKA_LOGGER = logging.getLogger("librdkafka")
"""Where the log lines and errors of every client the product creates go (``KafkaSettings.base``):
the process's structured logs, at librdkafka's level mapped by confluent-kafka (``%3`` ERROR, ``%4``
WARNING, ``%5``/``%6`` INFO), never librdkafka's raw ``%4|...`` lines on stderr; each kind of line at
most once per ``RepeatLimit.interval_s`` (a connection-refused storm is one line every 10 s)."""
LIBRDKAFKA_LOGGER.addFilter(RepeatLimit())

QUIET_LIBRDKAFKA = logging.getLogger("librdkafka.quiet")
"""For a client whose failure the caller reports itself in one line (a short command, a probe):
its librdkafka lines go nowhere."""
QUIET_LIBRDKAFKA.addHandler(logging.NullHandler())
QUIET_LIBRDKAFKA.propagate = False

ENV_PREFIX = "STREAMSEARCH_KAFKA_"
"""librdkafka pass-through, and nothing else: ``STREAMSEARCH_KAFKA_SASL_MECHANISM`` -> ``sasl.mechanism``.
The product's own settings never start with it (the local broker's are ``STREAMSEARCH_LOCAL_KAFKA_*``)."""

RENAMED_SETTINGS = {"STREAMSEARCH_KAFKA_LIBS": "STREAMSEARCH_LOCAL_KAFKA_LIBS",
                    "STREAMSEARCH_KAFKA_HEAP": "STREAMSEARCH_LOCAL_KAFKA_HEAP"}
"""The local broker's settings that once lived in the pass-through namespace, and their names now."""


BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
"""The cluster's bootstrap servers; when unset, ``KafkaSettings.discover`` looks for a local run's broker."""

BOOTSTRAP_FILE = Path(".streamsearch") / "bootstrap"
"""Where ``streamsearch run`` leaves the local broker's address for ``index``, ``search`` and the
client (relative to the working directory; ``streams/local/bootstrap.py`` writes it)."""


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where the broker is and any librdkafka settings to pass through.

    ``extra`` comes from the flow YAML's ``kafka:`` map, then from environment variables
    ``STREAMSEARCH_KAFKA_<SETTING>`` (``SASL_MECHANISM`` -> ``sasl.mechanism``), which win.
    """

    bootstrap_servers: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, flow_extra: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] = os.environ) -> "KafkaSettings":
        """The cluster of ``KAFKA_BOOTSTRAP_SERVERS`` with the flow's and the environment's librdkafka settings.

        :raises KafkaConfigError: naming the variable or the flow's ``kafka:`` key, when librdkafka has
            no such property or refuses its value (checked here, once, so that no command blames
            connectivity for a typo).
        """
        bootstrap = environ.get(BOOTSTRAP_ENV, "")
        sources = {str(key): f"the flow's kafka: {key}" for key in (flow_extra or {})}
        extra = dict(flow_extra or {})
        for key, value in environ.items():
            if key.startswith(ENV_PREFIX):
                name = key[len(ENV_PREFIX) :].lower().replace("_", ".")
                extra[name], sources[name] = value, key
        check_client_properties(extra, sources)
        return cls(bootstrap_servers=bootstrap, extra=extra)

    @classmethod
    def discover(cls, flow_extra: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] = os.environ,
                 directory: Path = Path(".")) -> "KafkaSettings":
        """As ``from_env``; without ``KAFKA_BOOTSTRAP_SERVERS``, the broker a ``streamsearch run`` in
        ``directory`` started (its ``BOOTSTRAP_FILE``): how the CLI and ``Client("flow")`` find a
        local flow with no configuration.

        :raises BrokerError: when neither names a broker.
        :raises KafkaConfigError: as ``from_env``.
        """
        settings = cls.from_env(flow_extra, environ)
        if settings.bootstrap_servers:
            return settings
        try:
            bootstrap = (directory / BOOTSTRAP_FILE).read_text().strip()
        except FileNotFoundError:
            raise BrokerError("no broker: set KAFKA_BOOTSTRAP_SERVERS or start a flow with "
                              "`streamsearch run FLOW.yml`") from None
        return cls(bootstrap_servers=bootstrap, extra=settings.extra)

    def base(self) -> dict[str, Any]:
        """The settings every client is created with: librdkafka's log lines and errors go to
        ``LIBRDKAFKA_LOGGER`` unless ``extra`` names another ``logger``."""
        config = {"bootstrap.servers": self.bootstrap_servers, "logger": LIBRDKAFKA_LOGGER, **self.extra}
        config.setdefault("error_cb", functools.partial(_log_client_error, config["logger"]))
        return config


def _log_client_error(log: logging.Logger, error: KafkaError) -> None:
    """An error no call returns (a broker unreachable, all brokers down), which confluent-kafka
    drops without an ``error_cb``: logged, a fatal one as an error, others (retried) as warnings."""
    log.log(logging.ERROR if error.fatal() else logging.WARNING, "%s", error.str(), extra={"code": error.name()})


def check_client_properties(properties: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Refuse a setting librdkafka does not know or whose value it refuses, naming where it came from.

    librdkafka checks names and values when a client is created, not when it connects, so a
    throwaway producer (which never connects: no record is sent) is the authoritative check.

    :raises KafkaConfigError: one line naming the variable or flow key and librdkafka's reason.
    """
    checked = {name: value for name, value in properties.items()
               if name not in ("logger", "error_cb")}  # our own objects
    try:
        _throwaway_producer(checked)
        return
    except KafkaException as exc:
        combined = exc.args[0].str()
    # Some settings are valid only together (a SASL protocol and its mechanism): blame one alone if it fails alone.
    for name, value in checked.items():
        try:
            _throwaway_producer({name: value})
        except KafkaException as exc:
            source = sources.get(name, name)
            hint = f"; that setting is now {RENAMED_SETTINGS[source]}" if source in RENAMED_SETTINGS else ""
            passthrough = (f" ({ENV_PREFIX}* variables are passed to librdkafka as client settings{hint})"
                           if source.startswith(ENV_PREFIX) else "")
            raise KafkaConfigError(f"{source}: {exc.args[0].str()}{passthrough}") from None
    raise KafkaConfigError(f"librdkafka refuses the settings {', '.join(sorted(sources.get(n, n) for n in checked))}"
                           f" together: {combined}")


def _throwaway_producer(properties: Mapping[str, Any]) -> None:
    Producer({**properties, "logger": QUIET_LIBRDKAFKA})
