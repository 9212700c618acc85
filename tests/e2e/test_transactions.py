"""``processing_guarantee: exactly_once``: the transactional path.

Begin, produce, send the offsets into the transaction, commit; on failure abort and rewind, so
the batch runs again. On Apache Kafka a read_committed reader never sees the aborted attempt;
Tansu accepts transactions but shows aborted records (``shared/EMBEDDED_BROKER.md``), which
upserts by id make harmless: on it the test asserts that known gap instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import streams
from streams.kafka.admin import ensure_topics
from streams.runtime.checkpoint import TransactionalCheckpoint
from streams.client import IndexReceipt
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.consumer import consume_batch, make_consumer
from streams.local.brokers import BrokerKind
from streams.wire.topics import TopicShape
from tests.e2e.fixtures import FlowFactory, corpus_with_unique_sentences, sentence_flow_yaml, stage_logs, stop_within
from tests.e2e.recovery import (assert_exact, committed_keys, read_shards, starts, text_hash, transactional_id,
                                wait_applied)

pytestmark = pytest.mark.kafka


def _poll_until(consumer: Consumer, count: int, timeout: float = 20.0) -> list[Message]:
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        records.extend(m for m in consume_batch(consumer, max_records=count, timeout=0.5) if m.error() is None)
    return records


def _committed(consumer: Consumer, topic: str) -> int:
    [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    return tp.offset


def test_a_batch_commits_outputs_and_offsets_in_one_transaction_and_reruns_after_an_abort(
        kafka_settings: KafkaSettings, broker_kind: BrokerKind) -> None:
    source, sink = f"tx-in-{uuid.uuid4().hex[:6]}", f"tx-out-{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka_settings, [TopicShape(source, 1), TopicShape(sink, 1)])
    feeder = StageProducer(kafka_settings)
    for i in range(6):
        feeder.produce(source, value=f"record {i}".encode(), partition=0)
    feeder.flush()

    group = f"tx-{uuid.uuid4().hex[:6]}"
    consumer = make_consumer(kafka_settings, group_id=group)
    consumer.assign([TopicPartition(source, 0, 0)])
    producer = StageProducer(kafka_settings, **{"transactional.id": f"{group}.0"})
    checkpoint = TransactionalCheckpoint(consumer, producer, flow="tx", stage="test")
    try:
        first = _poll_until(consumer, 3)[:3]
        checkpoint.begin()
        for msg in first:
            producer.produce(sink, value=msg.value().upper(), partition=0)
            checkpoint.record(source, 0, msg.offset())
        checkpoint.abort()  # a failure mid-batch: nothing committed, the consumer rewinds
        assert _committed(consumer, source) < 0

        again = _poll_until(consumer, 6)
        assert [m.offset() for m in again] == list(range(6)), "the aborted batch runs again from the start"
        checkpoint.begin()
        for msg in again:
            producer.produce(sink, value=msg.value().upper(), partition=0)
            checkpoint.record(source, 0, msg.offset())
        checkpoint.commit()
        assert _committed(consumer, source) == 6, "offsets committed by send_offsets_to_transaction"
    finally:
        consumer.close()
        producer.close()

    reader = make_consumer(kafka_settings, group_id=f"reader-{uuid.uuid4().hex[:6]}",
                           **{"isolation.level": "read_committed"})
    reader.assign([TopicPartition(sink, 0, 0)])
    try:
        values = [m.value() for m in _poll_until(reader, 9, timeout=10)]
    finally:
        reader.close()
    committed = [f"RECORD {i}".encode() for i in range(6)]
    if broker_kind is BrokerKind.KAFKA:
        assert values == committed, "read_committed isolation: the aborted attempt is invisible"
    else:
        assert values == committed[:3] + committed, "Tansu shows the aborted attempt (known gap)"


TWO_RUNS_DOCS = 300
PACKAGE_ROOT = Path(streams.__file__).resolve().parents[1]


def _members_with_partitions(settings: KafkaSettings, group: str) -> int:
    """How many members of ``group`` hold partitions now (0 while the group rebalances)."""
    admin = AdminClient(settings.base())
    try:
        description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    except Exception:  # the group is forming: ask again
        return 0
    return sum(1 for member in description.members if member.assignment.topic_partitions)


def _starts(log_dir: Path) -> dict[str, int]:
    """How many times each stage process of a run started, by log file (one line per start)."""
    return {str(log): log.read_text(errors="replace").count("stage running") for log in sorted(log_dir.glob("*.log"))}


def test_two_runs_of_one_exactly_once_flow_share_the_work_without_fencing_each_other(
        start_flow: FlowFactory, broker_kind: BrokerKind, tmp_path: Path) -> None:
    """A second ``streamsearch run`` of an exactly_once flow (another host, or more capacity) on the
    same cluster: each of its replicas has a transactional id of its own, so no producer fences
    another, no stage restarts, and each document is written and indexed once."""
    first = start_flow(sentence_flow_yaml(guarantee="exactly_once"))
    assert first.settings is not None and first.local_flow is not None
    flow, settings = first.flow, first.settings
    host = tmp_path / "second-host"  # another directory, its own state: a second host, as far as the flow can tell
    host.mkdir()
    flow_path = host / "flow.yml"
    flow_path.write_text(Path(first.flow_path).read_text())
    output = open(host / "run.log", "wb")
    second = subprocess.Popen([sys.executable, "-m", "streams.cli", "run", str(flow_path), "--state-dir",
                               str(host / "state")], cwd=host, stdout=output, stderr=subprocess.STDOUT,
                              env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
                                   "PYTHONPATH": str(PACKAGE_ROOT)})  # this copy of streams, from any directory
    try:
        deadline = time.monotonic() + 180
        groups = [flow.topics.group(stage) for stage in ("segment", "encode", "index")]
        while not all(_members_with_partitions(settings, group) == 2 for group in groups):  # one partition each
            assert second.poll() is None, (host / "run.log").read_text()
            assert time.monotonic() < deadline, f"the second run never took a partition of each of {groups}"
            time.sleep(0.5)  # polling interval of a condition
        corpus = corpus_with_unique_sentences(TWO_RUNS_DOCS)
        final = IndexReceipt()
        with first.client() as client:
            for start in range(0, TWO_RUNS_DOCS, 25):
                final = final.merge(client.index([doc for doc, _ in corpus[start:start + 25]]))
            wait_applied(client, final)
            for doc, sentence in corpus[::10]:
                reply = client.search(sentence, timeout_s=20)
                assert not reply.partial and reply.docs[0].matches[0].id == doc.id, (sentence, reply)
        if broker_kind is BrokerKind.KAFKA:  # Tansu shows aborted records (EMBEDDED_BROKER.md)
            for topic in (flow.topics.segmented, flow.topics.encoded):
                keys = committed_keys(first, topic)
                assert sorted(keys) == sorted(doc.id.encode() for doc, _ in corpus), \
                    f"{topic}: {len(keys)} records visible to read_committed for {TWO_RUNS_DOCS} documents"
    finally:
        second.send_signal(signal.SIGINT)
        stop_within(second, 60, [host / "run.log", *sorted((host / "state" / "logs").glob("*.log"))])
        output.close()
        first.local_flow.stop()
    starts = _starts(Path(flow.state_dir) / "logs") | _starts(host / "state" / "logs")
    assert len(starts) == 2 * len(flow.stages) and set(starts.values()) == {1}, \
        f"stage restarts: {starts}\n{stage_logs(first)}\n{(host / 'run.log').read_text()[-3000:]}"
    # each document on one shard, with its content and one vector per chunk (a shard may be held in both state
    # dirs: the run stopped last takes the other's shards back and restores them from the topic)
    texts = {doc.id: doc.text for doc, _ in corpus}
    shards_of: dict[str, set[int]] = {}
    for state in (Path(flow.state_dir), host / "state"):
        contents = read_shards(state, flow.name, flow.topics.partitions, flow.stage("index").config)
        assert contents.vectors == len(contents.vector_table), f"{state}: duplicated vectors"
        for doc_id, shards in contents.shards_of.items():
            shards_of.setdefault(doc_id, set()).update(shards)
            assert text_hash(contents.docs[doc_id].text) == text_hash(texts[doc_id]), doc_id
            assert contents.per_doc.get(doc_id, 0) == len(contents.docs[doc_id].chunks), doc_id
    assert sorted(shards_of) == sorted(texts)
    assert not {doc_id: shards for doc_id, shards in shards_of.items() if len(shards) > 1}


FENCED_DOCS = 40


def test_a_stage_whose_transactional_producer_is_fenced_replaces_it_and_lives_on(
        start_flow: FlowFactory, broker_kind: BrokerKind) -> None:
    """A fatal error of an exactly_once stage's producer (here the surest one: fenced by another producer
    with its transactional id) ends that producer, not the process: nobody else owns the id (it names this
    replica of this supervisor), so the stage replaces the producer, the batch runs again, the process
    is the one that started, and each document is written and indexed once."""
    runtime = start_flow(sentence_flow_yaml(guarantee="exactly_once"))
    assert runtime.settings is not None and runtime.local_flow is not None
    corpus = corpus_with_unique_sentences(FENCED_DOCS)
    first, second = corpus[:FENCED_DOCS // 2], corpus[FENCED_DOCS // 2:]
    encode = runtime.local_flow.find("encode").process.pid
    with runtime.client() as client:
        final = client.index([doc for doc, _ in first])
        wait_applied(client, final)
        intruder = Producer({**runtime.settings.base(), "transactional.id": transactional_id(runtime, "encode")})
        intruder.init_transactions(30)  # bumps the id's epoch: the stage's producer is fenced from now on
        del intruder
        final = final.merge(client.index([doc for doc, _ in second]))
        wait_applied(client, final)
        for doc, sentence in second:
            reply = client.search(sentence, timeout_s=20)
            assert not reply.partial and reply.docs[0].matches[0].id == doc.id, (sentence, reply)
    log = runtime.local_flow.log_path("encode").read_text(errors="replace")
    assert (runtime.local_flow.find("encode").process.pid, starts(runtime, "encode")) == (encode, 1), \
        f"the encode stage restarted\n{stage_logs(runtime)}"
    if broker_kind is BrokerKind.KAFKA:  # Tansu shows aborted records (EMBEDDED_BROKER.md)
        assert "producer failed for good" in log, log[-3000:]
        for topic in (runtime.flow.topics.segmented, runtime.flow.topics.encoded):
            keys = committed_keys(runtime, topic)
            assert sorted(keys) == sorted(doc.id.encode() for doc, _ in corpus), \
                f"{topic}: {len(keys)} records visible to read_committed for {FENCED_DOCS} documents"
    runtime.local_flow.stop()
    assert_exact(runtime, {doc.id: doc.text or "" for doc, _ in corpus})
