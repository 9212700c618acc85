"""Replies go only to existing reply topics of the flow, best effort: a client that has gone (its
reply topic deleted) or a reply_to aimed elsewhere never stops a stage or holds back its commits."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from streams.kafka.admin import delete_topics, ensure_topics
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.consumer import make_consumer
from streams.local.brokers import LocalBroker
from streams.runtime.metrics import UNDELIVERABLE_REPLIES
from streams.runtime.reply_topics import ReplyTopics
from streams.runtime.loop import StageLoop
from streams.runtime.spec import Inbound, Output, PathSpec, StageSpec
from streams.exceptions import ReplyTopicError
from streams.wire.topics import FlowTopics, TopicShape
from tests.fixtures import read_all, wait_until

pytestmark = pytest.mark.kafka


class _Answering:
    """Answers each record on the reply topic its value names, and copies it to a sink."""

    def __init__(self, sink: str) -> None:
        self.sink = sink

    def process(self, records: list[Inbound]) -> list[Output]:
        outputs = []
        for r in records:
            outputs.append(Output(r.value.decode(), value=b"reply", key=r.key, reply=True))  # type: ignore[union-attr]
            outputs.append(Output(self.sink, value=r.value, key=r.key, partition=0))
        return outputs

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return []

    def tick(self) -> list[Output]:
        return []


def test_replies_to_gone_or_foreign_topics_are_dropped_and_counted_and_the_rest_flows(
        kafka_settings: KafkaSettings) -> None:
    name = f"rep{uuid.uuid4().hex[:6]}"
    topics = FlowTopics(name, 1)
    source, sink = f"{name}.in", f"{name}.out"
    live, gone = topics.new_reply_topic(), topics.new_reply_topic()
    ensure_topics(kafka_settings, [TopicShape(t, 1) for t in (source, sink, topics.dead_letter, live, gone)])
    replies = ReplyTopics(topics, kafka_settings)
    assert replies.exists(gone)  # seen, and remembered: the client deletes it only now
    delete_topics(kafka_settings, [gone])
    targets = [live, gone, sink, f"{name}.reply.never", "elsewhere.reply.x", live]
    feeder = StageProducer(kafka_settings)
    for i, target in enumerate(targets):
        feeder.produce(source, value=target.encode(), key=f"k{i}", partition=0)
    feeder.flush()
    spec = StageSpec(flow=name, name="answer", dead_letter_topic=topics.dead_letter, reply_topics=replies,
                     index_path=PathSpec(source, f"{name}.stage", _Answering(sink), batch_size=10))
    before = UNDELIVERABLE_REPLIES.labels(name, "answer")._value.get()
    loop = StageLoop(spec, kafka_settings)
    loop._start()
    started = time.monotonic()
    try:
        while loop.processed < len(targets):
            assert time.monotonic() - started < 120, "the input was not processed"
            loop.step()
    finally:
        loop._close()
    # The deleted topic was still remembered as existing: its reply failed at delivery, counted,
    # and the batch committed anyway. The rest were refused before producing.
    assert UNDELIVERABLE_REPLIES.labels(name, "answer")._value.get() - before == 4  # gone, sink, never, elsewhere
    assert [m.key() for m in read_all(kafka_settings, sink, 1)] == [f"k{i}".encode() for i in range(len(targets))]
    assert [m.key() for m in read_all(kafka_settings, live, 1)] == [b"k0", b"k5"]
    consumer = make_consumer(kafka_settings, group_id=f"{name}.stage")
    try:
        assert consumer.committed([TopicPartition(source, 0)], timeout=10)[0].offset == len(targets)
    finally:
        consumer.close()


def test_reply_topic_names_and_existence(kafka_settings: KafkaSettings) -> None:
    topics = FlowTopics(f"rn{uuid.uuid4().hex[:6]}", 1)
    mine = topics.new_reply_topic()
    ensure_topics(kafka_settings, [TopicShape(mine, 1)])
    replies = ReplyTopics(topics, kafka_settings)
    replies.check(mine)
    for name, message in ((topics.ingest, "is not a reply topic"), (f"{topics.flow}.reply.a b", "is not a reply topic"),
                          (f"{topics.flow}.reply.gone", "does not exist")):
        with pytest.raises(ReplyTopicError, match=message):
            replies.check(name)
    # Asking never creates the topic it asks about.
    assert not replies.exists(f"{topics.flow}.reply.gone")


class _GatedLookups(ReplyTopics):
    """Real lookups that first wait for the test to open a gate, as one waited for a broker coming back
    from a kill; each notes the thread that asked."""

    GATE_S = 30.0

    def __init__(self, topics: FlowTopics, settings: KafkaSettings) -> None:
        super().__init__(topics, settings)
        self.gate = threading.Event()
        self.asked_on: list[str] = []
        self.answers: list[bool | None] = []

    def _lookup(self, name: str, timeout_s: float) -> bool | None:
        self.asked_on.append(threading.current_thread().name)
        self.gate.wait(self.GATE_S)
        found = super()._lookup(name, timeout_s)
        self.answers.append(found)
        return found


def test_a_reply_topic_seen_to_exist_is_asked_about_again_off_the_query_path(kafka_settings: KafkaSettings) -> None:
    """Once its time is up, a topic seen to exist is asked about in the background and trusted meanwhile:
    a query path never waits for that lookup (a query missed its deadline while one waited for a broker
    coming back). The background answer is taken: a topic deleted meanwhile is then missing."""
    topics = FlowTopics(f"rb{uuid.uuid4().hex[:6]}", 1)
    mine = topics.new_reply_topic()
    ensure_topics(kafka_settings, [TopicShape(mine, 1)])
    replies = _GatedLookups(topics, kafka_settings)
    replies.EXISTS_TTL_S = 0.0  # every answer after the first is out of date at once
    replies.gate.set()
    assert replies.exists(mine)
    assert replies.asked_on == [threading.current_thread().name]  # never seen: asked on the caller's thread
    replies.gate.clear()
    try:
        delete_topics(kafka_settings, [mine])
        # Asked on this thread, the lookup would wait GATE_S for the gate, then find the topic gone.
        assert replies.exists(mine) and replies.exists(mine)
        assert not replies.gate.is_set()
        wait_until(lambda: len(replies.asked_on) == 2, "no background lookup")
        assert replies.asked_on[1] == "reply-topic-lookups"
    finally:
        replies.gate.set()
    wait_until(lambda: not replies.exists(mine), "the background lookup's answer was not taken")
    assert set(replies.asked_on[1:]) == {"reply-topic-lookups"}


def test_a_failed_reply_is_not_undone_by_a_lookup_begun_before_it(kafka_settings: KafkaSettings) -> None:
    """A reply that failed (``gone``) while a background lookup was under way is the fresher news: the lookup's
    "exists" does not bring the topic back for another ``EXISTS_TTL_S`` of replies failing at delivery."""
    topics = FlowTopics(f"rg{uuid.uuid4().hex[:6]}", 1)
    mine = topics.new_reply_topic()
    ensure_topics(kafka_settings, [TopicShape(mine, 1)])
    replies = _GatedLookups(topics, kafka_settings)
    replies.EXISTS_TTL_S, replies.MISSING_TTL_S = 0.0, 600.0
    replies.gate.set()
    assert replies.exists(mine)
    replies.gate.clear()
    try:
        assert replies.exists(mine)  # out of date: asked again in the background, held at the gate
        wait_until(lambda: len(replies.asked_on) == 2, "no background lookup")
        replies.gone(mine)
    finally:
        replies.gate.set()
    wait_until(lambda: len(replies.answers) == 2, "the background lookup did not answer")
    assert replies.answers == [True, True]  # the topic still exists: only the failed reply says otherwise
    wait_until(lambda: not replies._refreshing, "the background lookup's answer was not weighed")
    assert not replies.exists(mine)


def test_a_topic_never_seen_is_looked_up_within_what_its_query_has_left(broker: LocalBroker,
                                                                         kafka_settings: KafkaSettings) -> None:
    """A new client's first query asks about its reply topic on the query path: with the broker frozen (a
    network partition), that lookup waits only what the query has left, not ``LOOKUP_TIMEOUT_S``. Unanswered, the
    topic counts as existing for ``MISSING_TTL_S`` only (the short wait is easy to miss), then is asked about
    again in the background, where the cluster, back, answers."""
    topics = FlowTopics(f"rn{uuid.uuid4().hex[:6]}", 1)
    seen, mine = topics.new_reply_topic(), topics.new_reply_topic()
    ensure_topics(kafka_settings, [TopicShape(seen, 1), TopicShape(mine, 1)])
    replies = _GatedLookups(topics, kafka_settings)
    replies.gate.set()
    replies.LOOKUP_TIMEOUT_S = 120.0  # what an unbounded lookup would wait for the frozen broker
    replies.MISSING_TTL_S = 0.0  # an unanswered lookup's "exists" is out of date at once
    assert replies.exists(seen)  # its admin client connected, as a running stage's is
    answered: list[bool] = []
    soon = int(time.time() * 1000) + 500  # its query's deadline
    lookup = threading.Thread(target=lambda: answered.append(replies.exists(mine, deadline_ms=soon)), daemon=True)
    broker.pause()
    try:
        lookup.start()
        lookup.join(30)
        assert not lookup.is_alive(), "the first lookup waited for the frozen broker past its query's time"
    finally:
        broker.resume()
    assert answered == [True] and replies.answers == [True, None]  # no answer: taken for existing
    assert replies.exists(mine)  # out of date: trusted, and asked about again in the background
    wait_until(lambda: len(replies.answers) == 3, "an unanswered lookup was trusted as long as an answer")
    assert replies.asked_on[2] == "reply-topic-lookups" and replies.answers[2] is True
    later = int(time.time() * 1000) + 30_000
    assert not replies.exists(topics.new_reply_topic(), deadline_ms=later)  # the cluster answers again: no such topic
    # A deadline no float holds (a hostile header's digits) raises nothing: no bound, or long past (the shortest).
    assert not replies.exists(topics.new_reply_topic(), deadline_ms=10 ** 400)
    assert not replies.usable(topics.new_reply_topic(), deadline_ms=-(10 ** 400))
