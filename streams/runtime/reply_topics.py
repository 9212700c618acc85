"""Where a stage may send a reply: the flow's reply topics that exist, asked of the cluster.

A query-path record names its ``reply_to``; it is written by whoever can write to the query
topic. A stage answering it blindly would write into any topic (``<flow>.ingest``) or wait
``topic.metadata.propagation.max.ms`` (librdkafka's default 30 s; 2 s in ``StageProducer``) on
every batch for one that does not exist, and a reply topic disappears for good when its client
closes.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import queue
import threading
import time
import weakref
from collections import OrderedDict

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from streams.exceptions import ReplyTopicError
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import UNKNOWN_TOPIC_ERRORS
from streams.wire.topics import FlowTopics

__all__ = ["ReplyTopics"]

logger = logging.getLogger(__name__)


class ReplyTopics:
    """The reply topics of one flow that exist, remembered for a short while.

    A topic seen to exist is trusted for :attr:`EXISTS_TTL_S` (a client's topic lives as long as
    the client); one seen missing for :attr:`MISSING_TTL_S`, so a flood of records naming it costs
    one metadata request per interval. When the cluster does not answer, a topic counts as
    existing: a broker blip must not refuse good requests.

    Only a topic never seen is asked about on the caller's thread. One seen to exist is asked about
    again in the background once its time is up, and trusted meanwhile: the caller is a query path,
    and a lookup can wait its whole ``LOOKUP_TIMEOUT_S`` while a killed broker comes back. Asked on
    the query path, that held a query past its 5 s deadline when its topic's time was up then
    (``tests/e2e/test_cluster.py``, the exactly_once outage test: 5 runs in 12, two at a time on 2 cores).
    A topic deleted meanwhile costs a reply that fails delivery, and :meth:`gone` then takes it for
    missing at once. A topic never seen is looked up within what its query has left (``deadline_ms``, at least
    ``SHORTEST_LOOKUP_S``, at most ``LOOKUP_TIMEOUT_S``), so a new client's first query is not held for the
    whole timeout either. A lookup cut short that way and unanswered counts the topic as existing for
    ``MISSING_TTL_S`` only, then it is asked about again in the background with the whole timeout (the floor
    is short enough for a loaded cluster to miss it); any other lookup the cluster does not answer counts it as
    existing as before.
    """

    EXISTS_TTL_S = 30.0
    MISSING_TTL_S = 2.0
    REMEMBERED = 10_000
    LOOKUP_TIMEOUT_S = 5.0
    SHORTEST_LOOKUP_S = 0.2
    """The least a lookup on a caller's thread is given, however little its query has left: a healthy cluster
    answers in milliseconds, and a query past its deadline is answered with that error, which needs the topic."""

    def __init__(self, topics: FlowTopics, settings: KafkaSettings | None) -> None:
        """:param settings: the cluster to ask; None checks names only (processors under test)."""
        self._topics = topics
        self._settings = settings
        self._admin: AdminClient | None = None
        self._admin_lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self._refreshing: set[str] = set()
        """Topics queued or being asked about again in the background (:meth:`_refresh`)."""
        self._refresh_queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._refresher: threading.Thread | None = None
        self._lock = threading.Lock()

    def check(self, name: str, *, deadline_ms: int | None = None) -> None:
        """:param deadline_ms: its query's deadline (ms since the epoch): a lookup on this thread waits no longer
            than what is left (``exists``).
        :raises ReplyTopicError: if ``name`` is not a reply topic of the flow, or does not exist."""
        if not self._topics.is_reply_topic(name):
            raise ReplyTopicError(f"reply_to {name[:300]!r} is not a reply topic of flow {self._topics.flow!r} "
                                  f"(expected {self._topics.flow}.reply.<id>)")
        if not self.exists(name, deadline_ms=deadline_ms):
            raise ReplyTopicError(f"reply_to topic {name!r} does not exist (its client is gone)")

    def usable(self, name: str, *, deadline_ms: int | None = None) -> bool:
        """Whether a reply to ``name`` can be sent; never raises (it runs on a stage's deadline tick).

        :param deadline_ms: as for :meth:`check`."""
        try:
            self.check(name, deadline_ms=deadline_ms)
        except ReplyTopicError:
            return False
        except Exception:  # an unexpected answer of the cluster: try to send, delivery decides
            logger.debug("reply topic check failed", exc_info=True, extra={"topic": name[:300]})
        return True

    def gone(self, name: str) -> None:
        """A reply to ``name`` failed: take it for missing without asking (its client has left)."""
        with self._lock:
            self._store(name, False, time.monotonic() + self.MISSING_TTL_S)

    def exists(self, name: str, *, deadline_ms: int | None = None) -> bool:
        """Whether ``name`` exists, as last seen; asks the cluster on this thread only about a topic
        never seen (or seen missing, once that answer is out of date), waiting for its answer at most until
        ``deadline_ms`` (ms since the epoch; ``LOOKUP_TIMEOUT_S`` if None or later, ``SHORTEST_LOOKUP_S`` if
        sooner)."""
        if self._settings is None:
            return True
        now = time.monotonic()
        with self._lock:
            known = self._seen.get(name)
            if known is not None and now < known[1]:
                return known[0]
            if known is not None and known[0]:
                if name not in self._refreshing:
                    self._refreshing.add(name)
                    self._refresh_queue.put(name)
                    self._start_refresher()
                return True
        within_s = _seconds_left(deadline_ms)
        timeout_s = self.LOOKUP_TIMEOUT_S if within_s is None else min(
            self.LOOKUP_TIMEOUT_S, max(self.SHORTEST_LOOKUP_S, within_s))
        found = self._lookup(name, timeout_s)
        with self._lock:
            if found is None:  # no answer within what the query had left: taken for existing, briefly
                self._store(name, True, now + self.MISSING_TTL_S)
            else:
                self._store(name, found, self._trusted_until(found, now))
        return found is not False

    def _start_refresher(self) -> None:
        """The background lookups' thread, started (again, should it have died) under ``_lock``. It holds this
        object only weakly: a ``ReplyTopics`` dropped by its owner is freed, and its thread ends."""
        if self._refresher is not None and self._refresher.is_alive():
            return
        thread = threading.Thread(target=_refresh_while_alive, args=(weakref.ref(self), self._refresh_queue),
                                  name="reply-topic-lookups", daemon=True)
        thread.start()
        self._refresher = thread

    def _refresh(self, name: str) -> None:
        """Ask again about a topic seen to exist (on the background thread). The answer is kept only if nothing
        was learnt meanwhile: a reply that failed (:meth:`gone`) is fresher news than a lookup begun before it.
        A lookup that raises keeps the topic trusted for ``MISSING_TTL_S`` before the next try."""
        with self._lock:
            before = self._seen.get(name)
        asked_at = time.monotonic()
        try:
            found = self._lookup(name, self.LOOKUP_TIMEOUT_S) is not False
            until = self._trusted_until(found, asked_at)
        except Exception:  # the next one is asked about all the same
            logger.warning("reply topic lookup failed", exc_info=True, extra={"topic": name[:300]})
            found, until = True, asked_at + self.MISSING_TTL_S
        with self._lock:
            self._refreshing.discard(name)
            if self._seen.get(name) is before:
                self._store(name, found, until)

    def _trusted_until(self, found: bool, asked_at: float) -> float:
        return asked_at + (self.EXISTS_TTL_S if found else self.MISSING_TTL_S)

    def _store(self, name: str, found: bool, until: float) -> None:
        """Under ``_lock``: the answer about ``name``, trusted until ``until`` (``time.monotonic()``)."""
        self._seen[name] = (found, until)
        self._seen.move_to_end(name)
        while len(self._seen) > self.REMEMBERED:
            self._seen.popitem(last=False)

    def _lookup(self, name: str, timeout_s: float) -> bool | None:
        """Whether the cluster has ``name``: False only if it said "no such topic"; None if it did not answer within
        ``timeout_s``; True otherwise (it has it, or said something else)."""
        assert self._settings is not None
        with self._admin_lock:
            if self._admin is None:
                self._admin = AdminClient(self._settings.base())
            admin = self._admin
        admin.poll(0)  # serves its librdkafka log lines and errors, which would pile up unserved
        # DescribeTopics, not a metadata request: that one may auto-create the topic it names.
        future = admin.describe_topics(TopicCollection([name]), request_timeout=timeout_s)[name]
        try:
            future.result(timeout=timeout_s + 1)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() in UNKNOWN_TOPIC_ERRORS:
                return False
            logger.debug("reply topic lookup failed", extra={"topic": name, "error": str(exc)})
            return None if isinstance(error, KafkaError) and error.code() == KafkaError._TIMED_OUT else True
        except concurrent.futures.TimeoutError:
            return None
        except Exception as exc:  # anything else: the cluster did not say "no such topic"
            logger.debug("reply topic lookup failed", extra={"topic": name, "error": repr(exc)})
        return True


def _refresh_while_alive(owner: weakref.ref[ReplyTopics], names: queue.SimpleQueue[str]) -> None:
    """The background lookups of one ``ReplyTopics``, one at a time, however many clients' topics fall due together;
    ends once its owner is freed."""
    while True:
        try:
            name = names.get(timeout=5.0)
        except queue.Empty:
            if owner() is None:
                return
            continue
        topics = owner()
        if topics is None:
            return
        topics._refresh(name)
        del topics


def _seconds_left(deadline_ms: int | None) -> float | None:
    """Seconds until ``deadline_ms`` (ms since the epoch), negative once past; None for none. A deadline no float
    holds (a header's digits are a client's to choose) is past if negative (-inf), else no bound (None)."""
    try:
        return None if deadline_ms is None else deadline_ms / 1000 - time.time()
    except OverflowError:
        return -math.inf if deadline_ms < 0 else None
