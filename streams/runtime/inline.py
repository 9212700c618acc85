"""A query path served inline, on the index path's thread: a shard's, whose search reads what its ingest
writes and whose two consumers one rebalance moves together.

One thread then decides, each round, which consumer to block on when idle (the query consumer, or the
index consumer while a search awaits a write there), applies the writes a query batch awaits before
answering it, and cuts index batches in slices with the queries already fetched served between them
(``streams/runtime/batch.py``). A query path with a thread of its own (the encode stage's) needs none of it.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Message

from streams.runtime.batch import Slicing
from streams.runtime.paths import InputPath
from streams.runtime.rebalance import Rebalance
from streams.runtime.spec import Inbound

__all__ = ["InlineQueries"]

Fetch = Callable[[InputPath, float], list[Message]]
"""Fetches what a path's consumer holds, waiting up to so many seconds for something."""
Take = Callable[[InputPath, list[Message]], bool]
"""Takes what a fetch brought (processes its records, notes partition ends); whether it held records."""


class InlineQueries:
    """The order in which one thread polls an index path and the query path it serves inline."""

    IDLE_POLL_S = 0.02
    """How long an idle loop blocks on one consumer."""
    AWAITING_POLL_S = 0.005
    """How long an idle loop blocks on the index consumer while a search awaits a write there (``AwaitsWrites``):
    the write is taken as soon as it is fetched; a new query waits this long meanwhile, and for the first slice of
    what that poll brings."""
    SERVE_BETWEEN_SLICES_S = 2.0
    """``Slicing.serve_for_s`` of an index batch."""

    def __init__(self, *, fetch: Fetch, take: Take, rebalance: Rebalance) -> None:
        self._fetch = fetch
        self._take = take
        self._rebalance = rebalance
        self.index_has_backlog = False
        """The last poll of the index path fetched records: more are likely waiting."""
        self.between_slices = False
        """Queries are being served between two slices of an index batch."""
        self._writes_applying = False
        """An index batch applied before a query batch that awaits it (``apply_fetched_writes``): whole, since
        the queries it would serve between slices would overtake the batch that waits."""

    def _poll(self, path: InputPath, timeout: float) -> bool:
        """Fetch for up to ``timeout`` seconds and take what came; whether records came."""
        return self._take(path, self._fetch(path, timeout))

    def poll(self, index: InputPath | None, query: InputPath | None) -> None:
        """One round of polls: the query path first (blocking briefly when idle), then the index path.

        :param query: the query path when this thread serves it, else None (the index path alone, blocking
            when idle).
        """
        awaiting = self._awaiting_writes(index, query)
        busy = False
        if query is not None:
            idle_wait = 0.0 if index is not None and (self.index_has_backlog or awaiting) else self.IDLE_POLL_S
            busy = self._poll(query, idle_wait)
        if index is not None:
            index_wait = 0.0 if busy else self.AWAITING_POLL_S if awaiting else 0.0 if query else self.IDLE_POLL_S
            self.index_has_backlog = self._poll(index, index_wait)

    @staticmethod
    def _awaiting_writes(index: InputPath | None, query: InputPath | None) -> bool:
        """Whether the query path this thread serves holds a request for a write the index path has not applied
        (``AwaitsWrites``): then the loop blocks on the index consumer when idle, not the query consumer."""
        held = query.spec.awaits_writes if query is not None and index is not None else None
        return held is not None and held.awaiting_writes

    def writes_first(self, index: InputPath, query: InputPath, records: list[Inbound]) -> bool:
        """Whether this query batch would hold a request for a write of the index path not yet applied
        (``AwaitsWrites``), while no index batch is under way (between its slices) and the index path has no
        backlog (its last poll found nothing): what it has fetched since is then a few writes, most likely the
        awaited one. Behind a bulk ingest the awaited write is further back, and applying a whole batch first
        would hold every query of this batch for it, where a slice holds them otherwise."""
        held = query.spec.awaits_writes
        return (held is not None and not self.between_slices and not self.index_has_backlog
                and held.would_await(records))

    def apply_fetched_writes(self, index: InputPath, query: InputPath, records: list[Inbound]) -> list[Inbound]:
        """Apply what the index consumer has fetched (most likely the write a request of ``records`` names),
        whole, before answering ``records``: answered first, the held request's search ran after the others'
        (two shards of one process searched one after the other instead of side by side: 296 of 300 write→found
        searches were held so; ``benchmarks/query_hops.py --fresh``, 2 shards of 100,000 vectors, end to end p50
        34-36 ms before, 25 after, the shard's hop 26 then 16-17). Returns the records of partitions still assigned: a
        rebalance during that poll gave the others to a new owner, who reads them again (uncommitted here).
        """
        releases = self._rebalance.releases
        self._writes_applying = True
        try:
            self._poll(index, 0.0)
        finally:
            self._writes_applying = False
        if self._rebalance.releases == releases:
            return records
        assigned = query.assignment()
        return [record for record in records if (record.topic, record.partition) in assigned]

    def slicing(self, index: InputPath, query: InputPath) -> Slicing | None:
        """How an index batch is cut: in slices of ``PathSpec.slice_records``, the queries already fetched served
        between two; whole when applied for a query batch that awaits it."""
        if self._writes_applying:
            return None
        return Slicing(index.spec.slice_records, lambda drop_notes: self._serve_between_slices(query, drop_notes),
                       self.SERVE_BETWEEN_SLICES_S)

    def _serve_between_slices(self, query: InputPath, drop_notes: Callable[[], None]) -> None:
        """Between two slices of an index batch: the queries already fetched, and the handler's timers (a search
        parked for a write the last slice applied), after ``drop_notes`` (the batch's in-flight notes). The index
        consumer is not polled meanwhile (``StageLoop._call``): a rebalance would close the shard the rest of the
        batch applies to. Nothing fetched and no parked search to answer yet (``AwaitsWrites.answerable``; a handler
        that does not await writes parks none, and its timers wait for the loop's next round): nothing runs, and
        the notes stay. A search parked for a write a bulk ingest has not reached yet waits so for thousands of
        slices."""
        self.between_slices = True
        try:
            fetched = self._fetch(query, 0.0)
            held = query.spec.awaits_writes
            if not fetched and (held is None or not held.answerable()):
                return
            drop_notes()
            self._take(query, fetched)
            query.tick()
        finally:
            self.between_slices = False
