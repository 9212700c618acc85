"""``serving``: an app served by uvicorn in a background thread, for the demo and the tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from streams.client.http.guards import warn_if_unprotected
from streams.exceptions import StreamsearchError


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
