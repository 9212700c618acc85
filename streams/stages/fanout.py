"""The query path of the encode stage: embed each query once, fan it out to every shard.

The request goes to every partition of ``<flow>.search`` (shard p answers partition p), and
an opening part goes to ``<flow>.partials`` so the joiner answers by the deadline even if no
shard does.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Iterator, Sequence, TypeVar

from processors.document import Document
from processors.encoders.base import Encoder
from processors.exceptions import BadDocumentError
from processors.index.lexical import Analyzer
from processors.index.types import INDEX_TYPES
from processors.query.filter import FieldSchema
from processors.query.limits import CLOCK_SKEW_MS, REQUEST_LIMITS, RequestLimits
from processors.query.lookups import describe
from processors.query.parameters import DENSE, LEXICAL, InvalidParameterError, SearchParameters
from streams.wire import headers as h
from streams.wire.headers import query_headers
from streams.exceptions import RequestExpiredError, SerdeError
from streams.runtime.metrics import EXPIRED_REQUESTS
from streams.wire.codec import PARTIAL_RESULT, REQUEST, SEARCH_REPLY, Codec
from streams.wire.records import PartialResult, Request, SearchReply
from streams.runtime.spec import Inbound, Output, PathHandler
from streams.runtime.reply_topics import ReplyTopics
from streams.wire.topics import FlowTopics
from streams.logs import CountedThrottle
from streams.stages.kinds import ENCODE
from streams.stages.lexical_table import LexicalTable

__all__ = ["DEFAULT_TIMEOUT_MS", "ExpiredRequests", "QueryFanout", "is_expired", "split_expired", "decode_live",
           "error_reply", "flow_deadline_ms", "created_ms_of"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


DEFAULT_TIMEOUT_MS = 10_000
"""A query-path record without a deadline header expires this long after its timestamp
(``SearchDefaults.timeout_s``; the encode stage uses its flow's)."""


def is_expired(record: Inbound, default_timeout_ms: int = DEFAULT_TIMEOUT_MS) -> bool:
    """A query-path record nobody waits for any more (checked without decoding).

    :param default_timeout_ms: a record without a (readable) deadline header expires this long
        after its timestamp, so one that cannot be answered is not taken up again for ever.
    """
    deadline = h.read_int(record.headers, h.DEADLINE_MS)
    if deadline is None:
        deadline = record.timestamp_ms + default_timeout_ms
    return deadline < time.time() * 1000


def split_expired(records: Sequence[Inbound], default_timeout_ms: int = DEFAULT_TIMEOUT_MS
                  ) -> tuple[list[Inbound], list[Inbound]]:
    """The records somebody still waits for, and the expired ones (by ``is_expired``)."""
    live: list[Inbound] = []
    expired: list[Inbound] = []
    for record in records:
        (expired if is_expired(record, default_timeout_ms) else live).append(record)
    return live, expired


def flow_deadline_ms(record: Inbound, now_ms: float, default_timeout_ms: int = DEFAULT_TIMEOUT_MS) -> int:
    """A query record's deadline on the flow's clock: its timeout after it entered Kafka.

    The client's deadline header is read on the client's clock, and a host some seconds behind
    would see every request expire before a stage reads it. So the timeout (``ss-timeout-ms``;
    else the deadline header less the CreateTime, both the producer's clock) counts from the
    record's LogAppendTime (the broker's clock; the query topic is created with it), or, for a
    CreateTime, from that time trusted to within :data:`CLOCK_SKEW_MS` of now: a client's clock may
    be that far behind or ahead, and a request from a backlog still expires.

    :param default_timeout_ms: the timeout of a record that names none.
    """
    timeout = h.read_int(record.headers, h.TIMEOUT_MS)
    deadline = h.read_int(record.headers, h.DEADLINE_MS)
    if record.log_append_time:
        if timeout is None and deadline is not None:  # an absolute deadline alone: nothing to rebase it on
            return deadline
        entered = float(record.timestamp_ms)
    else:
        entered = min(now_ms, record.timestamp_ms + CLOCK_SKEW_MS)
        if timeout is None and deadline is not None:
            timeout = deadline - record.timestamp_ms
    return int(entered + (default_timeout_ms if timeout is None else timeout))


class ExpiredRequests:
    """Requests a stage took up only after their deadline: each answered with a
    ``RequestExpiredError`` (where its headers name a reply topic), counted in
    ``streamsearch_expired_requests_total``, and logged at most once per ``interval_s``."""

    def __init__(self, *, flow: str, stage: str, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metric = EXPIRED_REQUESTS.labels(flow, stage)
        self._stage = stage
        self._throttle = CountedThrottle(interval_s, clock)

    def answer(self, record: Inbound, deadline_ms: float, now_ms: float) -> list[Output]:
        """The error reply for one expired request; counts and (rate-limited) logs it."""
        late_ms = max(0, int(now_ms - deadline_ms))
        self._metric.inc()
        if (expired := self._throttle.add()) is not None:
            logger.warning(f"{self._stage}: {expired} request(s) taken up after their deadline, answered "
                           f"with RequestExpiredError, e.g. one {late_ms} ms late: the stage is behind its input",
                           extra={"stage": self._stage, "late_ms": late_ms, "expired": expired})
        return error_reply(record, RequestExpiredError(
            f"the {self._stage} stage took the request up {late_ms} ms after its deadline (a backlog, or a stage "
            "restarting): not searched; retry, or raise the timeout"))


def decode_live(records: Sequence[Inbound], codec: Codec[T], *,
                default_timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Iterator[tuple[Inbound, T]]:
    """Decode the query-path records somebody still waits for; expired ones are skipped.

    :param default_timeout_ms: the deadline of a record without one, after its timestamp.
    :raises SerdeError: on a malformed record (the loop isolates and dead-letters it).
    """
    for record in records:
        if is_expired(record, default_timeout_ms):
            continue
        if record.value is None:
            raise SerdeError("a query-path record needs a value")
        yield record, codec.decode_record(record.value, record.headers)


def created_ms_of(record: Inbound) -> int:
    """When the query entered the flow: the header if set upstream, else this record's timestamp."""
    created = h.read_int(record.headers, h.CREATED_MS)
    return created if created is not None else record.timestamp_ms


def error_reply(record: Inbound, error: Exception) -> list[Output]:
    """Answer a failed query at once, if its headers say where: never leave a client waiting."""
    request_id = record.headers.get(h.REQUEST_ID)
    reply_to = record.headers.get(h.REPLY_TO)
    if not request_id or not reply_to:
        return []
    reply = SearchReply(
        request_id=request_id.decode(errors="replace"), docs=[], partial=True, missing_shards=[], stale_shards=[],
        errors=[f"{type(error).__name__}: {error}"],
    )
    value, headers = SEARCH_REPLY.encode_record(reply, ((h.REQUEST_ID, request_id),))
    return [Output(reply_to.decode(errors="replace"), value, request_id, None, headers, reply=True,
                   deadline_ms=h.read_int(record.headers, h.DEADLINE_MS))]


class QueryFanout(PathHandler):
    """Encodes the query documents at root level and sends one copy per shard. A query document
    that carries an embedding (``Client.search(vectors=...)``) is not encoded: the encoder only
    checks its dimension, and a batch of such queries never touches the model. In a flow without a
    model (no ``stages.encode``: the join stage fans out) every query must carry its vector.

    A search the lexical arm answers (``retrieval: lexical`` or ``hybrid``) leaves with the corpus-wide
    statistics of its terms (``LexicalTable``); a ``lexical`` one is not encoded at all."""

    MINI_BATCH_DOCS = 32
    """Query documents encoded at a time; the deadlines are checked between mini-batches, so a
    request whose client has given up is not encoded (64 texts of 128 tokens take seconds here)."""

    def __init__(self, *, encoder: Encoder | None, topics: FlowTopics, defaults: SearchParameters,
                 fields: Sequence[str] = (), filterable: FieldSchema | None = None,
                 limits: RequestLimits = REQUEST_LIMITS,
                 timeout_s: float = DEFAULT_TIMEOUT_MS / 1000, reply_topics: ReplyTopics | None = None,
                 dim: int | None = None, stage: str = ENCODE.name,
                 lexical: tuple[Analyzer, LexicalTable] | None = None) -> None:
        """:param encoder: None in a flow without a model: a text query is refused, naming the missing encoder.
        :param filterable: the index's filterable fields and types: a ``filter`` on another is refused here.
        :param lexical: the analyzer and the statistics table, in a flow whose index keeps the lexical arm;
            None: ``retrieval: lexical`` and ``hybrid`` are refused.
        :param dim: the vectors' dimension when there is no encoder (the index's ``dim``).
        :param reply_topics: where replies may go; None: checks reply topic names only.
        :param stage: the stage it runs in (metrics, logs): encode, or join in a flow without a model.
        :raises ValueError: with neither an encoder nor a dimension.
        """
        if encoder is None and dim is None:
            raise ValueError("a fan-out without an encoder needs the vectors' dimension")
        self._reply_topics = reply_topics or ReplyTopics(topics, None)
        self._encoder = encoder
        self._dim = dim
        self._timeout_ms = int(timeout_s * 1000)
        self._topics = topics
        self._defaults = defaults
        self._fields = tuple(fields)
        self._filterable = dict(filterable or {})
        self._limits = limits
        self._lexical = lexical
        self._expired = ExpiredRequests(flow=topics.flow, stage=stage)

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        """Rebase each request's deadline on the flow's clock, answer the expired ones with an
        error, check and encode the rest, and fan them out."""
        now_ms = time.time() * 1000
        live: list[tuple[Inbound, Request]] = []
        expired: list[tuple[Inbound, int]] = []
        for record in records:  # all decoded and checked before anything is counted: a failed batch is retried
            deadline_ms = flow_deadline_ms(record, now_ms, self._timeout_ms)
            if deadline_ms < now_ms:  # answered undecoded: a backlog costs no decoding
                expired.append((record, deadline_ms))
                continue
            if record.value is None:
                raise SerdeError("a query-path record needs a value")
            request = REQUEST.decode_record(record.value, record.headers)
            live.append((record, self._check(request, deadline_ms)))
        outputs = [out for record, deadline_ms in expired for out in self._expired.answer(record, deadline_ms, now_ms)]
        for batch in self._mini_batches(live):
            now_ms = time.time() * 1000
            for record, request in batch:
                if request.deadline_ms < now_ms:  # expired meanwhile: say so, do not encode it
                    outputs.extend(self._expired.answer(record, request.deadline_ms, now_ms))
            batch = [item for item in batch if item[1].deadline_ms >= now_ms]
            if not batch:
                continue
            for record, request, refused in self._encoded(batch):
                if refused is not None:
                    outputs.extend(error_reply(record, refused))
                else:
                    outputs.extend(self._fan_out(created_ms_of(record), self._with_statistics(request)))
        return outputs

    def _encoded(self, batch: list[tuple[Inbound, Request]]
                 ) -> Iterator[tuple[Inbound, Request, InvalidParameterError | BadDocumentError | None]]:
        """Each request with its query documents embedded (those the dense arm reads), in one encoder call;
        when a query cannot be (an image that does not decode), each request on its own, so that only
        the one at fault is refused. A dense query left without a vector (an image query to a text
        encoder, a text to an image encoder) is refused naming that."""
        dense = [i for i, (_, request) in enumerate(batch) if request.parameters["retrieval"] != LEXICAL]
        encoded: dict[int, list[Document]] = {}  # by place in the batch: two requests may share an id
        if self._encoder is not None and dense:
            try:
                docs = iter(self._encoder.run(docs=[d for i in dense for d in batch[i][1].docs],
                                              traversal_paths=["r"]).docs)
                encoded = {i: [next(docs) for _ in batch[i][1].docs] for i in dense}
            except BadDocumentError:
                encoded = {}
        for i, (record, request) in enumerate(batch):
            if request.parameters["retrieval"] == LEXICAL:  # checked in _check: no second parse
                yield record, request, None
                continue
            try:
                docs = encoded[i] if i in encoded else (
                    list(self._encoder.run(docs=request.docs, traversal_paths=["r"]).docs) if self._encoder
                    else request.docs)
            except BadDocumentError as exc:
                yield record, request, exc
                continue
            unembedded = [doc.id for doc in docs if doc.embedding is None]
            if unembedded:
                yield record, request, InvalidParameterError(
                    f"query documents {unembedded[:5]} have nothing this flow's encoder "
                    f"({type(self._encoder).__name__}) embeds: a text for a text model, an image for an image model, "
                    "either for a cross-modal one")
                continue
            yield record, dataclasses.replace(request, docs=docs), None

    def _mini_batches(self, live: list[tuple[Inbound, Request]]) -> Iterator[list[tuple[Inbound, Request]]]:
        """Requests in groups of about ``MINI_BATCH_DOCS`` documents, those due first first."""
        batch: list[tuple[Inbound, Request]] = []
        size = 0
        for item in sorted(live, key=lambda item: item[1].deadline_ms):
            if batch and size + len(item[1].docs) > self.MINI_BATCH_DOCS:
                yield batch
                batch, size = [], 0
            batch.append(item)
            size += len(item[1].docs)
        if batch:
            yield batch

    def _with_statistics(self, request: Request) -> Request:
        """The request with the statistics of its terms, when the lexical arm answers it."""
        if request.parameters["retrieval"] == DENSE or self._lexical is None:
            return request
        analyzer, table = self._lexical
        terms = [term for doc in request.docs for term in analyzer.terms(doc.text or "")]
        return dataclasses.replace(request, lexical_statistics=table.statistics(terms, request.parameters["filter_by"]))

    def _fan_out(self, created_ms: int, request: Request) -> list[Output]:
        """The request to every shard, and the opening part that tells the joiner what to expect."""
        outputs: list[Output] = []
        shards = list(range(self._topics.partitions))
        headers = query_headers(request.request_id, request.reply_to, request.deadline_ms, created_ms)
        value, search_headers = REQUEST.encode_record(request, headers)
        for shard in shards:
            wanted = request.min_offsets.get(shard)
            copy_headers = search_headers if wanted is None else (*search_headers, h.int_header(h.MIN_INGEST_OFFSET, wanted))
            outputs.append(Output(self._topics.search, value, request.request_id, shard, copy_headers))
        opening = PartialResult(
            request_id=request.request_id, shard=-1, expected_shards=shards, reply_to=request.reply_to,
            deadline_ms=request.deadline_ms, parameters=request.parameters,
            docs=[dataclasses.replace(d, embedding=None) for d in request.docs],
            expected_fields=list(request.parameters["filter_by"] or []),
        )
        value, part_headers = PARTIAL_RESULT.encode_record(opening, headers)
        outputs.append(Output(self._topics.partials, value, request.request_id, None, part_headers))
        return outputs

    def _check(self, request: Request, deadline_ms: int) -> Request:
        """Check a request, so shards receive only valid ones within the per-request limits; it
        leaves with ``deadline_ms``, its deadline on the flow's clock.

        :raises InvalidParameterError: a request the flow refuses; the error reply says why
            (``RequestLimitError`` names the limit).
        """
        # No reply possible: dead-lettered. A topic never seen is looked up within what the query has left.
        self._reply_topics.check(request.reply_to, deadline_ms=deadline_ms)
        if request.kind != "search":
            raise InvalidParameterError(f"request kind {request.kind!r} on the query topic; only 'search' is served here")
        params = SearchParameters.parse(request.parameters, self._defaults)
        if params.uses_lexical and self._lexical is None:
            raise InvalidParameterError(
                f"retrieval {params.retrieval!r} needs the lexical arm, and flow {self._topics.flow!r} keeps none: "
                "give its index stage `lexical: true` (then reindex), or search with retrieval 'dense'")
        for doc in request.docs:
            self._check_query_document(doc, params)
        now_ms = time.time() * 1000
        self._limits.check_deadline(request.deadline_ms, now_ms)  # as the client's clock said (skew allowed)
        self._limits.check_deadline(deadline_ms, now_ms)
        # Also parses the operations: a QueryLanguageError now, not on every shard.
        self._limits.check(params, queries=len(request.docs), after=request.min_offsets, fields=self._fields,
                           partitions=self._topics.partitions, filterable=self._filterable)
        if params.index_type is not None and params.index_type not in INDEX_TYPES:
            raise InvalidParameterError(f"index_type {describe(params.index_type)}; known: {', '.join(INDEX_TYPES)}")
        # The shards and the joiner see the fields explicitly: every field when none is chosen.
        selected = list(params.filter_by or self._fields) or None
        return dataclasses.replace(request, deadline_ms=deadline_ms,
                                   parameters={**params.to_dict(), "filter_by": selected})

    def _check_query_document(self, doc: Document, params: SearchParameters) -> None:
        """:raises InvalidParameterError: a query with nothing to search by, a vector that does not fit,
            a text in a flow without a model, or no text for the lexical arm."""
        if params.uses_lexical and not (doc.text or "").strip():
            raise InvalidParameterError(f"query document {doc.id!r} has no text (whitespace does not count), and "
                                        f"retrieval {params.retrieval!r} searches the texts")
        if not params.uses_dense:
            return
        if self._encoder is None:
            if doc.embedding is None:
                raise InvalidParameterError(
                    f"query document {doc.id!r} has no vector, and flow {self._topics.flow!r} has no encoder to "
                    "embed its text (its YAML has no stages.encode): search with a vector (Client.search(vectors=...))")
            dim, source = self._dim, "this flow's vectors are"
        else:
            if not (doc.text or "").strip() and doc.embedding is None and not doc.blob:
                raise InvalidParameterError(f"query document {doc.id!r} has neither text (whitespace does not "
                                            "count), an image (blob) nor an embedding")
            dim, source = self._encoder.output_dim, "this flow's model produces"  # from its config: no weights load
        # NaN or a non-numeric vector never gets here: decoding refused it (``validate_document``).
        if doc.embedding is not None and doc.embedding.size != dim:
            raise InvalidParameterError(f"query document {doc.id!r} is a vector of {doc.embedding.size} values; "
                                        f"{source} {dim}-d vectors")

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return error_reply(record, error)

    def tick(self) -> list[Output]:
        return []
