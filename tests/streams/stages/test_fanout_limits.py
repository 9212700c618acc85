"""The per-request limits at the encode stage's query path, without a broker: the hostile inputs
of issue 11 each get an error reply naming the limit, before any shard sees the request."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from processors.document import Document
from processors.exceptions import InvalidParameterError, RequestLimitError
from processors.query.parameters import SearchParameters
from streams.wire import headers as h
from streams.stages.fanout import QueryFanout
from streams.wire.codec import PARTIAL_RESULT, REQUEST, SEARCH_REPLY
from streams.wire.records import Request
from streams.runtime.spec import Inbound
from streams.wire.topics import FlowTopics
from tests.streams.stages.fixtures import FixedEncoder

TOPICS = FlowTopics("limits", 2)
FIELDS = ("title", "summary")


def fanout() -> QueryFanout:
    return QueryFanout(encoder=FixedEncoder(), topics=TOPICS, defaults=SearchParameters(), fields=FIELDS)  # type: ignore[arg-type]


def inbound(parameters: dict[str, Any], *, texts: int = 1, after: dict[int, int] | None = None) -> Inbound:
    deadline = int(time.time() * 1000) + 60_000
    request = Request("r1", "search", [Document(id=f"q{i}", text="painter") for i in range(texts)], "limits.reply.t",
                      deadline, parameters, after or {})
    return Inbound(TOPICS.query, 0, 0, b"r1", REQUEST.encode(request), {
        h.REQUEST_ID: b"r1", h.REPLY_TO: b"limits.reply.t", h.DEADLINE_MS: str(deadline).encode(), h.SCHEMA: REQUEST.header()[1]})


def refused(record: Inbound, error: type[Exception] = RequestLimitError) -> str:
    """The error reply's message; nothing goes to the shards."""
    handler = fanout()
    with pytest.raises(error) as failure:
        handler.process([record])
    [reply] = handler.on_failure(record, failure.value)
    assert reply.topic == "limits.reply.t"
    [message] = SEARCH_REPLY.decode(reply.value).errors
    return message


# Built when the test runs, not at collection: a record carries a deadline, and one built minutes
# earlier (a long suite) has expired and is skipped unread.
@pytest.mark.parametrize(("make", "limit"), [
    (lambda: inbound({}, texts=100_000), "max_queries"),
    (lambda: inbound({"query_language": [{"operator": "filter", "parameters": {
        "conditions": {"tags.year__in": list(range(1_000_000))}}}]}), "max_query_language_bytes"),
    (lambda: inbound({"query_language": [{"operator": "filter", "parameters": {
        "conditions": {"tags.year__in": list(range(5_000))}}}]}), "max_in_items"),
    (lambda: inbound({}, after={0: 10**18}), "max_offset"),
    (lambda: inbound({}, after={-1: 3}), "partitions 0..1"),
    (lambda: inbound({"top_k": 1_000, "chunk_oversample": 100}), "max_fetch"),
])
def test_hostile_requests_get_an_error_reply_naming_the_limit(make: Callable[[], Inbound], limit: str) -> None:
    message = refused(make())
    assert message.startswith("RequestLimitError: ") and limit in message


def test_filter_by_of_100000_repeats_fans_out_one_field() -> None:
    outputs = fanout().process([inbound({"filter_by": ["title"] * 100_000})])
    searches = [o for o in outputs if o.topic == TOPICS.search]
    assert len(searches) == 2  # one per shard
    assert REQUEST.decode(searches[0].value).parameters["filter_by"] == ["title"]
    opening = PARTIAL_RESULT.decode(next(o for o in outputs if o.topic == TOPICS.partials).value)
    assert opening.expected_fields == ["title"]  # the joiner waits for shards × 1 field


def test_filter_by_a_field_the_flow_lacks_is_refused() -> None:
    message = refused(inbound({"filter_by": ["title"] * 100_000 + ["author"]}), InvalidParameterError)
    assert "unknown fields ['author']; known: title, summary" in message


def test_plausible_after_offsets_fan_out() -> None:
    outputs = fanout().process([inbound({}, after={0: 12, 1: 2**53 - 1})])
    assert REQUEST.decode(outputs[0].value).min_offsets == {0: 12, 1: 2**53 - 1}


def test_each_search_copy_names_in_a_header_the_offset_its_shard_must_have_applied() -> None:
    """``ss-min-ingest-offset``: the copy for partition p carries ``min_offsets[p]``, a copy for a partition the
    request names no offset for carries none (the shard reads it to know, undecoded, that a copy will wait)."""
    outputs = fanout().process([inbound({}, after={1: 40})])
    copies = {o.partition: dict(o.headers) for o in outputs if o.topic == TOPICS.search}
    assert sorted(copies) == [0, 1]
    assert h.MIN_INGEST_OFFSET not in copies[0]
    assert h.read_int(copies[1], h.MIN_INGEST_OFFSET) == 40
