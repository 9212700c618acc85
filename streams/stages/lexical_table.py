"""The corpus-wide lexical statistics at the fan-out: ``<flow>.lexical-stats`` read whole, as a table.

Each shard writes its own statistics, absolute, to its partition of the compacted topic
(``streams/stages/shard/ingest.py``). The fan-out keeps every partition's latest value per key and
their sum, the way Kafka Streams' GlobalKTable keeps a topic on every instance, and attaches to a
search the sums for the query's terms (``Request.lexical_statistics``): every shard then scores with
the same numbers, whatever the number of shards (the 1-vs-4-shard test).

The sums follow the shards' writes by the topic's latency (tens of milliseconds): a document just
written may count in its shard's own postings before it counts in the statistics. ``CorpusStats.idf``
clamps a document frequency to the units, so such a lag moves scores a little and never breaks them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from processors.index.lexical import CorpusStats
from streams.kafka.reader import tail
from streams.kafka.settings import KafkaSettings
from streams.runtime.metrics import LEXICAL_UNITS
from streams.runtime.spec import Inbound
from streams.wire.codec import LEXICAL_COUNT
from streams.wire.records import (LEXICAL_SNAPSHOT_BEGIN, LEXICAL_SNAPSHOT_END, LexicalStatistics,
                                  parse_lexical_key)

__all__ = ["LexicalTable"]

logger = logging.getLogger(__name__)

_Key = tuple[str, str]
"""(field, term); term "" for the field's units and tokens."""


class LexicalTable:
    """Every shard's own lexical statistics and their sums, fed by :meth:`apply` (the records of
    ``<flow>.lexical-stats``), from a reader thread once :meth:`start` ed."""

    def __init__(self, analyzer: str, *, flow: str = "") -> None:
        """:param analyzer: the name of the analyzer the shards and the fan-out use (``Analyzer.name``).
        :param flow: the flow's topic prefix, for the ``streamsearch_lexical_units`` gauge."""
        self._analyzer = analyzer
        self._flow = flow
        self._own: dict[tuple[int, _Key], tuple[int, int, int]] = {}
        """Each shard's (partition's) value of a key, count and tokens, with the offset it came at (to tell a
        snapshot's keys from stale ones)."""
        self._snapshot_begins: dict[int, int] = {}
        self._sums: dict[_Key, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.records = 0
        """Records applied so far (a test waits on it)."""

    def apply(self, records: Iterable[Inbound]) -> None:
        """Take each record's value as its shard's (partition's) count for its key; a tombstone is zero.
        A record no shard writes (no key, a key without the separator, a value that does not decode) is
        logged and skipped: the table must keep serving."""
        with self._lock:
            for record in records:
                if record.key in (LEXICAL_SNAPSHOT_BEGIN, LEXICAL_SNAPSHOT_END):
                    self._snapshot_marker(record)
                    continue
                try:
                    key = parse_lexical_key(record.key or b"")
                    value = (0, 0) if record.value is None else _counts(record)
                except Exception as exc:  # anybody may write to the topic: skip what no shard wrote
                    logger.warning("lexical statistics: skipped a record", extra={
                        "partition": record.partition, "offset": record.offset, "error": str(exc)})
                    continue
                self._set(record.partition, key, value, record.offset)
                self.records += 1

    def _set(self, partition: int, key: _Key, value: tuple[int, int], offset: int) -> None:
        """One shard's value for a key, and the sum over shards following it."""
        old = self._own.pop((partition, key), (0, 0, -1))
        if value != (0, 0):
            self._own[(partition, key)] = (*value, offset)
        total = self._sums.get(key, (0, 0))
        total = (total[0] - old[0] + value[0], total[1] - old[1] + value[1])
        if total == (0, 0):
            self._sums.pop(key, None)
        else:
            self._sums[key] = total
        if not key[1]:
            LEXICAL_UNITS.labels(self._flow, key[0]).set(total[0])

    def _snapshot_marker(self, record: Inbound) -> None:
        """At a snapshot's begin, note where it starts; at its end, forget the partition's keys it did not
        refresh (last written before the begin): statistics a shard no longer holds."""
        if record.key == LEXICAL_SNAPSHOT_BEGIN:
            self._snapshot_begins[record.partition] = record.offset
            return
        begin = self._snapshot_begins.pop(record.partition, None)
        if begin is None:  # its begin was not read (the reader started past it): nothing to compare with
            return
        stale = [key for (partition, key), (_, _, offset) in self._own.items()
                 if partition == record.partition and offset < begin]
        for key in stale:
            self._set(record.partition, key, (0, 0), record.offset)

    def statistics(self, terms: Iterable[str], fields: Sequence[str] | None = None) -> LexicalStatistics:
        """The sums for these terms, per field: the named ones, or every field the table knows."""
        wanted = sorted(set(terms))
        with self._lock:
            names = sorted({field for field, term in self._sums if not term}) if fields is None else list(fields)
            per_field = {}
            for name in names:
                units, tokens = self._sums.get((name, ""), (0, 0))
                per_field[name] = CorpusStats(units, tokens, {term: self._sums.get((name, term), (0, 0))[0]
                                                              for term in wanted})
        return LexicalStatistics(self._analyzer, per_field)

    def start(self, settings: KafkaSettings, topic: str, partitions: int, *, client_id: str) -> None:
        """Follow every partition of ``topic`` from its beginning in a daemon thread until :meth:`close`."""
        starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]

        def follow() -> None:
            try:
                for fetched in tail(settings, starts, group_id=client_id, stop=self._stop, timeout=0.2):
                    if fetched.records:
                        self.apply([Inbound.of(msg) for msg in fetched.records])
            except Exception:  # a dead table must be visible: lexical searches would score with stale sums
                logger.exception("lexical statistics: the reader of %s stopped", topic)

        self._thread = threading.Thread(target=follow, name="lexical-table", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _counts(record: Inbound) -> tuple[int, int]:
    """(count, tokens) of a record; negative counts are refused."""
    value = LEXICAL_COUNT.decode_record(record.value, record.headers)
    if value.count < 0 or value.tokens < 0:
        raise ValueError("a negative count")
    return value.count, value.tokens
