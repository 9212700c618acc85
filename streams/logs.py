"""Structured logging: key=value lines for people, JSON lines for log pipelines.

Fields passed as ``extra=`` (stage, partition, request_id, ...) appear in both forms.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["CountedThrottle", "configure_logging", "RepeatLimit"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class _Formatter(logging.Formatter):
    def __init__(self, *, as_json: bool) -> None:
        super().__init__()
        self._json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if self._json:
            payload = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                       "msg": record.getMessage(), **fields}
            if record.exc_info:
                payload["exc"] = self.formatException(record.exc_info)
            return json.dumps(payload, default=str)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        return f"{line}\n{self.formatException(record.exc_info)}" if record.exc_info else line


def configure_logging(level: str | None = None, *, as_json: bool | None = None) -> None:
    """Log to stderr; ``STREAMSEARCH_LOG_LEVEL`` and ``STREAMSEARCH_LOG_JSON=1`` set the defaults."""
    as_json = as_json if as_json is not None else os.environ.get("STREAMSEARCH_LOG_JSON") == "1"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json=as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("STREAMSEARCH_LOG_LEVEL", "INFO")).upper())
    # Libraries' own chatter (FAISS names each SIMD build it tries) is not ours to show at INFO.
    for chatty in QUIET_LIBRARIES:
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


QUIET_LIBRARIES = ("faiss", "faiss.loader")


class RepeatLimit(logging.Filter):
    """Lets the first record of a kind through, then at most one per ``interval_s``, which carries
    ``suppressed=N``: how many of its kind were dropped since the last one shown.

    A record's kind is its logger, level and message with every number replaced, so that retries
    that differ only in a port, a client's number or a duration ("Connect to ...:9092 failed:
    Connection refused (after 0ms ...)", from every client of a process, several times a second once
    its broker is gone) are one kind: a log that says it once in a while, and how often, rather than
    a flood that buries everything else.
    """

    _NUMBER = re.compile(r"\d+")

    def __init__(self, interval_s: float = 10.0, *, kinds: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """:param kinds: how many kinds are remembered (the least recently seen are forgotten)."""
        super().__init__()
        self.interval_s = interval_s
        self._kinds = kinds
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, str], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()  # librdkafka's lines arrive from whichever thread polls a client

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, self._NUMBER.sub("#", record.getMessage()))
        now = self._clock()
        with self._lock:
            shown_at, suppressed = self._seen.pop(kind, (None, 0))
            if shown_at is not None and now - shown_at < self.interval_s:
                self._seen[kind] = (shown_at, suppressed + 1)
                return False
            self._seen[kind] = (now, 0)
            while len(self._seen) > self._kinds:
                self._seen.popitem(last=False)
        if suppressed:
            record.suppressed = suppressed
        return True


class CountedThrottle:
    """Counts events between log lines and says when the next line is due: at the first event, then
    at most once per ``interval_s``. The caller writes the line, with the count it is handed, so that
    a flood of expired requests or truncated texts is one line in a while that says how many."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._logged_at: float | None = None
        self._count = 0

    def add(self, count: int = 1) -> int | None:
        """Count ``count`` events; :returns: the events since the last line when a line is due, else None."""
        self._count += count
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._interval_s:
            return None
        self._logged_at, due = now, self._count
        self._count = 0
        return due
