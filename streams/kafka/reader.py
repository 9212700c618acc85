"""Reading topics as data rather than as a consumer group: to their end, or following them.

Serving versions, status reports, dead letters, a shard's changelog, a client's replies: each is read
by assigning partitions (no group joined, nothing committed) and polling. This is the one way to do
it, with what the hand-written loops each got a little differently:

- **The end** of a partition is its high watermark as fetch responses report it when the read starts
  (the embedded broker answers ListOffsets wrongly, ``shared/EMBEDDED_BROKER.md``), or one the caller
  gives. Records at or past it are not returned: a read is bounded while producers keep writing.
- **Transactions.** A commit or abort marker takes an offset that no consumer receives, so the last
  record's offset + 1 may never reach the high watermark; with ``read_committed`` an open transaction
  holds the end back at the last stable offset. A partition therefore also ends at librdkafka's
  partition-EOF event, which it raises at whichever end applies.
- **Timeouts** raise ``ReadTimeoutError`` naming the partitions not read to their end; the records
  returned until then are the caller's to keep or drop.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from types import TracebackType
from typing import Any, Iterable, Iterator, Mapping

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams.exceptions import ReadTimeoutError
from streams.kafka.consumer import Fetched, consume_batch, make_consumer, split
from streams.kafka.settings import KafkaSettings

__all__ = ["PartitionKey", "TopicReader", "read_to_end", "tail", "fetch_high_watermarks"]

PartitionKey = tuple[str, int]
"""(topic, partition)."""

LEADER_LOOKUP_TIMEOUT_S = 5.0
"""How long ``TopicReader.assign`` waits for a topic's metadata before assigning a logical offset."""


class TopicReader:
    """One consumer assigned to partitions, to read them to their end (``to_end``) or follow them
    (``follow``, ``poll``). ``group_id`` only names the client: no group is joined, nothing committed.
    """

    def __init__(self, settings: KafkaSettings, *, group_id: str, read_committed: bool = False,
                 **overrides: Any) -> None:
        """:param read_committed: skip records of open and aborted transactions (``isolation.level``).
        :param overrides: librdkafka consumer settings (``fetch.wait.max.ms`` for a long read)."""
        isolation = {"isolation.level": "read_committed"} if read_committed else {}
        self._consumer = make_consumer(settings, group_id=group_id,
                                       **{"enable.partition.eof": True, **isolation, **overrides})
        self._assigned: list[TopicPartition] = []
        self._open: set[PartitionKey] = set()

    @property
    def consumer(self) -> Consumer:
        """The consumer, for what a reader does not wrap (``offsets_for_times``)."""
        return self._consumer

    def assign(self, starts: Iterable[TopicPartition]) -> "TopicReader":
        """Read these partitions, each from its offset (or a logical one: ``OFFSET_BEGINNING``).

        For a logical offset the topic's metadata is asked for first: librdkafka looks such an offset up
        with the partition's leader, and asked before it knows the leader it retries only after 500 ms
        (a replay's first record came 0.55 s after assigning, 0.07 s with the metadata known first).
        """
        self._assigned = list(starts)
        for topic in sorted({tp.topic for tp in self._assigned if tp.offset < 0}):
            with contextlib.suppress(KafkaException):  # a broker not reachable yet: the read's timeout says so
                self._consumer.list_topics(topic, timeout=LEADER_LOOKUP_TIMEOUT_S)
        self._consumer.assign(self._assigned)
        return self

    def poll(self, timeout: float, *, max_records: int = 500) -> Fetched:
        """Wait up to ``timeout`` for the first record, then take what is already fetched."""
        return split(consume_batch(self._consumer, max_records=max_records, timeout=timeout))

    def follow(self, stop: threading.Event, *, timeout: float = 0.1, max_records: int = 500) -> Iterator[Fetched]:
        """Poll until ``stop`` is set, one ``Fetched`` per poll, empty ones too: the caller's turn to
        check its own conditions (and ``break``) at least every ``timeout`` seconds."""
        while not stop.is_set():
            yield self.poll(timeout, max_records=max_records)

    def to_end(self, *, timeout: float, until: Mapping[PartitionKey, int] | None = None, max_records: int = 500,
               poll_s: float = 0.2) -> Iterator[Fetched]:
        """Every record of the assigned partitions up to their end, in batches (a partition's end and
        errors are passed on too, e.g. for a caller that stops at the first error).

        :param until: a partition's end offset, exclusive (default: its high watermark as first fetched).
        :raises ReadTimeoutError: naming the partitions not read to their end within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        ends = dict(until or {})
        starts = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in self._assigned}  # logical offsets: 0
        self._open = set(starts)
        while self._open:
            # A start at or past the end reads nothing (an offset past it would reset to the beginning).
            self._open -= {key for key in self._open if key in ends and starts[key] >= ends[key]}
            if not self._open:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReadTimeoutError(_not_read(self._open, timeout), frozenset(self._open))
            fetched = self.poll(min(poll_s, left), max_records=max_records)
            self._learn_ends(ends)
            records = []
            for msg in fetched.records:
                key, offset = _position(msg)
                end = ends.get(key)
                if (end is None or offset < end) and offset >= starts[key]:
                    records.append(msg)
                if end is not None and offset >= end - 1:
                    self._open.discard(key)
            self._open.difference_update(fetched.ends)
            yield Fetched(records, fetched.ends, fetched.errors)

    def _learn_ends(self, ends: dict[PartitionKey, int]) -> None:
        """Fix each open partition's end at the first high watermark a fetch reports for it."""
        for topic, partition in self._open:
            if (topic, partition) not in ends:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                if high >= 0:
                    ends[(topic, partition)] = high

    def at_fetched_end(self, topic: str, partition: int) -> bool:
        """Whether this reader has read the partition up to the high watermark a fetch response last reported
        (False before any). The end known without the end-of-partition event, which comes only in answer to
        a fetch made at the end: on Apache Kafka, after that fetch's whole ``fetch.wait.max.ms``."""
        tp = TopicPartition(topic, partition)
        _, high = self._consumer.get_watermark_offsets(tp, cached=True)
        if high < 0:
            return False
        return high == 0 or self._consumer.position([tp])[0].offset >= high

    def remaining(self) -> int:
        """Records left to the fetched high watermarks of the partitions ``to_end`` has not finished
        (a progress bar's total, growing as fetches report)."""
        left = 0
        for topic, partition in self._open:
            tp = TopicPartition(topic, partition)
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            position = self._consumer.position([tp])[0].offset
            if high >= 0 and position >= 0:
                left += max(0, high - position)
        return left

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "TopicReader":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def read_to_end(settings: KafkaSettings, starts: Iterable[TopicPartition], *, group_id: str, timeout: float,
                until: Mapping[PartitionKey, int] | None = None, read_committed: bool = False) -> Iterator[Message]:
    """Every record from ``starts`` up to each partition's end (see ``TopicReader.to_end``); the
    consumer is closed when the iteration ends, however it ends.

    :raises ReadTimeoutError: naming the partitions not read to their end within ``timeout`` seconds.
    """
    with TopicReader(settings, group_id=group_id, read_committed=read_committed) as reader:
        reader.assign(starts)
        for fetched in reader.to_end(timeout=timeout, until=until):
            yield from fetched.records


def tail(settings: KafkaSettings, starts: Iterable[TopicPartition], *, group_id: str, stop: threading.Event,
         timeout: float = 0.1, max_records: int = 500) -> Iterator[Fetched]:
    """Follow partitions from ``starts`` until ``stop`` is set or the caller breaks off (see
    ``TopicReader.follow``); the consumer is closed when the iteration ends."""
    with TopicReader(settings, group_id=group_id) as reader:
        reader.assign(starts)
        yield from reader.follow(stop, timeout=timeout, max_records=max_records)


def _position(record: Message) -> tuple[PartitionKey, int]:
    """Where a record is: its (topic, partition) and offset (a record always has them; an event may not)."""
    return (str(record.topic()), int(record.partition() or 0)), int(record.offset() or 0)


def _not_read(unfinished: Iterable[PartitionKey], timeout: float) -> str:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(unfinished):
        by_topic.setdefault(topic, []).append(partition)
    where = ", ".join(f"{topic}{partitions}" for topic, partitions in by_topic.items())
    return f"could not read {where} to its end within {timeout:.0f}s"


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
