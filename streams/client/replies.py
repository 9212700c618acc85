"""The client's one consumer: replies resolve the searches waiting for them, and the serving version is followed.

A client owns a one-partition reply topic; every search names it, and the joiner writes the reply there keyed
by request id. One thread reads it together with ``<flow>.versions`` (the record that says which index
version serves), so many searches can be in flight over one consumer.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable

from confluent_kafka import Message, TopicPartition

from streams.client.versions import ServingVersion, serving_of
from streams.kafka.consumer import headers_of, latency_fetch_wait_ms
from streams.kafka.reader import TopicReader
from streams.kafka.settings import KafkaSettings
from streams.wire.codec import SEARCH_REPLY
from streams.wire.records import SearchReply

__all__ = ["ReplyListener"]

logger = logging.getLogger(__name__)

SERVING_WAIT_S = 10.0
"""How long ``start`` waits to have read the serving version before searches go to the one it has."""


class ReplyListener:
    """Resolves each expected request's future with its reply, and reports serving-version changes.

    :param reply_topic: the client's own topic (created by the caller).
    :param versions_topic: ``<flow>.versions``.
    :param on_serving: called (on the listener's thread) with each serving record read.
    :param between_reads: called between reads (the client polls its search producer's delivery reports
        there: a refused search fails its future at once).
    """

    def __init__(self, settings: KafkaSettings, reply_topic: str, versions_topic: str, *,
                 on_serving: Callable[[ServingVersion], None], between_reads: Callable[[], None]) -> None:
        self.settings = settings
        self.reply_topic = reply_topic
        self.versions_topic = versions_topic
        self._on_serving = on_serving
        self._between_reads = between_reads
        self._futures: dict[str, concurrent.futures.Future[SearchReply]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def expect(self, request_id: str) -> concurrent.futures.Future[SearchReply]:
        """A future the reply to ``request_id`` resolves; forgotten when done (answered, failed, cancelled)."""
        future: concurrent.futures.Future[SearchReply] = concurrent.futures.Future()
        with self._lock:
            self._futures[request_id] = future
        future.add_done_callback(lambda _: self._forget(request_id))  # cancelled or timed out: no leak
        return future

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._futures.pop(request_id, None)

    def start(self, *, wait_for_serving: bool) -> None:
        """Start reading both topics from their beginning; with ``wait_for_serving``, return once
        ``<flow>.versions`` has been read to its end (or after ``SERVING_WAIT_S``, with a warning)."""
        reader = TopicReader(self.settings, group_id=self.reply_topic,
                             **{"fetch.wait.max.ms": latency_fetch_wait_ms(self.settings)})
        reader.assign([TopicPartition(self.reply_topic, 0, 0), TopicPartition(self.versions_topic, 0, 0)])
        ready = threading.Event()
        if not wait_for_serving:
            ready.set()
        self._thread = threading.Thread(target=self._listen, args=(reader, ready), daemon=True, name="replies")
        self._thread.start()
        if not ready.wait(SERVING_WAIT_S):
            logger.warning("serving version unknown after %.0fs: searching the version configured", SERVING_WAIT_S)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _listen(self, reader: TopicReader, ready: threading.Event) -> None:
        with reader:
            for fetched in reader.follow(self._stop, timeout=0.05, max_records=256):
                self._between_reads()
                for msg in fetched.records:
                    if msg.topic() == self.versions_topic:
                        self._follow(msg)
                    elif msg.value() is not None:
                        self._resolve(msg)
                if not ready.is_set() and ((self.versions_topic, 0) in fetched.ends
                                           or reader.at_fetched_end(self.versions_topic, 0)):
                    ready.set()

    def _resolve(self, msg: Message) -> None:
        try:
            reply = SEARCH_REPLY.decode_record(msg.value(), headers_of(msg))
        except Exception:
            logger.exception("undecodable reply")
            return
        with self._lock:
            future = self._futures.pop(reply.request_id, None)
        if future is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled meanwhile
                future.set_result(reply)

    def _follow(self, msg: Message) -> None:
        try:
            serving = serving_of(msg)
        except Exception:
            logger.exception("undecodable serving-version record")
            return
        if serving is not None:
            self._on_serving(serving)
