"""Fuzzing at the wire: 10,000 malformed or hostile records across the ingest, query and partials
topics of a running flow (and 1,000 more on the search topic). Every one is dead-lettered with a reason (or, for a well-formed request
the flow refuses, answered with an error naming the limit), no stage process crashes or restarts,
nothing is written where it does not belong, and good documents produced after them are indexed
and found."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from streams.kafka.admin import ensure_topics
from streams.client.dead_letters import read_dead_letters
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.consumer import consume_batch, make_consumer
from streams.local.runtime import LocalRuntime
from streams.local.supervisor import stage_log_files
from streams.wire.codec import SEARCH_REPLY
from streams.wire.topics import TopicShape
from tests.e2e.fixtures import FlowFactory, corpus_with_unique_sentences, sentence_flow_yaml, stage_logs
from tests.e2e.hostile_records import Hostile, HostileRecords

pytestmark = pytest.mark.kafka

PER_TOPIC = {"ingest": 4_000, "query": 3_000, "partials": 3_000}
SEARCH_RECORDS = 1_000
MAX_PAYLOAD_BYTES = 262_144
"""Small, so that a record over it is cheap to send."""


def _produce(settings: KafkaSettings, topic: str, records: list[Hostile]) -> None:
    producer = StageProducer(settings, max_payload_bytes=MAX_PAYLOAD_BYTES)
    for record in records:
        producer.produce(topic, value=record.value, key=record.key, headers=record.headers)
    producer.flush(60)


def _read_replies(settings: KafkaSettings, topic: str, expected: int, timeout: float) -> list[bytes]:
    """The values on a reply topic, until ``expected`` came or ``timeout`` passed."""
    consumer = make_consumer(settings, group_id=f"{topic}.reader")
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            values.extend(m.value() for m in consume_batch(consumer, max_records=500, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return values


def test_ten_thousand_hostile_records_are_each_dead_lettered_and_the_flow_keeps_serving(
        start_flow: FlowFactory, kafka_settings: KafkaSettings) -> None:
    runtime: LocalRuntime = start_flow(sentence_flow_yaml(shards=2) + f"max_payload_bytes: {MAX_PAYLOAD_BYTES}\n")
    topics = runtime.flow.topics
    reply_topic = topics.new_reply_topic()
    ensure_topics(kafka_settings, [TopicShape(reply_topic, 1)])
    hostile = HostileRecords(topics, reply_topic)
    batches = {
        topics.ingest: list(hostile.ingest(PER_TOPIC["ingest"])),
        topics.query: list(hostile.query(PER_TOPIC["query"])),
        topics.partials: list(hostile.partials(PER_TOPIC["partials"])),
    }
    # Beyond the issue's three topics: records written straight to the shards' topic, past the
    # encode stage's checks.
    batches[topics.search] = list(hostile.search(SEARCH_RECORDS))
    letters_expected = {r.key: r for records in batches.values() for r in records if r.refusal is None}
    rejected = [r for records in batches.values() for r in records if r.refusal is not None]
    assert len(letters_expected) == 10_000 + SEARCH_RECORDS and {r.kind for r in rejected} == {
        "deadline in 10^8 years", "7-d query vector"}
    for topic, records in batches.items():
        _produce(kafka_settings, topic, records)

    # Good documents after all of that: indexed and found.
    good = corpus_with_unique_sentences(6)
    with runtime.client(timeout_s=60) as client:
        receipt = client.index([doc for doc, _ in good])
        for doc, query in good:
            reply = client.search(query, top_k=3, after=receipt)
            assert not reply.partial and not reply.errors, (reply, stage_logs(runtime))
            assert reply.docs[0].matches[0].id == doc.id, (query, [m.id for m in reply.docs[0].matches])

    letters = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        letters = read_dead_letters(kafka_settings, topics, timeout=30)
        if len({letter.key for letter in letters} & letters_expected.keys()) == len(letters_expected):
            break
    keys = Counter(letter.key for letter in letters)
    missing = [(r.kind, r.key) for key, r in letters_expected.items() if key not in keys]
    assert not missing, (f"{len(missing)} hostile records not dead-lettered, e.g. {missing[:10]}", stage_logs(runtime))
    assert not [key for key, n in keys.items() if n > 1], "a record was dead-lettered twice"
    # Only the hostile records: a reply written where a hostile reply_to pointed (the ingest or encoded
    # topic) would have come back as one more dead letter.
    assert len(letters) == len(letters_expected), "only the hostile records were dead-lettered"
    for letter in letters:
        assert letter.error_class not in ("", "?") and letter.message, letter
    by_kind = Counter((letters_expected[letter.key].kind, letter.stage, letter.error_class) for letter in letters)
    assert {kind for kind, _, _ in by_kind} == {r.kind for r in letters_expected.values()}
    print("\n".join(f"{n:5d}  {kind}: {stage} {error}" for (kind, stage, error), n in sorted(by_kind.items())))

    # The refused requests were answered, with the limit named; nothing else reached the reply topic
    # but replies (an error reply per dead-lettered request that named it).
    query_letters = sum(1 for r in batches[topics.query] if r.refusal is None)
    values = _read_replies(kafka_settings, reply_topic, query_letters + len(rejected), timeout=60)
    replies = {reply.request_id: reply for reply in map(SEARCH_REPLY.decode, values)}  # only replies there
    for record in rejected:
        reply = replies.get(record.key.decode())
        assert reply is not None and any(record.refusal in e for e in reply.errors), (record.kind, reply)

    # Zero crashes: every stage process is the one started, nothing logged a traceback or a fault.
    assert runtime.local_flow is not None
    assert all(p.restarts == 0 and p.process.poll() is None for p in runtime.local_flow.processes), \
        stage_logs(runtime)
    logs = "\n".join(path.read_text() for path in stage_log_files(runtime.flow))
    assert "Traceback" not in logs and "crashed the stage" not in logs, stage_logs(runtime)
    faults = list((Path(runtime.flow.state_dir) / topics.prefix / "inflight").glob("fault-*.log"))
    assert faults and not any(path.stat().st_size for path in faults), faults
