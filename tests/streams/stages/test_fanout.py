"""The query path's deadline checks: a record without a deadline header expires too."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from processors.document import Document
from processors.encoders.base import EncodeResult
from processors.query.parameters import SearchParameters
from streams.wire import headers as h
from streams.exceptions import DecodeLimitError
from processors.query.limits import CLOCK_SKEW_MS
from streams.stages.fanout import DEFAULT_TIMEOUT_MS, QueryFanout, decode_live, flow_deadline_ms, is_expired
from streams.wire.codec import REQUEST, SEARCH_REPLY
from streams.wire.records import Request
from streams.runtime.spec import Inbound
from streams.wire.topics import FlowTopics
from tests.streams.stages.fixtures import FixedEncoder
from tests.streams.wire.fixtures import nested

TOPICS = FlowTopics("deadlines", 2)


def now_ms() -> int:
    return int(time.time() * 1000)


def query(value: bytes, *, age_ms: int, deadline_ms: int | None = None, log_append_time: bool = False) -> Inbound:
    headers = {h.SCHEMA: REQUEST.header()[1]}
    if deadline_ms is not None:
        headers[h.DEADLINE_MS] = str(deadline_ms).encode()
    return Inbound(TOPICS.query, 0, 0, b"r", value, headers, timestamp_ms=now_ms() - age_ms,
                   log_append_time=log_append_time)


def request(request_id: str = "r") -> bytes:
    return REQUEST.encode(Request(request_id, "search", [Document(id="q0", text="q")], "deadlines.reply.t",
                                  now_ms() + 60_000, {}, {}))


class TestDeadlines:
    def test_the_header_decides_when_there_is_one(self) -> None:
        assert is_expired(query(b"", age_ms=0, deadline_ms=now_ms() - 1))
        assert not is_expired(query(b"", age_ms=10**9, deadline_ms=now_ms() + 60_000))

    @pytest.mark.parametrize("header", [None, "soon"])
    def test_without_a_readable_header_a_record_expires_a_timeout_after_its_timestamp(self, header: str | None) -> None:
        def record(age_ms: int) -> Inbound:
            r = query(b"", age_ms=age_ms)
            return r if header is None else Inbound(r.topic, 0, 0, b"r", b"", {h.DEADLINE_MS: header.encode()},
                                                    r.timestamp_ms)

        assert not is_expired(record(0))
        assert is_expired(record(DEFAULT_TIMEOUT_MS + 1000))
        assert not is_expired(record(DEFAULT_TIMEOUT_MS + 1000), default_timeout_ms=60_000)

    def test_an_expired_headerless_record_is_skipped_undecoded(self) -> None:
        deep = query(nested(5000), age_ms=DEFAULT_TIMEOUT_MS + 1000)  # would be refused if it were decoded
        assert list(decode_live([deep], REQUEST)) == []
        with pytest.raises(DecodeLimitError, match="max_document_depth"):
            list(decode_live([query(b"\x02r\x06\x02" + nested(40) + b"\x00\x00\x02t\x02\x00", age_ms=0)], REQUEST))

    def test_the_encode_stage_gives_headerless_queries_its_flow_timeout(self) -> None:
        fanout = QueryFanout(encoder=FixedEncoder(), topics=TOPICS, defaults=SearchParameters(),  # type: ignore[arg-type]
                             timeout_s=30)
        old = query(request("old"), age_ms=20_000, log_append_time=True)
        assert {o.key for o in fanout.process([old])} == {"old"}
        assert fanout.process([query(request("older"), age_ms=31_000, log_append_time=True)]) == []
        # A CreateTime is the producer's clock: trusted to within CLOCK_SKEW_MS, so it expires that much later.
        assert {o.key for o in fanout.process([query(request("skewed"), age_ms=31_000)])} == {"skewed"}
        assert fanout.process([query(request("oldest"), age_ms=30_000 + CLOCK_SKEW_MS + 1000)]) == []
        default = QueryFanout(encoder=FixedEncoder(), topics=TOPICS, defaults=SearchParameters())  # type: ignore[arg-type]
        assert default.process([old]) == []


class _SlowEncoder(FixedEncoder):
    """Each call takes ``seconds`` of the test's clock: the work of a mini-batch of long texts."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        self.clock, self.seconds, self.calls = clock, seconds, 0

    def run(self, *, docs: Sequence[Document], traversal_paths: Sequence[str] | None = None,
            filter_by: Sequence[str] | None = None) -> EncodeResult:
        self.calls += 1
        self.clock[0] += self.seconds
        return super().run(docs=docs)


def test_a_request_due_while_earlier_ones_encode_is_not_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline is checked between mini-batches: a client that has given up costs no encoding."""
    clock = [time.time()]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    start = int(clock[0] * 1000)

    def record(request_id: str, texts: int, deadline_ms: int) -> Inbound:
        value = REQUEST.encode(Request(request_id, "search", [Document(id=f"q{i}", text="q") for i in range(texts)],
                                       "deadlines.reply.t", deadline_ms, {}, {}))
        return Inbound(TOPICS.query, 0, 0, request_id.encode(), value,
                       {h.SCHEMA: REQUEST.header()[1], h.DEADLINE_MS: str(deadline_ms).encode()}, start)

    encoder = _SlowEncoder(clock, seconds=5.0)
    fanout = QueryFanout(encoder=encoder, topics=TOPICS, defaults=SearchParameters())  # type: ignore[arg-type]
    assert QueryFanout.MINI_BATCH_DOCS == 32
    records = [record("late", 1, start + 8_000), record("first", 32, start + 3_000), record("second", 1, start + 4_000)]
    outputs = fanout.process(records)
    # "first" (due first) fills a mini-batch and takes 5 s: "second" is then past its deadline and
    # dropped unencoded; "late" is still due and is encoded in the next mini-batch.
    assert {o.key for o in outputs} == {"first", "late"} and encoder.calls == 2


class TestClockSkew:
    """A request's deadline counts on the flow's clock from when it entered Kafka, whatever the
    client's clock said (within CLOCK_SKEW_MS for a CreateTime)."""

    @staticmethod
    def sent(*, skew_ms: int, backlog_ms: int = 0, timeout_ms: int | None = 5_000,
             log_append_time: bool = False) -> Inbound:
        """A request sent ``backlog_ms`` ago by a client whose clock is ``skew_ms`` off (negative: behind)."""
        client_sent = now_ms() - backlog_ms + skew_ms
        headers = {h.DEADLINE_MS: str(client_sent + 5_000).encode(), h.REQUEST_ID: b"r1", h.REPLY_TO: b"deadlines.reply.t"}
        if timeout_ms is not None:
            headers[h.TIMEOUT_MS] = str(timeout_ms).encode()
        appended = now_ms() - backlog_ms
        return Inbound(TOPICS.query, 0, 0, b"r1", b"", headers,
                       timestamp_ms=appended if log_append_time else client_sent, log_append_time=log_append_time)

    # An absolute deadline alone (no timeout header) on a LogAppendTime topic has nothing to be rebased on.
    @pytest.mark.parametrize(("timeout_ms", "log_append_time"), [(5_000, True), (5_000, False), (None, False)])
    @pytest.mark.parametrize("skew_ms", [-20_000, 0, 20_000])
    def test_a_client_clock_off_by_seconds_keeps_its_whole_timeout(self, skew_ms: int, timeout_ms: int | None,
                                                                   log_append_time: bool) -> None:
        record = self.sent(skew_ms=skew_ms, timeout_ms=timeout_ms, log_append_time=log_append_time)
        now = now_ms()
        assert now + 4_000 <= flow_deadline_ms(record, now) <= now + 5_000

    @pytest.mark.parametrize("log_append_time", [True, False])
    def test_a_request_from_a_backlog_still_expires(self, log_append_time: bool) -> None:
        record = self.sent(skew_ms=0, backlog_ms=60_000, log_append_time=log_append_time)
        assert flow_deadline_ms(record, now_ms()) < now_ms()

    def test_an_expired_request_is_answered_with_the_expiry_and_counted(self) -> None:
        from prometheus_client import REGISTRY

        def expired() -> float:
            return REGISTRY.get_sample_value("streamsearch_expired_requests_total",
                                             {"flow": TOPICS.flow, "stage": "encode"}) or 0.0

        before = expired()
        fanout = QueryFanout(encoder=FixedEncoder(), topics=TOPICS, defaults=SearchParameters())  # type: ignore[arg-type]
        [out] = fanout.process([self.sent(skew_ms=0, backlog_ms=60_000, log_append_time=True)])
        reply = SEARCH_REPLY.decode(out.value)
        assert out.reply and out.topic == "deadlines.reply.t" and reply.request_id == "r1"
        assert reply.errors[0].startswith("RequestExpiredError: the encode stage took the request up ")
        assert "after its deadline" in reply.errors[0]
        assert expired() == before + 1
