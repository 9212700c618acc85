"""Reading topics as data: where a partition ends now (its high watermark).

Not ListOffsets: the embedded broker answers that wrongly (``shared/EMBEDDED_BROKER.md``), so "the
end" is what fetch responses report.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import TopicPartition

from streams.kafka.consumer import consume_batch, make_consumer
from streams.kafka.settings import KafkaSettings

__all__ = ["fetch_high_watermarks"]


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
