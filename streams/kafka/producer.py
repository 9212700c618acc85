"""The producer every stage and client writes with: idempotent, lazy, loud at flush; transactions on request."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.exceptions import DeliveryError, ProducerFailedError
from streams.kafka.settings import KafkaSettings
from streams.wire.partitioner import LIBRDKAFKA_PARTITIONER
from streams.wire.topics import RECORD_OVERHEAD_BYTES

__all__ = ["BATCH_LINGER_MS", "MAX_BATCH_BYTES", "StageProducer", "DeliveryFailure", "DeliveryReport", "Header", "PERMANENT_DELIVERY_ERRORS",
           "UNKNOWN_TOPIC_ERRORS", "kafka_error", "producer_failed",
           "record_size"]

Header = tuple[str, bytes]

PERMANENT_DELIVERY_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD, KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.INVALID_MSG,
})
"""Refusals that retrying the same record can never cure: the input behind it is dead-lettered."""

UNKNOWN_TOPIC_ERRORS = frozenset({KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART})
"""The topic does not exist (librdkafka's own error, or the broker's)."""


MAX_BATCH_BYTES = 1_000_000
"""The largest record batch a producer builds (``batch.size``, librdkafka's default), or the flow's payload limit
and overhead where that is smaller; a record larger than ``batch.size`` goes in a batch of its own. What the
local broker's G1 regions are sized for (``G1_REGION`` in ``streams/local/apache_kafka.py``)."""

BATCH_LINGER_MS = 5
"""``linger.ms`` of a producer whose writes end with a ``flush`` (every stage path at its commit, the
client's ``index``): records produced meanwhile gather into record batches, and the flush sends what
is left at once (librdkafka ignores ``linger.ms`` while flushing), so no record waits for it. With 0,
each record woke librdkafka's broker thread and left in its own request: 104 µs of the client's
thread per ``produce`` and half the ingest rate (3,725 vs 7,392 vectors/s, 30,000 pre-embedded
384-d vectors, 1 shard, Apache Kafka, 2 cores). A producer that never flushes (the client's
searches) passes 0."""


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


def kafka_error(exc: KafkaException) -> KafkaError:
    """librdkafka's error inside a ``KafkaException``, which says what to do about it (``fatal()``,
    ``retriable()``, ``txn_requires_abort()``); one raised without it counts as a plain failure."""
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))


def producer_failed(error: KafkaError) -> bool:
    """The producer, not a record, is at fault: it failed for good (``fatal()``; ``_FATAL`` is what
    ``produce`` says then), or its transaction must be aborted before it takes another record."""
    return error.fatal() or error.txn_requires_abort() or error.code() in (KafkaError._FATAL, KafkaError._STATE)


def record_size(key: bytes | str | None, value: bytes | None, headers: Sequence[Header]) -> int:
    """An upper bound, in bytes, of one record alone in a record batch (format v2: 61-byte batch
    header, varint-framed fields), which is what a topic's ``max.message.bytes`` limits."""
    key_len = len(key.encode() if isinstance(key, str) else key or b"")
    return 61 + 21 + key_len + len(value or b"") + 5 + sum(10 + len(k) + len(v or b"") for k, v in headers)



DeliveryCallback = Callable[[KafkaError | None, Message], None]


class DeliveryReport:
    """What a record's delivery report does: note a failure for ``StageProducer.flush`` to raise (not for a
    ``best_effort`` record), then call ``on_delivery``. One serves every record given it (``StageProducer.report``):
    a closure made per record was four objects the cycle collector tracks, and pending delivery reports keep them
    alive, tens of thousands at once in a client ingesting in bulk (its full collections then took up to 146 ms,
    which its queries waited through)."""

    __slots__ = ("_on_delivery", "best_effort", "failures")

    def __init__(self, failures: list[DeliveryFailure], on_delivery: DeliveryCallback | None, best_effort: bool) -> None:
        """:param failures: its producer's list of failures (the list, not the producer: no reference cycle keeps
            a producer dropped unclosed, and its librdkafka client, until a full collection)."""
        self.failures = failures
        self._on_delivery = on_delivery
        self.best_effort = best_effort

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and not self.best_effort:
            self.failures.append(DeliveryFailure(msg.topic(), msg.partition(), msg.key(), err, len(msg)))
        if self._on_delivery is not None:
            self._on_delivery(err, msg)


class StageProducer:
    """An idempotent producer that connects on first use (or at ``connect``) and fails loudly at flush.

    Delivery reports are collected; ``flush`` raises if any record was not delivered, so the
    checkpoint never commits input whose output was lost.
    """

    def __init__(self, settings: KafkaSettings, *, max_payload_bytes: int | None = None,
                 linger_ms: int = BATCH_LINGER_MS, **overrides: Any) -> None:
        """:param max_payload_bytes: the flow's payload limit. Its topics take record batches up to
            ``max_payload_bytes + RECORD_OVERHEAD_BYTES`` (``max.message.bytes``), so no batch is built
            larger: librdkafka's default ``batch.size`` of 1 MB would put small records together into
            a batch the broker refuses as too large (a record larger than ``batch.size`` goes alone).
        :param linger_ms: how long a record may wait for others before it is sent unflushed
            (``BATCH_LINGER_MS``; 0 for a producer that never flushes)."""
        batch = {"batch.size": min(MAX_BATCH_BYTES, max_payload_bytes + RECORD_OVERHEAD_BYTES)} if max_payload_bytes else {}
        self._config = {
            **batch,
            "enable.idempotence": True,
            "linger.ms": linger_ms,
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
        self._creating = threading.Lock()
        """Held while the client is made: two threads' first records (the HTTP bridge's concurrent ``index`` calls)
        would each make one, and the one dropped would take its records with it."""
        self._failures: list[DeliveryFailure] = []
        self._unflushed = 0
        """Records not delivered, for the next ``flush`` to raise: one list for the producer's life (its reports
        hold it), emptied by each ``flush``."""
        self._plain = DeliveryReport(self._failures, None, best_effort=False)
        """The report of a record produced without a callback: its failure is noted."""

    def report(self, on_delivery: DeliveryCallback | None = None, *, best_effort: bool = False) -> DeliveryReport:
        """A delivery report to give ``produce`` for many records with the same callback (made once, not a
        closure per record)."""
        return DeliveryReport(self._failures, on_delivery, best_effort)

    @property
    def pending(self) -> bool:
        """Records produced since the last flush: they may still wait ``linger.ms``."""
        return self._unflushed > 0

    @property
    def raw(self) -> Producer:
        if self._producer is None:
            with self._creating:
                if self._producer is None:
                    producer = Producer(self._config)
                    if "transactional.id" in self._config:
                        producer.init_transactions(30)  # fences an older instance with the same id
                    self._producer = producer  # not before: a failed init_transactions leaves none to use
        return self._producer

    def connect(self) -> None:
        """Create the client now rather than at the first ``produce``: librdkafka's idempotent producer sends
        nothing before it has its producer id, which it asks for on its first metadata answer or at a 500 ms
        timer (``rd_kafka_idemp_init``). A producer made by its first record held that record ~0.5 s: a shard's
        first answer after it started (0.50-0.54 s from its CreateTime to the join, three runs), a new client's
        first search (~0.8 s against 0.03 s for its second). A transactional producer is left to its first use,
        where ``init_transactions`` blocks and fences."""
        if "transactional.id" not in self._config:
            self.raw  # noqa: B018 - the property creates the client

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes | str | None = None,
        partition: int | None = None,
        headers: Sequence[Header] = (),
        on_delivery: DeliveryCallback | DeliveryReport | None = None,
        best_effort: bool = False,
        timestamp: int | None = None,
    ) -> None:
        """Queue a record; waits (serving callbacks) while the local queue is full.

        :param on_delivery: called with the record's delivery report; a :class:`DeliveryReport` (``report``)
            is used as it is, with its own ``best_effort``.
        :param best_effort: a failure to deliver this record is only reported to ``on_delivery``,
            never raised by ``flush`` (a reply to a client that has gone).
        :param timestamp: its CreateTime in epoch ms (None: librdkafka's clock now).
        :raises ProducerFailedError: the producer took no record (a fatal error, a transaction that
            must be aborted, or creating it failed): its owner recovers it, the record is not at fault.
        :raises KafkaException: the record cannot be taken (a partition the topic does not have).
        """
        if isinstance(on_delivery, DeliveryReport):
            if on_delivery.failures is not self._failures or best_effort:
                raise ValueError("a DeliveryReport is this producer's own (report()), and carries its best_effort")
            report = on_delivery
        elif on_delivery is None and not best_effort:
            report = self._plain
        else:
            report = DeliveryReport(self._failures, on_delivery, best_effort)
        kwargs: dict[str, Any] = {"value": value, "key": key, "headers": list(headers), "on_delivery": report}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        try:
            producer = self.raw
        except KafkaException as exc:  # init_transactions failed
            raise ProducerFailedError(f"no producer: {exc}", kafka_error(exc)) from exc
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                error = kafka_error(exc)
                if not producer_failed(error):
                    raise  # the record's own fault (a partition that does not exist, say)
                raise ProducerFailedError(f"the producer took no record: {exc}", error) from exc
        self._unflushed += 1
        producer.poll(0)

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
        self._unflushed = 0
        left = self._producer.flush(timeout)
        failures = list(self._failures)
        self._failures.clear()
        reasons = [str(f) for f in failures[:5]] + ([f"{left} records still queued after {timeout}s"] if left else [])
        if reasons:
            # Only an error without queued records can be judged by its failures alone.
            raise DeliveryError("delivery failed: " + "; ".join(reasons), tuple(failures) if not left else ())

    def recreate(self) -> None:
        """Drop the client, without flushing, after a fatal error left it unusable: what it holds is
        purged (a failed transaction's records are produced again by the batch's rerun), and the next
        use creates a fresh one. With a ``transactional.id`` the fresh one's ``init_transactions``
        aborts the open transaction of the old one on the coordinator, and fences it."""
        if self._producer is not None:
            # Nothing it says now matters (a failed client may raise from either call): it is dropped.
            with contextlib.suppress(Exception):
                self._producer.purge()
                self._producer.poll(0)  # the purged records' delivery reports, before the client goes
            self._producer = None
            self.connect()  # the fresh one asks for its producer id now, not at its first record
        self._failures.clear()
        self._unflushed = 0

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
