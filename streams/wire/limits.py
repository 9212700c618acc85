"""What one record may hold: the caps the pre-scan (``streams/wire/prescan.py``) checks before fastavro's
reader runs, set by the environment, and the count a walk keeps against them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from streams.exceptions import DecodeLimitError, FlowConfigError

__all__ = ["DECODE_LIMITS", "DEPTH_CEILING", "MAX_DOCUMENTS_ENV", "MAX_DOCUMENT_DEPTH_ENV", "DecodeLimits", "DocumentBudget"]

MAX_DOCUMENT_DEPTH_ENV = "STREAMSEARCH_MAX_DOCUMENT_DEPTH"
MAX_DOCUMENTS_ENV = "STREAMSEARCH_MAX_DOCUMENTS"
DEPTH_CEILING = 500
"""The deepest ``STREAMSEARCH_MAX_DOCUMENT_DEPTH`` accepted. The readers recurse in C once per nested record:
fastavro's (records of an earlier writer schema) overflowed an 8 MiB stack near 5,000 Documents deep, and the
compiled one (``streams/wire/_avro.c``) stops at 2,000 records and arrays, about 1,000 Documents."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one record may hold, checked before fastavro's reader runs: it recurses in C once
    per nested record, so a Document nested thousands deep would overflow the stack.

    :param max_document_depth: Documents nested in Documents (chunks, matches); a root is 1.
    :param max_documents: Documents in one record, at any depth.
    """

    max_document_depth: int = 32
    max_documents: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_document_depth", "max_documents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FlowConfigError(f"{name} must be a positive integer, not {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> DecodeLimits:
        """The defaults, overridden by ``STREAMSEARCH_MAX_DOCUMENT_DEPTH`` and ``STREAMSEARCH_MAX_DOCUMENTS``.

        :raises FlowConfigError: if a variable is set to anything but a positive integer.
        """
        values = {}
        for name, env in (("max_document_depth", MAX_DOCUMENT_DEPTH_ENV), ("max_documents", MAX_DOCUMENTS_ENV)):
            raw = environ.get(env, "").strip()
            if raw:
                if not raw.isdigit() or int(raw) < 1:
                    raise FlowConfigError(f"{env}={raw!r}: expected a positive integer")
                if env == MAX_DOCUMENT_DEPTH_ENV and int(raw) > DEPTH_CEILING:
                    raise FlowConfigError(f"{env}={raw!r}: at most {DEPTH_CEILING} (the Avro readers recurse once per "
                                          "nested record; deeper would risk the process's stack)")
                values[name] = int(raw)
        return cls(**values)


DECODE_LIMITS = DecodeLimits.from_env()
"""The caps every codec applies unless a call passes its own."""


class DocumentBudget:
    """The Documents a walk is inside of and has met, against the caps."""

    __slots__ = ("_limits", "_name", "count", "depth")

    def __init__(self, limits: DecodeLimits, name: str) -> None:
        self.depth = self.count = 0
        self._limits = limits
        self._name = name

    def enter(self) -> None:
        """:raises DecodeLimitError: if this Document nests too deep or is one too many."""
        self.depth += 1
        self.count += 1
        if self.depth > self._limits.max_document_depth:
            raise DecodeLimitError(
                f"{self._name} record refused: Documents nested deeper than max_document_depth="
                f"{self._limits.max_document_depth} ({MAX_DOCUMENT_DEPTH_ENV})")
        if self.count > self._limits.max_documents:
            raise DecodeLimitError(
                f"{self._name} record refused: more than max_documents={self._limits.max_documents} Documents "
                f"({MAX_DOCUMENTS_ENV})")
