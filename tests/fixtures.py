"""Helpers for tests in more than one folder (a helper lives in the fixtures module of the nearest
folder that holds every test using it; see tests/README.md): a topic read to its end on the session
broker; a flow spec with or without the lexical arm."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
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


def flow_spec(folder: Path, name: str, *, lexical: bool, dim: int = 384) -> FlowSpec:
    """The spec of a flow ``name`` without a model whose index keeps the lexical arm or not: what a bridge's
    ``/status`` reads (``lexical``) from a flow's YAML."""
    path = folder / f"{name}-{'lexical' if lexical else 'dense'}.yml"
    path.write_text(f"name: {name}\nstages:\n  index: {{with: {{dim: {dim}, lexical: {str(lexical).lower()}}}}}\n"
                    "  join: {}\n")
    return load_flow(path)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # polling interval of a condition
