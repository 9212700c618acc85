"""The consumer every stage and reader polls with, and the batch poll that does not wait out its timeout."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from confluent_kafka import Consumer, KafkaError, Message

from streams.kafka.admin import cluster_id
from streams.kafka.settings import KafkaSettings

__all__ = ["make_consumer", "consume_batch", "headers_of", "gather", "Fetched", "split", "latency_fetch_wait_ms",
           "EMBEDDED_FETCH_WAIT_MS", "LONG_POLL_FETCH_WAIT_MS", "MAX_FETCH_WAIT_MS", "EMBEDDED_CLUSTER_ID"]

EMBEDDED_FETCH_WAIT_MS = 5
"""``fetch.wait.max.ms`` where a record is waited for, on the embedded broker: it answers a fetch only when
the wait is over, even if records arrived (``shared/EMBEDDED_BROKER.md``), so the wait is every hop's
latency; each such consumer costs it about 12 % of a core."""

LONG_POLL_FETCH_WAIT_MS = 100
"""The same on Apache Kafka, which answers a fetch as soon as a record arrives (a delayed fetch completes on
the append): the wait only sets how often an idle consumer asks. At 5 ms a bare idle reader cost the broker
12-22 % of a core, at 100 ms 3-6 % (stop 36's measurement); with every query path of a flow at 100 ms
instead of 5, ``benchmarks/peers.py`` inserted 7-30 % more vectors a second, sequential query p50s unchanged
(stop 37). Not librdkafka's 500: a read to the end of an empty partition waits this long for its answer."""

MAX_FETCH_WAIT_MS = 300_000
"""The most ``fetch.wait.max.ms`` librdkafka accepts."""

EMBEDDED_CLUSTER_ID = "tansu_cluster"
"""The embedded broker's cluster id: Tansu's default, which ``streams/local/tansu.py`` passes explicitly
(Tansu would otherwise take ``CLUSTER_ID`` from the environment)."""

_latency_waits: dict[str, int] = {}
_latency_waits_lock = threading.Lock()


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
        "fetch.wait.max.ms": EMBEDDED_FETCH_WAIT_MS,
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


def latency_fetch_wait_ms(settings: KafkaSettings) -> int:
    """``fetch.wait.max.ms`` for a consumer whose records someone is waiting for (a query path, a client's
    replies): ``LONG_POLL_FETCH_WAIT_MS`` on Apache Kafka, ``EMBEDDED_FETCH_WAIT_MS`` on the embedded broker
    or when the cluster cannot tell its id (the short wait is right on both, only dearer). Asked once per
    bootstrap address and process (one DescribeCluster request); a failed ask is not remembered, and a
    process that later finds another kind of broker at the same address keeps the first answer."""
    with _latency_waits_lock:
        known = _latency_waits.get(settings.bootstrap_servers)
    if known is not None:
        return known
    found = cluster_id(settings)
    if found is None:
        return EMBEDDED_FETCH_WAIT_MS
    wait = EMBEDDED_FETCH_WAIT_MS if found == EMBEDDED_CLUSTER_ID else LONG_POLL_FETCH_WAIT_MS
    with _latency_waits_lock:
        _latency_waits[settings.bootstrap_servers] = wait
    return wait


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


def gather(consumer: Consumer, messages: Sequence[Message], *, partitions: set[int], max_records: int,
           wait_s: float) -> list[Message]:
    """What arrives for the ``partitions`` that ``messages`` holds no record of, within ``wait_s`` seconds,
    stopping as soon as every one has a record or ``messages`` and the gathered make ``max_records``. Why: the
    copies of one fanned-out query then reach the shards of one process in one batch, searched side by side."""
    seen = {msg.partition() for msg in messages if msg.error() is None}
    more: list[Message] = []
    deadline = time.monotonic() + wait_s
    while not partitions <= seen and (room := max_records - len(messages) - len(more)) > 0:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        got = consume_batch(consumer, max_records=room, timeout=left)
        if not got:
            break
        more += got
        seen.update(msg.partition() for msg in got if msg.error() is None)
    return more


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one poll returned, sorted: librdkafka delivers a partition's end and its errors as
    messages among the records."""

    records: list[Message] = field(default_factory=list)
    ends: list[tuple[str, int]] = field(default_factory=list)
    """(topic, partition) whose end this poll reached (``_PARTITION_EOF``; needs ``enable.partition.eof``)."""
    errors: list[KafkaError] = field(default_factory=list)


def split(messages: Sequence[Message]) -> Fetched:
    """Sort polled messages into records, partition ends and errors, keeping each one's order."""
    fetched = Fetched()
    for msg in messages:
        error = msg.error()
        if error is None:
            fetched.records.append(msg)
        elif error.code() == KafkaError._PARTITION_EOF:
            fetched.ends.append((str(msg.topic()), int(msg.partition() or 0)))
        else:
            fetched.errors.append(error)
    return fetched
