"""Helpers for tests in more than one folder (a helper lives in the fixtures module of the nearest
folder that holds every test using it; see tests/README.md): a topic read to its end on the session
broker; ports for a server the test starts; a flow spec with or without the lexical arm."""

from __future__ import annotations

import random
import socket
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaError, Message, TopicPartition

from streams.flow.parse import load_flow
from streams.flow.spec import FlowSpec
from streams.kafka.consumer import consume_batch, make_consumer
from streams.kafka.settings import KafkaSettings


def read_all(settings: KafkaSettings, topic: str, partitions: int, **config: object) -> list[Message]:
    """Every record of ``topic`` from the beginning to the high watermark (as of the fetch)."""
    consumer = make_consumer(settings, group_id=f"read-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True, **config})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Message] = []
    ended: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(ended) < partitions:
            assert time.monotonic() < deadline, f"{topic} not read to its end in 60 s"
            for msg in consume_batch(consumer, max_records=500, timeout=0.5):
                error, partition = msg.error(), msg.partition()
                if error is None:
                    records.append(msg)
                elif error.code() == KafkaError._PARTITION_EOF and partition is not None:
                    ended.add(partition)
    finally:
        consumer.close()
    return records


_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port_block(size: int = 1) -> int:
    """A base port whose next ``size`` ports are free now, below the kernel's ephemeral range.

    Why below it: a server a test starts binds its port moments or minutes later, and in between the
    Kafka clients of the session open connections whose local ports the kernel draws from the ephemeral
    range (a port from ``bind(0)`` is in it too). A port outside that range is taken only by another
    explicit bind, so it stays free (a CI run once lost a stage's metrics port this way).
    """
    low = int(_EPHEMERAL.read_text().split()[0]) if _EPHEMERAL.exists() else 32768
    for _ in range(200):
        base = random.randrange(10_000, low - size)
        if all(_free(base + i) for i in range(size)):
            return base
    raise AssertionError(f"no {size} free ports in 10000..{low}")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def flow_spec(folder: Path, name: str, *, lexical: bool, dim: int = 384) -> FlowSpec:
    """The spec of a flow ``name`` without a model whose index keeps the lexical arm or not: what a bridge's
    ``/status`` reads (``lexical``) from a flow's YAML."""
    path = folder / f"{name}-{'lexical' if lexical else 'dense'}.yml"
    path.write_text(f"name: {name}\nstages:\n  index: {{with: {{dim: {dim}, lexical: {str(lexical).lower()}}}}}\n"
                    "  join: {}\n")
    return load_flow(path)
