"""The HTTP bridge: JSON over HTTP in front of one request/reply ``Client``, plus the search page.

Thin on purpose: it validates, translates and maps outcomes to status codes; every search
goes through ``Client.search_async``, so all HTTP requests share one producer and one
reply consumer and await their own future (no thread or consumer per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import uvicorn
from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processors.document import Document, validate_document, validate_id, validate_text
from processors.exceptions import InvalidDocumentError, InvalidParameterError
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import FUSIONS, RETRIEVALS
from streams.client.client import REPLY_GRACE_S, Client
from streams.client.receipts import IndexReceipt
from streams.client.queries import is_expired_reply
from streams.exceptions import PayloadTooLargeError, StreamsearchError
from streams.flow.spec import FlowSpec
from streams.wire.records import SearchReply
from streams.wire.topics import FlowTopics

__all__ = ["DEFAULT_MAX_BODY_BYTES", "TOKEN_ENV", "DocIn", "SearchIn", "FlowInspector", "create_app", "serving",
           "warn_if_unprotected"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
TOKEN_ENV = "STREAMSEARCH_TOKEN"
PAGE = Path(__file__).resolve().parent / "static" / "index.html"

# -- request bodies ----------------------------------------------------------------------------


class DocIn(BaseModel):
    """A document to index; ``id`` is the Kafka key, so resending an id replaces it."""

    id: str = Field(min_length=1)
    text: str
    tags: dict[str, str | bool | int | float] = Field(default_factory=dict, description="Typed: a number compares as a number.")


Offset = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
"""What a Kafka offset field carries (Avro long); the flow refuses implausible ones (HTTP 400)."""


class SearchIn(BaseModel):
    """A search; unset options fall back to the flow's defaults. The flow checks the
    per-request limits (README, "Per-request limits") and answers 400 naming the one exceeded."""

    texts: str | list[str] = Field(min_length=1)
    top_k: int | None = Field(default=None, ge=1, description="1..max_top_k (GET /limits); over it: 422 naming the limit",
                              json_schema_extra={"maximum": REQUEST_LIMITS.max_top_k})
    filter_by: list[str] | None = None
    query_language: list[dict[str, Any]] | None = None
    index_type: str | None = None
    retrieval: Literal[RETRIEVALS] | None = Field(  # type: ignore[valid-type]
        default=None, description="dense (the default), lexical (BM25) or hybrid: the last two need a flow whose "
                                  "index keeps the lexical arm (GET /status: `lexical`), else 400 saying so")
    fusion: Literal[FUSIONS] | None = Field(default=None, description="How hybrid fuses the arms' lists.")  # type: ignore[valid-type]
    rrf_k: int | None = Field(default=None, ge=1, le=REQUEST_LIMITS.max_rrf_k, description="The constant of rrf.")
    candidates: int | None = Field(default=None, ge=1, le=REQUEST_LIMITS.max_candidates,
                                   description="Documents each arm contributes to a hybrid fusion.")
    dense_weight: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False,
                                       description="The dense arm's weight in linear fusion.")
    deadline_s: float | None = Field(default=None, gt=0, le=REQUEST_LIMITS.max_deadline_s, allow_inf_nan=False)
    after: dict[int, Offset] | None = Field(default=None, description="An index receipt's offsets: read your writes.")

    def parameters(self) -> dict[str, Any] | None:
        """What the client sends as ``parameters``: the fields of :data:`PASSED_AS_PARAMETERS` that are set."""
        chosen = {key: getattr(self, key) for key in PASSED_AS_PARAMETERS if getattr(self, key) is not None}
        return chosen or None


PASSED_AS_PARAMETERS = ("query_language", "rrf_k", "candidates", "dense_weight")
"""``SearchIn`` fields that travel in the request's ``parameters`` as they are (the client has no argument of their own)."""


# -- replies -----------------------------------------------------------------------------------


def _match_json(match: Document) -> dict[str, Any]:
    score = match.scores.get("score")
    chunk = match.chunks[0] if match.chunks else None
    return {
        "id": match.id,
        "text": match.text,
        "tags": match.tags,
        "score": {"value": score.value, "op_name": score.op_name, "direction": score.direction.value}
        if score else None,
        "chunk": {"text": chunk.text, "location": chunk.location, "field_name": chunk.field_name} if chunk else None,
    }


REPLY_INTERNAL = frozenset({"request_id", "docs"})
"""SearchReply fields the bridge does not pass on as they are: ``docs`` become ``results``."""


def _reply_json(texts: list[str], reply: SearchReply, latency_ms: float) -> dict[str, Any]:
    """Every reply field (a new one reaches HTTP with no edit here), the matches per query, and the latency."""
    fields = {f.name: getattr(reply, f.name) for f in dataclasses.fields(reply) if f.name not in REPLY_INTERNAL}
    return {
        "results": [{"query": text, "matches": [_match_json(m) for m in doc.matches]}
                    for text, doc in zip(texts, reply.docs)],
        **fields,
        "latency_ms": round(latency_ms, 1),
    }


def _receipt_json(receipt: IndexReceipt) -> dict[str, Any]:
    return {"count": receipt.count, "offsets": receipt.offsets}


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped and non-finite numbers as null, so that a lone
    surrogate or a NaN a request carried (and a 422 echoes) still encodes: an answer, never a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _refused(exc: Exception, where: str = "") -> HTTPException:
    """422 with the validator's message (ASCII only), prefixed with the item it names in a list."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{where}{exc}")


def _unavailable(exc: BaseException) -> HTTPException:
    logger.warning("broker unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"broker unavailable: {type(exc).__name__}: {exc}")


# -- middleware and auth -----------------------------------------------------------------------


class BodyLimit:
    """Answer 413 to a body over ``max_bytes``: by its Content-Length, else by counting it.

    The body is buffered (at most ``max_bytes``) and replayed, so a chunked upload without
    Content-Length is stopped too.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"},
                                status_code=413)
        await response(scope, receive, send)


def _auth(token: str | None) -> Callable[..., None]:
    bearer = HTTPBearer(auto_error=False)

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


# -- what the bridge tells beyond searching ---------------------------------------------------


class FlowInspector(Protocol):
    """The flow's status and why a search got no reply: operator reads (consumer groups, lag, stage
    kinds) that an application's client does not make. Whoever starts the bridge passes them in:
    ``streamsearch serve`` and the demo pass ``streams.ops.bridge.StatusInspector``."""

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` shows (``streamsearch status --json``).

        :raises StreamsearchError: or ``KafkaException``, when the broker does not answer (503).
        """
        ...

    def why_no_reply(self, topics: FlowTopics, timeout_s: float) -> str:
        """One line: why a search of ``topics``' version got no reply within ``timeout_s``."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class _ClientOnly:
    """What the client alone can tell, for a bridge created without a ``FlowInspector``."""

    client: Client

    def status(self) -> dict[str, Any]:
        return {"flow": self.client.topics.flow, "version": self.client.version,
                "note": "the flow's name and serving version only: this bridge was created without a FlowInspector "
                        "(`streamsearch serve` passes one)"}

    def why_no_reply(self, topics: FlowTopics, timeout_s: float) -> str:
        return (f"no reply within {timeout_s:g}s from version {topics.version} of flow {topics.flow!r} "
                "(`streamsearch status` shows which of its stages run)")


# -- the app -----------------------------------------------------------------------------------


def create_app(
    client: Client,
    *,
    flow: FlowSpec | None = None,
    flow_fields: Sequence[str] | None = None,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    inspector: FlowInspector | None = None,
) -> FastAPI:
    """Build the bridge over one running client; the caller owns (and closes) the client.

    :param client: the flow's request/reply client, shared by every HTTP request.
    :param flow: the flow's YAML, for the fields ``/status`` offers the page's field filter and whether
        its index keeps the lexical arm (``lexical``, null without the YAML: the page offers its retrieval
        switch, of ``retrievals``, unless it is false).
    :param flow_fields: those fields, if not the flow's.
    :param token: the bearer token every endpoint but ``/healthz`` and the page itself requires
        (OpenAPI included); ``STREAMSEARCH_TOKEN`` if None, no auth if neither is set (or it is "").
    :param max_body_bytes: larger request bodies get 413.
    :param inspector: what ``/status`` shows and why a search got no reply (503); without one, only
        what the client knows (the flow's name and serving version; ``note`` says so).
    :returns: the ASGI app.
    """
    token = (token if token is not None else os.environ.get(TOKEN_ENV)) or None
    app = FastAPI(title="streamsearch", summary=f"Search the flow {client.topics.flow!r} over Kafka",
                  docs_url=None, openapi_url=None,  # served below, behind the token
                  default_response_class=_AsciiJSONResponse)
    app.state.token_required = token is not None
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    api = APIRouter(dependencies=[Depends(_auth(token))])
    _add_error_handlers(app)
    _add_meta_routes(app, api)
    fields = list(flow_fields if flow_fields is not None else flow.fields if flow is not None else ())
    inspect: FlowInspector = inspector if inspector is not None else _ClientOnly(client)
    lexical = flow.lexical if flow is not None else None
    _add_status_routes(api, client, inspect, {"fields": fields, "lexical": lexical, "retrievals": list(RETRIEVALS)})
    _add_write_routes(api, client)
    _add_search_route(api, client, inspect)
    app.include_router(api)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, rendered ASCII-safe (its own fails on a lone surrogate or a NaN it echoes)."""
        return _AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Every error detail ASCII-safe: it may quote what the request carried."""
        return _AsciiJSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


def _add_meta_routes(app: FastAPI, api: APIRouter) -> None:
    """The OpenAPI document and its page (behind the token), the health check and the search page."""
    @api.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @api.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="streamsearch API")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process answers; says nothing about the broker (a search does)."""
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text(encoding="utf-8")


def _add_status_routes(api: APIRouter, client: Client, inspect: FlowInspector, shape: dict[str, Any]) -> None:
    """``/status`` (what the inspector reads, and ``shape``: the flow's ``fields`` and ``lexical`` from its
    YAML, the ``retrievals`` a search may ask for) and ``/limits``."""
    def report() -> dict[str, Any]:
        return {**inspect.status(), **shape}

    @api.get("/status", responses={503: {"description": "the broker did not answer: flow, fields, lexical only"}})
    async def flow_status() -> JSONResponse:
        """What ``streamsearch status --json`` shows (stages, lag, shards, topics, serving version,
        dead letters, warnings), the flow's fields for the page's filter, and ``lexical`` (whether its index
        keeps the lexical arm; null when the bridge has no YAML) and ``retrievals``, for its retrieval switch."""
        try:
            return _AsciiJSONResponse(await run_in_threadpool(report))
        except (StreamsearchError, KafkaException) as exc:
            detail = _unavailable(exc).detail
            return _AsciiJSONResponse({"detail": detail, "flow": client.topics.flow, **shape},
                                      status.HTTP_503_SERVICE_UNAVAILABLE)

    @api.get("/limits")
    async def limits() -> dict[str, float]:
        """The per-request limits the flow applies (``RequestLimits``): the page bounds its inputs by them."""
        return dataclasses.asdict(REQUEST_LIMITS)


def _add_write_routes(api: APIRouter, client: Client) -> None:
    """``/index`` and ``/docs/{id}``: upserts and deletes, 202 once the broker has them."""
    @api.post("/index", status_code=status.HTTP_202_ACCEPTED)
    async def index(body: DocIn | list[DocIn]) -> dict[str, Any]:
        """Upsert one document or a list; 202 once the broker has them (searchable moments later).

        Pass the returned ``offsets`` as a search's ``after`` to read your own writes.
        """
        docs = [Document(id=d.id, text=d.text, tags=dict(d.tags)) for d in (body if isinstance(body, list) else [body])]
        for i, doc in enumerate(docs):
            try:
                validate_document(doc)
            except InvalidDocumentError as exc:
                raise _refused(exc, f"document {i}: " if isinstance(body, list) else "") from exc
        try:
            receipt = await run_in_threadpool(client.index, docs)  # it waits for delivery
        except PayloadTooLargeError as exc:
            raise HTTPException(413, str(exc)) from exc
        except InvalidDocumentError as exc:  # a StreamsearchError, but the request's fault, not the broker's
            raise _refused(exc) from exc
        except (StreamsearchError, KafkaException) as exc:
            raise _unavailable(exc) from exc
        return _receipt_json(receipt)

    @api.delete("/docs/{doc_id:path}", status_code=status.HTTP_202_ACCEPTED)
    async def delete(doc_id: str) -> dict[str, Any]:
        """Delete a document by id (a tombstone on the ingest topic); the id may contain ``/``
        (``DELETE /docs/guides/intro``), and is percent-decoded."""
        try:
            validate_id(doc_id)
        except InvalidDocumentError as exc:
            raise _refused(exc) from exc
        try:
            receipt = await run_in_threadpool(client.delete, [doc_id])
        except (StreamsearchError, KafkaException) as exc:
            raise _unavailable(exc) from exc
        return _receipt_json(receipt)


def _add_search_route(api: APIRouter, client: Client, inspect: FlowInspector) -> None:
    @api.post("/search", responses={400: {"description": "refused by the flow, e.g. over a per-request limit"},
                                     413: {}, 503: {}, 504: {"description": "partial results by the deadline"}})
    async def search(body: SearchIn) -> JSONResponse:
        """Search; 504 carries the partial results when shards missed the deadline. A shard that is
        restoring its state answers at once without matches: 200 with ``partial`` and
        ``restoring_shards``, so a caller can retry soon without having waited for a deadline."""
        texts = [body.texts] if isinstance(body.texts, str) else body.texts
        named = [("texts" if isinstance(body.texts, str) else f"texts[{i}]", text) for i, text in enumerate(texts)]
        named += [(f"filter_by[{i}]", name) for i, name in enumerate(body.filter_by or [])]
        named += [("index_type", body.index_type)] if body.index_type is not None else []
        try:
            for name, text in named:
                validate_text(text, name=name)
        except InvalidDocumentError as exc:
            raise _refused(exc) from exc
        if body.top_k is not None:
            try:
                REQUEST_LIMITS.check_count("top_k", body.top_k)
            except InvalidParameterError as exc:  # what the flow would answer, without the round trip
                raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        deadline_s = body.deadline_s or client.timeout_s
        started = time.perf_counter()
        try:
            future = client.search_async(
                texts, top_k=body.top_k, timeout_s=deadline_s, filter_by=body.filter_by,
                index_type=body.index_type, retrieval=body.retrieval, fusion=body.fusion,
                parameters=body.parameters(),
                after=IndexReceipt(dict(body.after)) if body.after else None,
            )
            reply = await asyncio.wait_for(asyncio.wrap_future(future), deadline_s + REPLY_GRACE_S)
        except TimeoutError as exc:  # not even the joiner's partial reply: which stages run, which version serves?
            try:
                why = await run_in_threadpool(inspect.why_no_reply, client.topics, deadline_s)
            except (StreamsearchError, KafkaException) as unreachable:
                raise _unavailable(unreachable) from exc
            logger.warning("no reply", extra={"error": why})
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, why) from exc
        except PayloadTooLargeError as exc:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
        except ValueError as exc:  # the client refuses it before sending (a blank text)
            raise _refused(exc) from exc
        except (StreamsearchError, KafkaException) as exc:
            raise _unavailable(exc) from exc
        payload = _reply_json(texts, reply, (time.perf_counter() - started) * 1000)
        if reply.errors:  # refused (400), or taken up after its deadline (504)
            code = status.HTTP_504_GATEWAY_TIMEOUT if is_expired_reply(reply) else status.HTTP_400_BAD_REQUEST
            return _AsciiJSONResponse({"detail": "; ".join(reply.errors), **payload}, code)
        if reply.missing_shards:
            return _AsciiJSONResponse({"detail": f"shards {reply.missing_shards} missed the deadline", **payload},
                                      status.HTTP_504_GATEWAY_TIMEOUT)
        return _AsciiJSONResponse(payload)


def warn_if_unprotected(app: FastAPI, host: str) -> bool:
    """Warn (once, at start) when the bridge listens beyond loopback without a token.

    :param app: an app from :func:`create_app`.
    :param host: the address it binds.
    :returns: whether it warned.
    """
    if app.state.token_required or _is_loopback(host):
        return False
    logger.warning("the HTTP bridge listens on %s without a token: anyone who reaches it can index, delete and "
                   "search; set %s", host, TOKEN_ENV)
    return True


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name may resolve to any interface


@contextlib.contextmanager
def serving(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an app with uvicorn in a background thread (port 0: a free one); yields its URL.

    :raises StreamsearchError: if uvicorn does not start within 30 s.
    """
    warn_if_unprotected(app, host)
    if not port:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # uvicorn offers no event to wait on
        if time.monotonic() > deadline or not thread.is_alive():
            raise StreamsearchError(f"HTTP bridge did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
