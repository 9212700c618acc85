"""The HTTP bridge: JSON over HTTP in front of one request/reply ``Client``, plus the search page.

Thin on purpose: it validates, translates and maps outcomes to status codes; every search
goes through ``Client.search_async``, so all HTTP requests share one producer and one
reply consumer and await their own future (no thread or consumer per request).

The package: ``payloads`` (request bodies, reply JSON), ``guards`` (body limit, bearer token, the warning when
unprotected), ``inspector`` (``FlowInspector``: what the bridge tells beyond searching), ``app``
(``create_app`` and its routes) and ``server`` (``serving``: uvicorn in a thread).
"""

from __future__ import annotations

# `X as X`: PAGE, REPLY_INTERNAL and _reply_json are importable from here too, as before the package (tests do).
from streams.client.http.app import PAGE as PAGE
from streams.client.http.app import create_app
from streams.client.http.guards import DEFAULT_MAX_BODY_BYTES, TOKEN_ENV, warn_if_unprotected
from streams.client.http.inspector import FlowInspector
from streams.client.http.payloads import REPLY_INTERNAL as REPLY_INTERNAL
from streams.client.http.payloads import DocIn, SearchIn
from streams.client.http.payloads import _reply_json as _reply_json
from streams.client.http.server import serving

__all__ = ["DEFAULT_MAX_BODY_BYTES", "TOKEN_ENV", "DocIn", "SearchIn", "FlowInspector", "create_app", "serving",
           "warn_if_unprotected"]
