"""The app: ``create_app`` over one running client, and its routes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from processors.document import Document, validate_document, validate_id, validate_text
from processors.exceptions import InvalidDocumentError, InvalidParameterError
from processors.query.limits import REQUEST_LIMITS
from processors.query.parameters import RETRIEVALS
from streams.client.client import REPLY_GRACE_S, Client
from streams.client.http.guards import DEFAULT_MAX_BODY_BYTES, TOKEN_ENV, BodyLimit, _auth
from streams.client.http.inspector import FlowInspector, _ClientOnly
from streams.client.http.payloads import (
    DocIn,
    SearchIn,
    _AsciiJSONResponse,
    _receipt_json,
    _refused,
    _reply_json,
    _unavailable,
)
from streams.client.queries import is_expired_reply
from streams.client.receipts import IndexReceipt
from streams.exceptions import PayloadTooLargeError, StreamsearchError
from streams.flow.spec import FlowSpec

logger = logging.getLogger(__package__)  # the bridge's one logger, streams.client.http

PAGE = Path(__file__).resolve().parents[1] / "static" / "index.html"

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
        switch, of ``retrievals``, unless it is false), its ``filterable`` fields with their types, and
        what its encoder ``embeds`` in a query (a list of ``text`` and ``image``: the page takes a text,
        an image file, or either; null without the YAML or a model).
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
    filterable = dict(flow.filterable) if flow is not None else None
    embeds = list(flow.embeds) if flow is not None and flow.embeds is not None else None
    _add_status_routes(api, client, inspect, {"fields": fields, "lexical": lexical, "retrievals": list(RETRIEVALS),
                                              "filterable": filterable, "embeds": embeds})
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
        texts = [body.texts] if isinstance(body.texts, str) else body.texts or []
        images = _images(body.images) if body.images is not None else None
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
                texts or None, images=images, top_k=body.top_k, timeout_s=deadline_s, filter_by=body.filter_by,
                index_type=body.index_type, retrieval=body.retrieval, fusion=body.fusion, filter=body.filter,
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
        payload = _reply_json(texts or [f"image {i}" for i in range(len(images or []))], reply, (time.perf_counter() - started) * 1000)
        if reply.errors:  # refused (400), or taken up after its deadline (504)
            code = status.HTTP_504_GATEWAY_TIMEOUT if is_expired_reply(reply) else status.HTTP_400_BAD_REQUEST
            return _AsciiJSONResponse({"detail": "; ".join(reply.errors), **payload}, code)
        if reply.missing_shards:
            return _AsciiJSONResponse({"detail": f"shards {reply.missing_shards} missed the deadline", **payload},
                                      status.HTTP_504_GATEWAY_TIMEOUT)
        return _AsciiJSONResponse(payload)


def _images(encoded: list[str]) -> list[bytes]:
    """The query images' bytes from base64.

    :raises HTTPException: 422 naming the one that is not base64.
    """
    try:  # a data: URI's prefix and wrapped lines (base64 tools wrap at 76) are taken as they come
        return [base64.b64decode("".join(text.split(",", 1)[-1].split()) if text.startswith("data:") else
                                 "".join(text.split()), validate=True) for text in encoded]
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"images: not base64: {exc}") from None
