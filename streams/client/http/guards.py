"""Who and what may reach the bridge: the request body limit, the bearer token, and the warning when neither
token nor loopback protects it."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Callable

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__package__)  # the bridge's one logger, streams.client.http

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
TOKEN_ENV = "STREAMSEARCH_TOKEN"

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
