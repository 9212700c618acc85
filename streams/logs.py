"""Structured logging: key=value lines for people, JSON lines for log pipelines.

Fields passed as ``extra=`` (stage, partition, request_id, ...) appear in both forms.
"""

from __future__ import annotations

import json
import logging
import os
import sys

__all__ = ["configure_logging"]

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
