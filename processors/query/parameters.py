"""The parameters a search request may set, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from processors.exceptions import StreamsearchError

__all__ = ["InvalidParameterError", "SearchParameters", "MAX_TOP_K"]

MAX_TOP_K = 10_000


class InvalidParameterError(StreamsearchError):
    """A request parameter is unknown or has the wrong type or range."""


@dataclass(frozen=True, slots=True)
class SearchParameters:
    """What one search asks for.

    :param top_k: documents per query in the reply.
    :param chunk_oversample: vectors fetched per wanted document on each shard, so that a
        document with several matching chunks does not crowd others out of the top_k.
    """

    top_k: int = 10
    chunk_oversample: int = 5

    @classmethod
    def parse(cls, raw: Mapping[str, Any], defaults: "SearchParameters | None" = None) -> "SearchParameters":
        """Check request parameters over the flow's defaults.

        :raises InvalidParameterError: naming the unknown parameter or the bad value.
        """
        base = defaults or cls()
        known = {"top_k": base.top_k, "chunk_oversample": base.chunk_oversample}
        for key in raw:
            if key not in known:
                raise InvalidParameterError(f"unknown parameter {key!r}; known: {', '.join(sorted(known))}")
        values = {**known, **raw}
        for key, upper in (("top_k", MAX_TOP_K), ("chunk_oversample", 100)):
            value = values[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= upper:
                raise InvalidParameterError(f"parameter {key!r} must be an integer in 1..{upper}, got {value!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "chunk_oversample": self.chunk_oversample}
