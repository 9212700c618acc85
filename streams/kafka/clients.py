"""Thin, lazy, typed wrappers around confluent-kafka: configuration, producer, consumer.

No business logic here: defaults tuned for low latency on the embedded broker, delivery
errors surfaced at flush, and the environment/flow pass-through of librdkafka settings.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.wire.topics import RECORD_OVERHEAD_BYTES
from streams.exceptions import DeliveryError, KafkaConfigError
from streams.logs import RepeatLimit
from streams.wire.headers import Header
from streams.wire.partitioner import LIBRDKAFKA_PARTITIONER

__all__ = ["UNKNOWN_TOPIC_ERRORS", "KafkaSettings", "StageProducer", "make_consumer", "consume_batch", "fetch_high_watermarks", "headers_of",
           "DeliveryFailure", "PERMANENT_DELIVERY_ERRORS", "record_size",
           "check_client_properties", "ENV_PREFIX", "LIBRDKAFKA_LOGGER", "QUIET_LIBRDKAFKA"]

logger = logging.getLogger(__name__)

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


PERMANENT_DELIVERY_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD, KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.INVALID_MSG,
})
"""Refusals that retrying the same record can never cure: the input behind it is dead-lettered."""

UNKNOWN_TOPIC_ERRORS = frozenset({KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART})
"""The topic does not exist (librdkafka's own error, or the broker's)."""


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """One record the broker (or librdkafka) refused."""

    topic: str
    partition: int
    key: bytes | None
    error: KafkaError
    size: int

    @property
    def permanent(self) -> bool:
        return self.error.code() in PERMANENT_DELIVERY_ERRORS

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]: {self.error.str()} ({self.size} bytes)"


def record_size(key: bytes | str | None, value: bytes | None, headers: Sequence[Header]) -> int:
    """An upper bound, in bytes, of one record alone in a record batch (format v2: 61-byte batch
    header, varint-framed fields), which is what a topic's ``max.message.bytes`` limits."""
    key_len = len(key.encode() if isinstance(key, str) else key or b"")
    return 61 + 21 + key_len + len(value or b"") + 5 + sum(10 + len(k) + len(v or b"") for k, v in headers)


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
        bootstrap = environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        sources = {str(key): f"the flow's kafka: {key}" for key in (flow_extra or {})}
        extra = dict(flow_extra or {})
        for key, value in environ.items():
            if key.startswith(ENV_PREFIX):
                name = key[len(ENV_PREFIX) :].lower().replace("_", ".")
                extra[name], sources[name] = value, key
        check_client_properties(extra, sources)
        return cls(bootstrap_servers=bootstrap, extra=extra)

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


class StageProducer:
    """An idempotent producer that connects on first use and fails loudly at flush.

    Delivery reports are collected; ``flush`` raises if any record was not delivered, so the
    checkpoint never commits input whose output was lost.
    """

    def __init__(self, settings: KafkaSettings, *, max_payload_bytes: int | None = None, **overrides: Any) -> None:
        """:param max_payload_bytes: the flow's payload limit. Its topics take record batches up to
            ``max_payload_bytes + RECORD_OVERHEAD_BYTES`` (``max.message.bytes``), so no batch is built
            larger: librdkafka's default ``batch.size`` of 1 MB would put small records together into
            a batch the broker refuses as too large (a record larger than ``batch.size`` goes alone)."""
        batch = {"batch.size": min(1_000_000, max_payload_bytes + RECORD_OVERHEAD_BYTES)} if max_payload_bytes else {}
        self._config = {
            **batch,
            "enable.idempotence": True,
            # No lingering: stages flush at the end of each batch anyway, and every hop of a
            # query would otherwise wait this long before its record leaves.
            "linger.ms": 0,
            "message.max.bytes": 16 * 1024 * 1024,
            # A topic the cluster says does not exist fails its records after this wait (librdkafka's
            # default is 30 s, for topics just created elsewhere). Every topic a stage or client
            # writes was created and seen on every broker first (``ensure_topics``), except a reply
            # topic whose client has just deleted it: that must not hold a stage's flush for 30 s.
            "topic.metadata.propagation.max.ms": 2000,
            # Never create a topic by writing to it (librdkafka's producer default is true): a reply to
            # a client that has just deleted its topic would bring it back, for good, on a cluster
            # with auto.create.topics.enable (Apache Kafka's default).
            "allow.auto.create.topics": False,
            **overrides,
            **settings.base(),  # the user's settings win over our defaults, but not over the partitioner:
            "partitioner": LIBRDKAFKA_PARTITIONER,  # an id on another partition of ingest is refused
        }
        self._producer: Producer | None = None
        self._failures: list[DeliveryFailure] = []

    @property
    def raw(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._config)
            if "transactional.id" in self._config:
                self._producer.init_transactions(30)  # fences an older instance with the same id
        return self._producer

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes | str | None = None,
        partition: int | None = None,
        headers: Sequence[Header] = (),
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
        best_effort: bool = False,
        timestamp: int | None = None,
    ) -> None:
        """Queue a record; waits (serving callbacks) while the local queue is full.

        :param best_effort: a failure to deliver this record is only reported to ``on_delivery``,
            never raised by ``flush`` (a reply to a client that has gone).
        :param timestamp: its CreateTime in epoch ms (None: librdkafka's clock now).
        """

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None and not best_effort:
                self._failures.append(DeliveryFailure(msg.topic(), msg.partition(), msg.key(), err, len(msg)))
            if on_delivery is not None:
                on_delivery(err, msg)

        kwargs: dict[str, Any] = {"value": value, "key": key, "headers": list(headers), "on_delivery": report}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        while True:
            try:
                self.raw.produce(topic, **kwargs)
                break
            except BufferError:
                self.raw.poll(0.05)
        self.raw.poll(0)

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks; nothing before the first ``produce`` (it does not connect)."""
        if self._producer is not None:
            self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued record.

        :raises DeliveryError: if a record failed or is still queued after ``timeout``.
        """
        if self._producer is None:
            return
        left = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        reasons = [str(f) for f in failures[:5]] + ([f"{left} records still queued after {timeout}s"] if left else [])
        if reasons:
            # Only an error without queued records can be judged by its failures alone.
            raise DeliveryError("delivery failed: " + "; ".join(reasons), tuple(failures) if not left else ())

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None


def make_consumer(settings: KafkaSettings, *, group_id: str, **overrides: Any) -> Consumer:
    """A consumer that commits only what the checkpoint says, tuned for low latency.

    Short poll timeout: the embedded broker completes a multi-member join only after the
    rebalance timeout. A session timeout longer than an Apache Kafka failover (a dead broker's
    partitions and group coordinators move after ``broker.session.timeout.ms``, 9 s, plus an
    election when it was the active controller): librdkafka drops its assignment when its
    coordinator is silent for the session timeout and rejoins as a new member, admitted once the
    old member's session has expired on the new coordinator; with 6 s, every group a killed broker
    coordinated stopped for 12 s (``tests/e2e/test_cluster.py``). The price: a stage process
    killed -9 is replaced in its group after this timeout.

    A short ``fetch.wait.max.ms`` by default: the embedded broker answers a fetch only when that
    wait is over, even if data arrived (Kafka answers at once), so the wait is the latency of
    every hop. Paths where latency does not matter pass a longer one, which spares the broker.
    See ``shared/EMBEDDED_BROKER.md``.
    """
    config = {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 5,
        "session.timeout.ms": 20000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 30000,
        "partition.assignment.strategy": "cooperative-sticky",
        "receive.message.max.bytes": 64 * 1024 * 1024,
        "fetch.max.bytes": 32 * 1024 * 1024,
        **overrides,
        **settings.base(),  # the user's settings win over our defaults, but not over the group
    }
    config["group.id"] = group_id
    return Consumer(config)


def headers_of(msg: Message) -> dict[str, bytes]:
    """A record's headers as a dict (the last value of a repeated key wins)."""
    return {key: value for key, value in (msg.headers() or []) if value is not None}



def consume_batch(consumer: Consumer, *, max_records: int, timeout: float) -> list[Message]:
    """Block up to ``timeout`` for the first record, then take what is already queued.

    ``Consumer.consume(n, timeout)`` waits the whole timeout unless n records arrive, which
    would add the timeout to every idle hop of a query.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    rest = consumer.consume(num_messages=max_records - 1, timeout=0) if max_records > 1 else []
    return [first, *rest]


def fetch_high_watermarks(settings: KafkaSettings, partitions: dict[str, int],
                          timeout: float) -> dict[tuple[str, int], int]:
    """High watermarks as fetch responses report them: assign, fetch once, read the cache.
    Not ListOffsets: the embedded broker answers that wrongly (``shared/EMBEDDED_BROKER.md``)."""
    consumer = make_consumer(settings, group_id=f"status.{uuid.uuid4().hex[:8]}", **{"max.partition.fetch.bytes": 1})
    wanted = [TopicPartition(t, p, 0) for t, n in partitions.items() for p in range(n)]
    consumer.assign(wanted)
    highs: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(highs) < len(wanted) and time.monotonic() < deadline:
            consume_batch(consumer, max_records=100, timeout=0.1)
            for tp in wanted:
                _, high = consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    highs[(tp.topic, tp.partition)] = high
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): highs.get((tp.topic, tp.partition), 0) for tp in wanted}
