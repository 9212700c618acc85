"""Fan-in: the parts of one search meet here, keyed by request id, and leave as one reply.

The joiner knows which shards to expect (from any part) and the deadline. It replies as
soon as every expected shard has answered, or at the deadline with what it has and
``partial: true`` naming the shards that did not answer. It never waits past a deadline.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from processors.query.parameters import SearchParameters
from processors.rankers.merge import merge_matches
from streams import headers as h
from streams.query import decode_live
from streams.serde import PARTIAL_RESULT, SEARCH_REPLY, PartialResult, SearchReply
from streams.stage import Inbound, Output

__all__ = ["Joiner", "PendingRequest"]

logger = logging.getLogger(__name__)

REMEMBER_REPLIED = 50_000
"""Replied request ids kept to drop late parts (a bounded set, oldest forgotten first)."""


@dataclass(slots=True)
class PendingRequest:
    """The parts of one request received so far."""

    request_id: str
    reply_to: str
    deadline_ms: int
    expected: list[int] = field(default_factory=list)
    opening: PartialResult | None = None
    parts: dict[int, PartialResult] = field(default_factory=dict)

    def add(self, part: PartialResult) -> None:
        if part.expected_shards and not self.expected:
            self.expected = list(part.expected_shards)
        if part.shard < 0:
            self.opening = part
        else:
            self.parts[part.shard] = part

    @property
    def complete(self) -> bool:
        return bool(self.expected) and all(shard in self.parts for shard in self.expected)


class Joiner:
    """Merges shard results per request and replies on the request's reply topic."""

    def __init__(self) -> None:
        self._pending: dict[str, PendingRequest] = {}
        self._replied: OrderedDict[str, None] = OrderedDict()
        self.replies = 0
        self.partial_replies = 0

    def process(self, records: Sequence[Inbound]) -> list[Output]:
        outputs = []
        for _, part in decode_live(records, PARTIAL_RESULT):
            if part.request_id in self._replied:
                continue
            pending = self._pending.get(part.request_id)
            if pending is None:
                pending = self._pending[part.request_id] = PendingRequest(
                    part.request_id, part.reply_to, part.deadline_ms)
            pending.add(part)
            if pending.complete:
                outputs.append(self._reply(pending))
        return outputs

    def tick(self) -> list[Output]:
        now = time.time() * 1000
        late = [p for p in self._pending.values() if p.deadline_ms <= now]
        return [self._reply(p) for p in late]

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return []

    def next_deadline_ms(self) -> int | None:
        return min((p.deadline_ms for p in self._pending.values()), default=None)

    def _reply(self, pending: PendingRequest) -> Output:
        del self._pending[pending.request_id]
        self._replied[pending.request_id] = None
        while len(self._replied) > REMEMBER_REPLIED:
            self._replied.popitem(last=False)
        reply = build_reply(pending)
        self.replies += 1
        self.partial_replies += reply.partial
        return Output(pending.reply_to, SEARCH_REPLY.encode(reply), pending.request_id, None,
                      ((h.REQUEST_ID, pending.request_id.encode()), SEARCH_REPLY.header()))


def build_reply(pending: PendingRequest) -> SearchReply:
    """Merge each query's matches across shards, best first by score direction, cut to top_k."""
    shard_parts = [pending.parts[s] for s in sorted(pending.parts)]
    answered = [p for p in shard_parts if p.error is None and p.docs]
    template = pending.opening or (answered[0] if answered else None)
    params = SearchParameters.parse(template.parameters) if template else SearchParameters()
    docs = []
    for i, query in enumerate(template.docs if template else []):
        lists = [part.docs[i].matches for part in answered if i < len(part.docs)]
        query.matches = merge_matches(lists, params.top_k)
        docs.append(query)
    missing = [s for s in pending.expected if s not in pending.parts] if pending.expected else []
    errors = [p.error for p in shard_parts if p.error]
    return SearchReply(
        request_id=pending.request_id,
        docs=docs,
        partial=bool(missing) or not pending.expected or bool(errors),
        missing_shards=missing,
        stale_shards=[p.shard for p in shard_parts if p.stale],
        errors=errors,
    )
