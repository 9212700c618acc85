"""Hypothesis-generated query-language payloads through the stage handlers: the fan-out either
accepts a request or answers it with an error reply, the joiner always replies, and nothing in
a payload is ever executed. (The encoder is a stand-in returning fixed vectors: the subject
here is the handling of the payload, and no broker is needed to drive a handler.)"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from processors.document import Direction, Document, Score
from processors.query.parameters import SearchParameters
from streams.wire import headers as h
from streams.stages.join import Joiner
from streams.stages.fanout import QueryFanout
from streams.wire.codec import PARTIAL_RESULT, REQUEST, SEARCH_REPLY
from streams.wire.records import PartialResult, Request
from streams.runtime.spec import Inbound
from streams.wire.topics import FlowTopics
from tests.streams.stages.fixtures import FixedEncoder

EXECUTED: list[str] = []
CANARY = "__import__('tests.streams.stages.test_fanout_fuzz').streams.test_query_fuzz.EXECUTED.append('x')"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20) | st.just(CANARY),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
operations = st.lists(st.fixed_dictionaries(
    {"operator": st.sampled_from(["filter", "select", "exclude", "slice", "sort", "reverse", "eval", CANARY])},
    optional={
        "parameters": st.dictionaries(st.sampled_from(["conditions", "fields", "start", "end", "field", "reverse",
                                                       "combine", CANARY]), json_values, max_size=3),
        "traversal_paths": st.lists(st.sampled_from(["r", "m", "c", "mm", "cm", "x", CANARY]), max_size=3),
        "priority": json_values,
        "stage": st.sampled_from(["index", "join", "encode"]),
        "name": json_values,
    },
), max_size=4)


FIELDS = ["id", "text", "weight", "tags.k", "scores.score", "granularity"]
LOOKUPS = ["", "__exact", "__neq", "__contains", "__icontains", "__startswith", "__gt", "__lte", "__regex", "__in"]
scalars = st.integers(-5, 5) | st.floats(-1, 1) | st.text(max_size=6) | st.just(CANARY) | st.just("(a+)+$")
valid_operations = st.lists(st.one_of(
    st.builds(lambda f, lk, v, paths: {"operator": "filter", "traversal_paths": paths,
                                        "parameters": {"conditions": {f + lk: [v] if lk == "__in" else v}}},
              st.sampled_from(FIELDS), st.sampled_from(LOOKUPS), scalars, st.just(["m"])),
    st.builds(lambda f, r: {"operator": "sort", "traversal_paths": ["m"], "parameters": {"field": f, "reverse": r}},
              st.sampled_from(FIELDS), st.booleans()),
    st.builds(lambda a, b: {"operator": "slice", "traversal_paths": ["m"], "parameters": {"start": a, "end": b}},
              st.integers(-4, 4), st.none() | st.integers(-4, 4)),
    st.builds(lambda f: {"operator": "exclude", "traversal_paths": ["m", "r"], "parameters": {"fields": [f]}},
              st.sampled_from(["text", "tags", "chunks", "scores"])),
    st.just({"operator": "reverse", "traversal_paths": ["m"]}),
), min_size=1, max_size=4, unique_by=lambda op: op["operator"])


def record(topic: str, value: bytes, request_id: str, deadline_ms: int) -> Inbound:
    return Inbound(topic, 0, 0, request_id.encode(), value, {
        h.REQUEST_ID: request_id.encode(), h.REPLY_TO: b"fuzz.reply.t", h.DEADLINE_MS: str(deadline_ms).encode()})


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(valid_operations, operations, json_values))
def test_payloads_never_crash_a_stage_and_never_run(payload: object) -> None:
    topics = FlowTopics("fuzz", 2)
    fanout = QueryFanout(encoder=FixedEncoder(), topics=topics, defaults=SearchParameters())  # type: ignore[arg-type]
    deadline = int(time.time() * 1000) + 60_000
    request = Request("r1", "search", [Document(id="q0", text="query")], "fuzz.reply.t", deadline,
                      {"query_language": payload}, {})
    inbound = record(topics.query, REQUEST.encode(request), "r1", deadline)
    try:
        outputs = fanout.process([inbound])
    except Exception as exc:  # the stage loop dead-letters it and sends this error reply
        event("rejected with an error reply")
        replies = fanout.on_failure(inbound, exc)
        assert len(replies) == 1 and SEARCH_REPLY.decode(replies[0].value).errors
        return
    event("accepted and joined")
    # Accepted: the joiner must reply, whatever the operations do to the merged matches.
    opening = next(o for o in outputs if o.topic == topics.partials)
    params = PARTIAL_RESULT.decode(opening.value).parameters
    joiner = Joiner()
    parts = [opening.value] + [PARTIAL_RESULT.encode(PartialResult(
        "r1", shard, [0, 1], "fuzz.reply.t", deadline, params,
        [Document(id="q0", matches=[Document(id=f"d{shard}{i}", text="t", tags={"k": str(i)},
                                             scores={"score": Score(0.5 - i / 10, "op", Direction.SIMILARITY)})
                                    for i in range(3)])])) for shard in (0, 1)]
    replies = joiner.process([record(topics.partials, value, "r1", deadline) for value in parts])
    assert len(replies) == 1
    SEARCH_REPLY.decode(replies[0].value)
    assert EXECUTED == []
