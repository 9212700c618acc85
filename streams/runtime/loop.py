"""The stage loop: poll -> decode -> process -> produce -> commit, for every stage.

A stage has up to two input paths, each with its own consumer and producer: the index path
(ingest, segmented, encoded) and the query path (query, search, partials). When the paths share
no state (the encode stage), the query path runs in a thread of its own, so a query never waits
behind the index path: its backlog, a long batch, or a commit that waits for a broker failover
(a transaction of ``exactly_once``, a flush). When they do (the shard: its search reads what its
ingest writes, and one rebalance moves both), one thread serves both (``inline``). Stages differ
only in their ``StageSpec``.

The loop composes the parts of ``streams/runtime/``: ``spec`` (what stages and handlers declare), ``paths``
(one input path, opened), ``batch`` (one batch, in slices where queries wait), ``failures`` (isolate, retry,
reject or dead-letter), ``outputs`` (sizes, reply gating), ``keepalive`` (long batches), ``rebalance`` (what a
stateful handler is told), ``reporting`` (status, lag, membership), ``checkpoint``/``inflight`` (commits, crash loops).
"""


from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from typing import IO

from confluent_kafka import KafkaError, Message

from streams.kafka.consumer import consume_batch
from streams.kafka.producer import StageProducer
from streams.kafka.settings import KafkaSettings
from streams.runtime.batch import take_batch
from streams.runtime.failures import DeadLetterTopic
from streams.runtime.inflight import InFlightLog
from streams.runtime.inline import InlineQueries
from streams.runtime.metrics import serve_metrics
from streams.runtime.outputs import Outputs, TopicLimits
from streams.runtime.paths import InputPath, open_path, transactional_id
from streams.runtime.rebalance import Rebalance
from streams.runtime.reporting import MembershipWatch, StatusReport, report_lag
from streams.runtime.spec import Inbound, Output, PathSpec, StageSpec

__all__ = ["StageLoop"]

logger = logging.getLogger(__name__)


class StageLoop:
    """Runs one stage until stopped; safe to stop from a signal handler or another thread."""

    IDLE_POLL_S = InlineQueries.IDLE_POLL_S
    WATCH_EVERY_S = 0.1
    KEEPALIVE_S = 2.0
    REPORT_EVERY_S = 5.0
    """Lag, status and membership checks."""
    ORPHANED_AFTER_S = 60.0

    def __init__(self, spec: StageSpec, settings: KafkaSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.producer = StageProducer(settings, max_payload_bytes=spec.max_payload_bytes)
        """Status reports only: a record of a report waiting for a broker failover holds no path's flush."""
        self._stop = threading.Event()
        self._index: InputPath | None = None
        self._query: InputPath | None = None
        self._query_thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._next_lag_report = 0.0
        self._failed = False
        self._topic_limits = TopicLimits(settings, spec.max_payload_bytes)
        self._outputs = Outputs(spec, self._topic_limits)
        self._letters = DeadLetterTopic(spec)
        self._status = StatusReport(spec, self.producer)
        self._membership = MembershipWatch(self.ORPHANED_AFTER_S)
        self._rebalance = Rebalance(spec.name)
        self._inline = InlineQueries(fetch=self._fetch, take=self._took, rebalance=self._rebalance)
        self._fault_report: IO[str] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    @property
    def processed(self) -> int:
        return sum(path.processed for path in (self._index, self._query) if path is not None)

    @property
    def dead_letters(self) -> int:
        return self._letters.count

    def run(self) -> None:
        """Subscribe and loop until ``stop``; commits and leaves the group on the way out."""
        self._start()
        if self._index is not None and self._query is not None and not self._query.spec.follow_index_path:
            self._query_thread = threading.Thread(target=self._serve_queries, name="query-path", daemon=True)
            self._query_thread.start()
        transactions = {"transactional_id": transactional_id(self.spec)} if self.spec.exactly_once else {}
        logger.info("stage running", extra={"stage": self.spec.name, "flow": self.spec.flow, **transactions})
        try:
            while not self._stop.is_set():
                self.step()
            if self._thread_error is not None:
                raise self._thread_error
        except BaseException:
            self._failed = True  # what is pending may be undelivered: leave it uncommitted
            self._join_query_thread()
            for path in (self._index, self._query):
                if path is not None and path.inflight is not None:
                    path.inflight.abandon()  # an exception of ours, not a record that killed the process
            raise
        finally:
            self._join_query_thread()
            self._close()

    def _serve_queries(self) -> None:
        """The query path's own loop (paths that share no state): whatever the index path waits for
        (a transaction's commit during a broker failover, a flush, a long batch), queries go on. An
        exception stops the stage: the main thread raises it."""
        assert self._query is not None
        next_report = 0.0
        try:
            while not self._stop.is_set():
                self._poll(self._query, self.IDLE_POLL_S)
                self._query.tick()
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + self.REPORT_EVERY_S
                    report_lag(self.spec, self._paths_of_this_thread())
                    self._watch_membership()
        except BaseException as exc:  # noqa: BLE001 - raised by run() in the main thread
            logger.exception("query path failed", extra={"stage": self.spec.name})
            self._thread_error = exc
            self._stop.set()

    def _paths_of_this_thread(self) -> list[InputPath]:
        """The paths whose consumer the calling thread polls. A consumer is used by one thread only:
        confluent-kafka's ``assignment()`` waits for ever while another thread polls the consumer."""
        if threading.current_thread() is self._query_thread:
            return [self._query] if self._query is not None else []
        owned = (self._index,) if self._query_thread is not None else (self._index, self._query)
        return [path for path in owned if path is not None]

    def _join_query_thread(self) -> None:
        if self._query_thread is not None:
            self._stop.set()
            self._query_thread.join()

    def _path(self, spec: PathSpec, *, transactional: bool = False) -> InputPath:
        return open_path(self.spec, spec, self.settings, outputs=self._outputs, letters=self._letters,
                         transactional=transactional, keepalive_s=self.KEEPALIVE_S, watch_every_s=self.WATCH_EVERY_S)

    def _start(self) -> None:
        serve_metrics(self.spec.metrics_port)
        if self.spec.inflight_dir is not None:
            self._fault_report = InFlightLog(self.spec.inflight_dir, "").enable_fault_reports()
        if self.spec.query_path is not None:
            self._query = self._path(self.spec.query_path)
        if self.spec.index_path is not None:
            self._index = self._path(self.spec.index_path, transactional=self.spec.exactly_once)
        self._rebalance.subscribe(self._index, self._query)

    def step(self) -> None:
        """One round: queries first (blocking briefly when idle), then ingest, then timers. Queries
        only when this thread serves them (``streams/runtime/inline.py``; else :meth:`_serve_queries`)."""
        query = self._query if self._query_thread is None else None
        self._inline.poll(self._index, query)
        if self._index is not None and self._index.restore is not None:
            self._index.restore.watch()
        for path in (query, self._index):
            if path is not None:
                path.tick()
        if time.monotonic() >= self._next_lag_report:
            self._next_lag_report = time.monotonic() + self.REPORT_EVERY_S
            report_lag(self.spec, self._paths_of_this_thread())
            self._status.publish(self.processed, self.dead_letters, self._index)
            self._watch_membership()

    def _watch_membership(self) -> None:
        self._membership.check(self._paths_of_this_thread())

    def _close(self) -> None:
        # The index consumer first: closing it revokes its partitions, and the revoke callback
        # unassigns the query partitions that mirror them on the query consumer, still open.
        for path in (self._index, self._query):
            if path is not None:
                path.close(commit=not self._failed)  # a failed stage's pending outputs may be undelivered
        self.producer.close()
        if self._rebalance.error is not None:
            logger.error("rebalance callback failed during close", extra={"error": repr(self._rebalance.error)})
        if self.spec.inflight_dir is not None:
            InFlightLog(self.spec.inflight_dir, "").disable_fault_reports(self._fault_report)
        if self.spec.index_path is not None and (state := self.spec.index_path.partition_aware) is not None:
            state.close()
        logger.info("stage stopped", extra={"stage": self.spec.name, "processed": self.processed})

    # -- one batch -------------------------------------------------------------------------

    def _poll(self, path: InputPath, timeout: float) -> bool:
        """Fetch for up to ``timeout`` seconds and take what came; whether records came."""
        return self._took(path, self._fetch(path, timeout))

    def _fetch(self, path: InputPath, timeout: float) -> list[Message]:
        """What the path's consumer holds (up to its batch size), waiting up to ``timeout`` seconds for the first;
        with ``gather_ms``, and the copies that follow within it."""
        messages = consume_batch(path.consumer, max_records=path.spec.batch_size, timeout=timeout)
        if messages and path.spec.gather_ms:
            messages += path.gather(messages)
        return messages

    def _took(self, path: InputPath, messages: list[Message]) -> bool:
        """Take what a fetch brought: its records as a batch, its partition ends and offsets out of range to the
        restore; whether it held records."""
        self._rebalance.raise_error()
        records, ends, out_of_range = [], [], []
        for msg in messages:
            err = msg.error()
            if err is None:
                records.append(Inbound.of(msg))
            elif err.code() == KafkaError._PARTITION_EOF:
                ends.append(msg.partition())
            elif err.code() == KafkaError._AUTO_OFFSET_RESET and path.restore is not None:
                out_of_range.append((msg.topic(), msg.partition()))
            else:
                logger.warning("consume error", extra={"stage": self.spec.name, "error": str(err)})
        pair = self._inline_pair() if records and path is self._query else None
        if pair is not None and self._inline.writes_first(*pair, records):
            records = self._inline.apply_fetched_writes(*pair, records)
        if records:
            self._take(path, records)
        if path.restore is not None:
            for topic, partition in out_of_range:  # after the batch: the handler judges what it has applied
                path.restore.out_of_range(topic, partition)
            path.restore.ends(ends)
        return bool(records)

    def _take(self, path: InputPath, records: list[Inbound]) -> None:
        """Take a batch (``streams/runtime/batch.py``): an index batch in slices of ``PathSpec.slice_records``
        when this thread also serves a query path, except one applied for a query that awaits it."""
        pair = self._inline_pair()
        slicing = self._inline.slicing(*pair) if pair is not None and path is pair[0] else None
        take_batch(path, records, stage=self.spec, limits=self._topic_limits, call=functools.partial(self._call, path),
                   slicing=slicing)

    def _inline_pair(self) -> tuple[InputPath, InputPath] | None:
        """The index path and the query path this thread serves inline with it (``InlineQueries``), if any."""
        if self._index is None or self._query is None or self._query_thread is not None:
            return None
        return self._index, self._query

    def _call(self, path: InputPath, records: list[Inbound]) -> list[Output]:
        """``handler.process(records)``: a stateless handler's in the path's worker thread, keeping this
        member in its groups however long it runs (``streams/runtime/keepalive.py``)."""
        if path.keepalive is None:
            return path.spec.handler.process(records)
        applying = self._index if self._inline.between_slices else None  # not polled: no revoke under its batch
        consumers = [p.consumer for p in self._paths_of_this_thread() if p is not applying]
        return path.keepalive.call(path.spec.handler.process, records, consumers)
