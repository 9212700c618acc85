"""Request/reply client: index and delete on the ingest topic, search over query/reply topics.

Each client owns a one-partition reply topic; its listener (``streams.client.replies``) matches replies
to waiting futures by request id, so many searches can be in flight over one producer and one consumer.
The same consumer follows ``<flow>.versions``: searches go to the serving index version, and switch
when a reindex has built a new one (``streams/ops/versions.py``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message
from tqdm import tqdm

from processors.document import Document, validate_document
from streams.client.queries import (
    TOO_LARGE,
    VectorsLike,
    checked_timeout_s,
    query_documents,
    raise_for_errors,
    search_parameters,
    undelivered,
)
from streams.client.receipts import IndexReceipt
from streams.client.replies import ReplyListener
from streams.client.versions import ServingVersion
from streams.exceptions import DeliveryError, PayloadTooLargeError, RequestTimeoutError
from streams.flow.spec import DEFAULT_MAX_PAYLOAD_BYTES
from streams.kafka.admin import delete_topics, ensure_topics, require_flow
from streams.kafka.producer import DeliveryReport, StageProducer
from streams.kafka.reader import fetch_high_watermarks
from streams.kafka.settings import KafkaSettings
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT, REQUEST
from streams.wire.headers import query_headers
from streams.wire.records import Request, SearchReply
from streams.wire.topics import FlowTopics, TopicShape

if TYPE_CHECKING:
    from streams.client.progress import Searchable

__all__ = ["REPLY_GRACE_S", "Client"]

logger = logging.getLogger(__name__)

REPLY_GRACE_S = 2.0
"""How long past the deadline the client waits for the joiner's (partial) reply."""

class Client:
    """Talks to a running flow through Kafka only."""

    def __init__(
        self,
        flow: str,
        *,
        settings: KafkaSettings | None = None,
        timeout_s: float = 10.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        version: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """:param version: search this index version only; None follows the serving version.
        :param clock: this host's clock (epoch seconds), for the deadline and timestamp of a
            search; the flow measures the deadline on its own clock (see ``search_async``)."""
        self.topics = FlowTopics(flow, 1, version or 1)
        self._pinned = version is not None
        self.settings = settings or KafkaSettings.discover()
        self.timeout_s = timeout_s
        self.max_payload_bytes = max_payload_bytes
        self.reply_topic = self.topics.new_reply_topic()
        self._producer = StageProducer(self.settings, max_payload_bytes=max_payload_bytes)
        """Writes (index, delete): each call ends with a flush."""
        self._searches = StageProducer(self.settings, max_payload_bytes=max_payload_bytes, linger_ms=0)
        """Searches: never flushed (a failure reaches the search's future), so they must not linger."""
        self._replies: ReplyListener | None = None
        self._replies_lock = threading.Lock()
        self._clock = clock
        self._contacted = False
        self._contact_lock = threading.Lock()
        self._dead_letter_ends: dict[str, int] = {}

    # -- writes ----------------------------------------------------------------------------

    def index(self, docs: Iterable[Document], *, progress: bool = False, total: int | None = None) -> IndexReceipt:
        """Upsert documents (key = id) on the ingest topic and wait until all are delivered.

        :raises BrokerError: at the first call, within 10 s, when the broker cannot be reached.
        :raises UnknownFlowError: at the first call, when the broker has no such flow.
        :raises InvalidDocumentError: for an id or text the flow refuses (control characters, lone surrogates).
        :raises PayloadTooLargeError: before sending anything too large for the flow.
        :raises DeliveryError: if the broker did not take every record.
        """
        self._first_contact()
        self._producer.connect()  # its producer id asked for while the dead-letter end is read (0.5 s otherwise)
        receipt = IndexReceipt(dead_letters_from=self._dead_letters_end())
        delivered = self._producer.report(functools.partial(_note_delivery, receipt))
        with tqdm(total=total, unit="doc", desc="ingest", disable=not progress) as bar:  # closed on an error too
            for doc in docs:
                validate_document(doc)  # the stages refuse what fails this anyway: say so here, before sending
                value, headers = DOCUMENT.encode_record(doc)
                if len(value) > self.max_payload_bytes:
                    raise PayloadTooLargeError(
                        f"document {doc.id!r} is {len(value)} bytes, over max_payload_bytes={self.max_payload_bytes}")
                self._send(receipt, delivered, doc.id, value, headers)
                bar.update(1)
            self._flush()
        return receipt

    def delete(self, ids: Iterable[str]) -> IndexReceipt:
        """Delete documents by id: a tombstone per id on the ingest topic.

        :raises BrokerError: as ``index``; :raises UnknownFlowError: as ``index``.
        """
        self._first_contact()
        self._producer.connect()
        receipt = IndexReceipt()
        delivered = self._producer.report(functools.partial(_note_delivery, receipt))
        for doc_id in ids:
            self._send(receipt, delivered, doc_id, None, ())
        self._flush()
        return receipt

    def _first_contact(self) -> None:
        """Once: fail in seconds with one line when the broker cannot be reached or has no such
        flow, not after a 30 s delivery timeout (and before the client creates any topic).

        :raises BrokerError: if the broker is unreachable; :raises UnknownFlowError: no such flow.
        """
        with self._contact_lock:  # concurrent first calls (the HTTP bridge's thread pool) ask once
            if not self._contacted:
                require_flow(self.settings, self.topics)
                self._contacted = True

    def _dead_letters_end(self) -> dict[str, int]:
        """The end of the serving version's dead-letter topic, read once per version: a receipt's
        letters come after it, so a wait reads only those (0, the beginning, if unknown)."""
        topic = self.topics.dead_letter
        if topic not in self._dead_letter_ends:
            self._dead_letter_ends[topic] = fetch_high_watermarks(self.settings, {topic: 1}, timeout=5)[(topic, 0)]
        return {topic: self._dead_letter_ends[topic]}

    def wait_searchable(self, receipt: IndexReceipt, *, timeout: float = 60.0) -> Searchable:
        """Wait until every shard has applied ``receipt`` (read-your-writes); ``dead_letters`` of
        the result name the documents a stage dead-lettered on the way, with the reason.

        :raises RequestTimeoutError: naming the shards still behind, if ``timeout`` passes first.
        """
        from streams.client.progress import wait_searchable

        return wait_searchable(self, receipt, timeout=timeout)

    def _flush(self) -> None:
        """Wait until the writes are delivered.

        :raises PayloadTooLargeError: if the broker refused a write as too large for the topic.
        :raises DeliveryError: if any other write failed.
        """
        try:
            self._producer.flush()
        except DeliveryError as exc:
            writes = exc.failures
            if writes and all(f.error.code() in TOO_LARGE for f in writes):
                raise PayloadTooLargeError(
                    f"the broker refused {len(writes)} records as too large: {writes[0]}") from exc
            raise

    def _send(self, receipt: IndexReceipt, delivered: DeliveryReport, key: str, value: bytes | None,
              headers: Sequence[h.Header]) -> None:
        """Produce one write; ``delivered`` notes where it landed in ``receipt`` (one for all of a call's writes)."""
        self._producer.produce(self.topics.ingest, value=value, key=key, headers=headers, on_delivery=delivered)
        receipt.count += 1

    # -- search ----------------------------------------------------------------------------

    def search(self, texts: str | Sequence[str] | None = None, *, vectors: VectorsLike | None = None,
               timeout_s: float | None = None, **options: Any) -> SearchReply:
        """Search and wait for the reply; arguments as for ``search_async``. A reply with results
        is returned, even flagged ``partial`` with ``errors`` (a shard failed or missed the deadline).

        :raises ValueError: on invalid ``texts``/``vectors`` (see ``search_async``), before sending.
        :raises UnknownFlowError: at the first search, when the broker has no such flow.
        :raises SearchError: if the flow answered with errors and no results (an invalid request,
            one over a limit, a reply too large); ``errors`` lists them.
        :raises RequestExpiredError: if a stage took the request up only after its deadline.
        :raises RequestTimeoutError: if no reply came, not even a partial one.
        """
        return self._wait(self.search_async(texts, vectors=vectors, timeout_s=timeout_s, **options), timeout_s)

    def probe(self, *, after: IndexReceipt | None = None, timeout_s: float | None = None) -> SearchReply:
        """A search without a query: every shard answers at once with how fresh it is (``stale_shards``,
        ``restoring_shards``), and the reply has no documents. What "are these writes applied?" asks, in
        any flow (a text model's, an image model's, one without a model), without running a model.

        :raises: as :meth:`search`.
        """
        return self._wait(self._request("search", [], {"top_k": 1}, timeout_s, after), timeout_s)

    def _wait(self, future: concurrent.futures.Future[SearchReply], timeout_s: float | None) -> SearchReply:
        wait = (timeout_s or self.timeout_s) + REPLY_GRACE_S
        try:
            reply = future.result(timeout=wait)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise RequestTimeoutError(f"no reply within {wait:.1f}s: is the flow {self.topics.flow!r} running?") from exc
        raise_for_errors(reply)
        return reply

    def search_async(
        self,
        texts: str | Sequence[str] | None = None,
        *,
        vectors: VectorsLike | None = None,
        images: Sequence[bytes | str | Path] | None = None,
        top_k: int | None = None,
        timeout_s: float | None = None,
        after: IndexReceipt | None = None,
        filter_by: Sequence[str] | None = None,
        index_type: str | None = None,
        retrieval: str | None = None,
        fusion: str | None = None,
        filter: Mapping[str, Any] | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> concurrent.futures.Future[SearchReply]:
        """Send a search; the future resolves with the reply.

        Give ``texts`` (the flow's encoder embeds them), ``vectors`` (already embedded: the encoder
        is skipped), or both, one text per vector (a hybrid search in a flow without a model: the
        vector for the dense arm, the text for the lexical).

        :param texts: one query or several (answered together, one list of matches each; the
            query documents get ids ``q0``, ``q1``, ... in the reply and in ``ground_truth``).
        :param vectors: query embeddings, shape ``(n, d)``: one row per query (ids ``q0`` ...
            as for texts), ``d`` the flow's dimension; a numpy array or a list of lists of
            numbers, sent as float32 (little-endian). A search for one vector ``v`` is
            ``vectors=[v]`` (or ``v[None, :]``). A width other than the index's is answered with
            an error reply (``reply.errors``), like any invalid request.
        :param images: query images instead of texts or vectors, for a flow whose encoder embeds images
            (``ImageEncoder``): each the encoded bytes (PNG, JPEG, ...) or a path to read them from; ids
            ``q0`` ... An image that does not decode is answered with an error reply naming it.
        :param top_k: documents per query (the flow's default if None).
        :param timeout_s: the deadline, in seconds from when the broker appends the request (the
            flow's clock, not this host's: a host clock some seconds off does not shorten it);
            the reply comes by then, flagged partial if parts were missing.
        :param after: wait until the shards have applied these writes (read-your-writes).
        :param filter_by: search only these fields of a multi-field flow.
        :param index_type: answer from this shard index type (a name in ``processors.index.types.INDEX_TYPES``).
        :param retrieval: ``dense`` (the vectors), ``lexical`` (BM25 over the texts) or ``hybrid`` (both,
            fused): ``processors.query.parameters.RETRIEVALS``; the flow's default (dense) if None.
            ``lexical`` and ``hybrid`` need a flow whose index keeps the lexical arm (``lexical: true``);
            another flow answers with an error reply naming that.
        :param fusion: how ``hybrid`` fuses the arms: ``dbsf``, ``rrf`` or ``linear`` (``FUSIONS``).
        :param filter: conditions on the documents' tags, e.g. ``{"year": {"$gte": 2015}, "lang": "en"}``
            (``processors.query.filter``; README, "Filtered search"): only documents it accepts are searched,
            on fields the flow declares ``filterable``.
        :param parameters: any other request parameter (``query_language``, ``ground_truth``, ``rrf_k``,
            ``candidates``, ``dense_weight``, ...).
        :raises ValueError: if neither of ``texts`` and ``vectors`` is given, or both with different
            counts, a text is blank, ``vectors`` is not a non-empty 2-D array of finite numbers (float32 range), or
            ``timeout_s`` is over ``max_deadline_s`` (300 s), or ``top_k`` is not in
            ``1..max_top_k`` (the message names the limit), or ``retrieval`` or ``fusion`` is not
            one of its allowed values (the message names them), or ``filter`` is malformed.
        :raises PayloadTooLargeError: before sending a request over ``max_payload_bytes``; a
            request the broker refuses as too large fails its future with it.
        """
        queries = query_documents(texts, vectors, images)
        params = search_parameters(parameters, top_k=top_k, filter_by=filter_by, index_type=index_type,
                                   retrieval=retrieval, fusion=fusion, filter=filter)
        return self._request("search", queries, params, timeout_s, after)

    def _request(self, kind: str, queries: list[Document], params: dict[str, Any], timeout_s: float | None,
              after: IndexReceipt | None) -> concurrent.futures.Future[SearchReply]:
        """Send a request of ``kind``; the future resolves with its reply."""
        request_id = uuid.uuid4().hex
        wait_s = checked_timeout_s(self.timeout_s if timeout_s is None else timeout_s)
        sent_ms = int(self._clock() * 1000)
        deadline_ms = sent_ms + int(wait_s * 1000)
        request = Request(
            request_id=request_id, kind=kind, docs=queries,
            reply_to=self.reply_topic, deadline_ms=deadline_ms, parameters=params,
            min_offsets=dict(after.offsets) if after else {},
        )
        value, schema_header = REQUEST.encode_record(request)
        if len(value) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"search request is {len(value)} bytes, over max_payload_bytes={self.max_payload_bytes}")
        future = self._ensure_listener().expect(request_id)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:  # no reply will come: say why now, not at the deadline
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(undelivered(err, msg, len(value), self.topics.flow))

        headers = query_headers(request_id, self.reply_topic, deadline_ms,
                                timeout_ms=int(wait_s * 1000)) + schema_header
        try:
            self._searches.produce(self.topics.query, value=value, key=request_id, headers=headers,
                                   on_delivery=delivered, timestamp=sent_ms, best_effort=True)
        except KafkaException as exc:
            future.cancel()
            if exc.args and exc.args[0].code() in TOO_LARGE:
                raise PayloadTooLargeError(f"search request is {len(value)} bytes: {exc.args[0].str()}") from exc
            raise
        return future

    @property
    def version(self) -> int:
        """The index version searches go to now."""
        return self.topics.version

    def start(self) -> Client:
        """Create the reply topic and read the serving version now, not on the first search
        (a server calls this before it takes requests)."""
        self._ensure_listener()
        return self

    def _ensure_listener(self) -> ReplyListener:
        with self._replies_lock:
            if self._replies is None:
                self._first_contact()
                self._searches.connect()  # its producer id asked for while the reply topic is made (0.5 s otherwise)
                versions = self.topics.versions
                shared = [shape for shape in self.topics.shapes() if shape.name == versions]
                ensure_topics(self.settings, [TopicShape(self.reply_topic, 1), *shared],
                              max_payload_bytes=self.max_payload_bytes)
                self._replies = ReplyListener(self.settings, self.reply_topic, versions, on_serving=self._follow,
                                              between_reads=lambda: self._searches.poll(0))
                self._replies.start(wait_for_serving=not self._pinned)
            return self._replies

    def _follow(self, serving: ServingVersion) -> None:
        """Searches go to the serving version from now on (unless this client is pinned to one)."""
        if self._pinned or serving.version == self.topics.version:
            return
        logger.info("searches now go to index version %d (was %d)", serving.version, self.topics.version,
                    extra={"flow": self.topics.flow, "reason": serving.reason})
        self.topics = FlowTopics(self.topics.flow, 1, serving.version)

    def close(self) -> None:
        """Stop listening, delete the reply topic, flush what is queued."""
        if self._replies is not None:
            self._replies.stop()
            delete_topics(self.settings, [self.reply_topic])
            self._replies = None
        self._producer.close()
        self._searches.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _note_delivery(receipt: IndexReceipt, err: KafkaError | None, msg: Message) -> None:
    """A write's delivery report: where it landed goes into the receipt (a failure is the producer's to raise)."""
    if err is None:
        receipt.note(msg.partition(), msg.offset())
