"""What the README promises about Kafka, checked on Apache Kafka: topic settings, the broker's
message size limit, compaction of ``<flow>.encoded``, and persistence across broker restarts.

These need the real broker (Tansu has no limit, no compaction, no disk), so the module runs on
Apache Kafka whatever the session broker is: when the session runs on Tansu it starts its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from processors.document import Document
from streams.wire import headers as h
from streams.kafka.admin import describe_topics, ensure_topics
from streams.client.dead_letters import read_dead_letters
from streams.flow.parse import load_flow
from streams.client.http import create_app
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import MAX_BATCH_BYTES, StageProducer
from streams.kafka.consumer import make_consumer
from streams.kafka.reader import fetch_high_watermarks
from streams.local.apache_kafka import KafkaCluster
from streams.local.brokers import BrokerKind, LocalBroker
from streams.local.runtime import LocalRuntime
from streams.runtime.loop import StageLoop
from streams.runtime.spec import Inbound, Output, PathSpec, StageSpec
from streams.wire.topics import RECORD_OVERHEAD_BYTES, TopicShape
from tests.e2e.fixtures import FlowFactory, call, cli, corpus_with_unique_sentences, sentence_flow_yaml, stage_logs
from tests.e2e.recovery import read_shards, wait_applied
from tests.fixtures import read_all

pytestmark = pytest.mark.kafka

KAFKA_DEFAULT_MESSAGE_MAX_BYTES = 1048588
"""Apache Kafka's default ``message.max.bytes`` (and so a topic's default ``max.message.bytes``)."""


@pytest.fixture(scope="module")
def kafka(broker: LocalBroker, broker_kind: BrokerKind, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """Apache Kafka for this module: the session's, or one of its own when the session runs on Tansu."""
    if broker_kind is BrokerKind.KAFKA:
        yield broker
        return
    own = KafkaCluster(tmp_path_factory.mktemp("module-kafka")).start()
    previous = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = own.bootstrap_servers
    try:
        yield own
    finally:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = previous
        own.stop()


# -- the JVM -------------------------------------------------------------------------------------


def test_a_produce_request_of_the_largest_batch_is_no_humongous_object_in_the_local_brokers_heap(
        kafka: LocalBroker) -> None:
    """G1 puts an object of half a region or more straight into the old generation, and each such allocation
    started a concurrent mark (``G1_REGION`` in ``streams/local/apache_kafka.py``): the regions the running JVM's
    options give (asked of its own ``java -XX:+PrintFlagsFinal`` with them, which a JRE alone has) must hold a
    request carrying the largest batch a producer builds as an ordinary object."""
    assert isinstance(kafka, KafkaCluster)
    for node in kafka.nodes:
        assert node.pid is not None, f"node {node.node_id} is not running"
        command = Path(f"/proc/{node.pid}/cmdline").read_bytes().split(b"\0")
        options = [os.fsdecode(arg) for arg in command[1:command.index(b"-cp")] if arg.startswith(b"-X")]
        final = subprocess.run([os.readlink(f"/proc/{node.pid}/exe"), *options, "-XX:+PrintFlagsFinal", "-version"],
                               capture_output=True, text=True, timeout=60, check=False)
        assert final.returncode == 0, final.stderr
        [region] = [int(line.split()[3]) for line in final.stdout.splitlines() if " G1HeapRegionSize " in line]
        assert region // 2 > MAX_BATCH_BYTES + RECORD_OVERHEAD_BYTES, (region, options)


# -- topic settings ----------------------------------------------------------------------------


TOPICS_SECTION = """
max_payload_bytes: 2000000
topics:
  min_insync_replicas: 1
  config:
    encoded: {segment.ms: 600000}
    query: {unclean.leader.election.enable: true}
"""


def test_topics_carry_the_settings_the_flow_asked_for_and_status_shows_them(
        kafka: LocalBroker, start_flow: FlowFactory) -> None:
    runtime = start_flow(sentence_flow_yaml() + TOPICS_SECTION)
    assert runtime.settings is not None
    topics = runtime.flow.topics
    described = {t.name: t for t in describe_topics(runtime.settings, [s.name for s in topics.shapes()])}
    assert set(described) == {s.name for s in topics.shapes()}
    for topic in described.values():
        assert topic.replication_factor == 1  # a one-broker cluster: the broker count
        assert topic.config["min.insync.replicas"] == "1"
        assert topic.config["max.message.bytes"] == str(2000000 + RECORD_OVERHEAD_BYTES)
    assert described[topics.ingest].config["retention.ms"] == "-1"
    assert described[topics.ingest].config["cleanup.policy"] == "delete"
    for compacted in (topics.encoded, topics.status, topics.versions):
        assert described[compacted].config["cleanup.policy"] == "compact"
    assert described[topics.query].config["unclean.leader.election.enable"] == "true"
    assert described[topics.segmented].config["unclean.leader.election.enable"] == "false"

    shown = cli("status", "--flow", str(runtime.flow_path), bootstrap=runtime.settings.bootstrap_servers)
    assert shown.returncode == 0, shown.stderr
    assert f"{topics.encoded}" in shown.stdout and "compact" in shown.stdout
    warnings = [line for line in shown.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {topics.query}: unclean.leader.election.enable=true "
                        "(a failover can lose acknowledged records)"], shown.stdout
    as_json = json.loads(cli("status", "--flow", str(runtime.flow_path), "--json",
                              bootstrap=runtime.settings.bootstrap_servers).stdout)
    assert as_json["brokers"] == 1 and len(as_json["topics"]) == len(topics.shapes())


# -- the broker's message size limit ------------------------------------------------------------


LIMITED_FLOW = """
topics:
  config:
    encoded: {max.message.bytes: %d}
""" % KAFKA_DEFAULT_MESSAGE_MAX_BYTES


def _long_document(doc_id: str, sentences: int) -> Document:
    words = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "iris", "jade")
    text = " ".join(f"Sentence {i} tells of {words[i % 10]} and {words[(i // 10) % 10]} number {i}." for i in range(sentences))
    return Document(id=doc_id, text=text)


def test_an_encoded_record_over_the_topic_limit_is_dead_lettered_and_later_documents_are_indexed(
        kafka: LocalBroker, start_flow: FlowFactory) -> None:
    runtime = start_flow(sentence_flow_yaml(shards=1) + LIMITED_FLOW)
    assert runtime.settings is not None
    topics = runtime.flow.topics
    big = _long_document("big", 900)  # 900 chunks × 384 float32 ≈ 1.4 MB encoded; the ingest record is ~50 KB
    after = corpus_with_unique_sentences(3)
    with runtime.client() as client:
        receipt = client.index([big, *(doc for doc, _ in after)])
        wait_applied(client, receipt)
        for doc, sentence in after:
            reply = client.search(sentence, timeout_s=20)
            assert doc.id in [m.id for m in reply.docs[0].matches], stage_logs(runtime)
        assert "big" not in {m.id for m in client.search("Sentence 7 tells of harbor and amber", timeout_s=20).docs[0].matches}

    letters = read_dead_letters(runtime.settings, topics)
    assert [(letter.key, letter.stage, letter.source_topic) for letter in letters] == [(b"big", "encode", topics.segmented)]
    assert f"max.message.bytes={KAFKA_DEFAULT_MESSAGE_MAX_BYTES}" in letters[0].message, letters[0].message
    # Nothing committed past the big record that was not delivered or dead-lettered: the group is at the end.
    consumer = make_consumer(runtime.settings, group_id=topics.group("encode"))
    try:
        [committed] = consumer.committed([TopicPartition(topics.segmented, 0)], timeout=10)
    finally:
        consumer.close()
    assert committed.offset == 4 == letters[0].source_offset + 4


class _Oversize:
    """A handler whose output for a key starting with ``big`` exceeds what the sink takes."""

    def __init__(self, sink: str) -> None:
        self.sink = sink

    def process(self, records: list[Inbound]) -> list[Output]:
        return [Output(self.sink, value=(b"x" * 3_000_000 if r.key.startswith(b"big") else r.value), key=r.key,
                       partition=0) for r in records]

    def on_failure(self, record: Inbound, error: Exception) -> list[Output]:
        return []

    def tick(self) -> list[Output]:
        return []


def test_an_output_the_broker_refuses_dead_letters_its_input_and_nothing_is_committed_past_it(
        kafka: LocalBroker) -> None:
    """The stage does not know the limit (as with a broker-wide limit it cannot read): the broker's
    MSG_SIZE_TOO_LARGE delivery report is what dead-letters the input."""
    settings = KafkaSettings(kafka.bootstrap_servers)
    name = f"refused-{uuid.uuid4().hex[:6]}"
    source, sink, dead = f"{name}.in", f"{name}.out", f"{name}.dead-letter"
    ensure_topics(settings, [TopicShape(source, 1), TopicShape(dead, 1)], max_payload_bytes=8 * 1024 * 1024)
    ensure_topics(settings, [TopicShape(sink, 1)])  # Kafka's default limit, about 1 MB
    feeder = StageProducer(settings)
    for key in ("a", "big", "b", "c"):
        feeder.produce(source, value=f"value of {key}".encode(), key=key, partition=0)
    feeder.flush()
    group = f"{name}.stage"
    spec = StageSpec(flow=name, name="oversize", dead_letter_topic=dead,
                     index_path=PathSpec(source, group, _Oversize(sink), batch_size=10))
    loop = StageLoop(spec, settings)
    loop._topic_limits[sink] = 16 * 1024 * 1024  # pretend the stage could not learn the topic's limit
    loop._start()
    try:
        deadline = time.monotonic() + 60
        while loop.processed < 4:
            assert time.monotonic() < deadline, "the stage did not process its 4 records"
            loop.step()
    finally:
        loop._close()
    assert [m.key() for m in read_all(settings, sink, 1)] == [b"a", b"b", b"c"]
    [letter] = read_all(settings, dead, 1)
    headers = dict(letter.headers())
    assert letter.key() == b"big"
    reason = headers[h.DEAD_LETTER_MESSAGE].decode()
    assert "the broker refused the output" in reason and "too large" in reason.lower(), reason
    consumer = make_consumer(settings, group_id=group)
    try:
        assert consumer.committed([TopicPartition(source, 0)], timeout=10)[0].offset == 4
    finally:
        consumer.close()


# -- compaction of <flow>.encoded ------------------------------------------------------------------


COMPACTED_FLOW = """
topics:
  config:
    encoded: {segment.ms: 200, min.cleanable.dirty.ratio: 0.01, delete.retention.ms: 100, min.compaction.lag.ms: 0}
"""


def test_the_encoded_log_is_compacted_and_a_replay_from_it_equals_the_live_index(
        kafka: LocalBroker, start_flow: FlowFactory, tmp_path: Path) -> None:
    runtime = start_flow(sentence_flow_yaml(shards=1) + COMPACTED_FLOW)
    assert runtime.settings is not None
    topics = runtime.flow.topics
    ids = [f"doc-{i}" for i in range(10)]
    written = 0
    with runtime.client() as client:
        for version in range(6):  # every id updated six times: five stale versions each to compact away
            receipt = client.index([Document(id=i, text=f"Version {version} of {i} is about river number {version}.")
                                    for i in ids])
            written += len(ids)
            wait_applied(client, receipt)
            time.sleep(0.3)  # let segment.ms pass so that the next write rolls a new segment (pacing)
        deleted = ids[:3]
        wait_applied(client, client.delete(deleted))
        written += len(deleted)
        time.sleep(0.3)
        wait_applied(client, client.index([Document(id="roller", text="A last record rolls the active segment.")]))
        written += 1

        deadline = time.monotonic() + 120
        while len(remaining := read_all(runtime.settings, topics.encoded, 1)) >= written:
            assert time.monotonic() < deadline, f"{topics.encoded} not compacted in 120 s: {len(remaining)} of {written}"
            time.sleep(1)  # the log cleaner runs on its own schedule (log.cleaner.backoff.ms): poll its result
        live_top = [m.id for m in client.search("river number 5", top_k=10, timeout_s=20).docs[0].matches]
    print(f"compaction: {written} records written to {topics.encoded}, {len(remaining)} left after compaction")
    latest = {m.key(): m.value() for m in remaining}
    assert {k for k, v in latest.items() if v is not None} == {i.encode() for i in ids[3:]} | {b"roller"}
    assert all(latest.get(i.encode()) is None for i in deleted)  # a tombstone, or gone after delete.retention.ms

    runtime.local_flow.stop()  # type: ignore[union-attr]
    live = read_shards(runtime.flow.state_dir, runtime.flow.name, 1, runtime.flow.stage("index").config)
    replay = cli("replay", str(runtime.flow_path), "--from-beginning", "--state-dir", str(tmp_path / "replayed"),
                  bootstrap=runtime.settings.bootstrap_servers)
    assert replay.returncode == 0, replay.stderr
    replayed = read_shards(tmp_path / "replayed", runtime.flow.name, 1, runtime.flow.stage("index").config)
    assert set(replayed.docs) == set(live.docs) == set(ids[3:]) | {"roller"}
    assert {k: d.text for k, d in replayed.docs.items()} == {k: d.text for k, d in live.docs.items()}
    assert replayed.vector_table == live.vector_table
    assert live_top and not set(live_top) & set(deleted)


# -- persistence across broker restarts ------------------------------------------------------------


@pytest.mark.timeout(900)  # two recoveries of up to 240 s each, and a full restart: past the default 600
def test_the_local_kafka_keeps_everything_across_broker_restarts_and_a_full_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM, then kill -9, of the broker under running stages; then everything stopped and
    started again on the same state dir: shards resume from their stored offsets, nothing is
    rebuilt, lost or duplicated; searches during an outage are answered by their deadline."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)  # this test runs its own broker
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "flow.yml"
    path.write_text(sentence_flow_yaml().replace("{name}", "durable"))
    flow = load_flow(path)
    corpus = corpus_with_unique_sentences(24)
    batches = [corpus[0:8], corpus[8:16], corpus[16:24]]
    outage_codes: list[int] = []
    with LocalRuntime(flow, flow_path=path, state_dir=tmp_path / "state", broker=BrokerKind.KAFKA) as runtime:
        assert isinstance(runtime.broker, KafkaCluster)
        node = runtime.broker.nodes[0]
        with runtime.client() as client:
            runtime.wait_ready(client)
            wait_applied(client, client.index([doc for doc, _ in batches[0]]))
            app = create_app(client, token="")
            for stop in (node.stop, node.kill):  # SIGTERM (controlled shutdown), then SIGKILL (a crash)
                stop()
                outage_codes.append(call(app, "POST", "/search", json={"texts": "anything", "deadline_s": 2}).status_code)
                node.launch()
                runtime.broker.wait_ready()
                # After kill -9 the broker recovers its logs, each group waits out the old members' sessions, and
                # a stage that left to rejoin starts again (the encoder loads its model): ~40 s beside two busy
                # cores here, more than 120 s once in CI with two test sessions and their brokers.
                deadline = time.monotonic() + 240
                while (answer := call(app, "POST", "/search", json={"texts": "anything", "deadline_s": 10})
                       ).status_code != 200:  # what it last said, and where each stage waits, should it not recover
                    assert time.monotonic() < deadline, (f"the bridge did not recover after the broker came back: "
                                                         f"{answer.status_code} {answer.text[:2000]}\n"
                                                         f"{stage_logs(runtime, stacks=True)}")
            wait_applied(client, client.index([doc for doc, _ in batches[1]]))
    assert all(code in (503, 504) for code in outage_codes), outage_codes

    with LocalRuntime(flow, flow_path=path, state_dir=tmp_path / "state", broker=BrokerKind.KAFKA) as again:
        with again.client() as client:
            again.wait_ready(client)
            wait_applied(client, client.index([doc for doc, _ in batches[2]]))
            for doc, sentence in corpus:
                assert doc.id in [m.id for m in client.search(sentence, timeout_s=20).docs[0].matches], stage_logs(again)
        assert again.local_flow is not None
        again.local_flow.stop()
        index_logs = [again.local_flow.log_path("index", replica) for replica in range(flow.stage("index").replicas)]
        logs = "\n".join(p.read_text() for p in index_logs)
        assert "rebuilding the shard" not in logs
        assert "Traceback" not in logs and "SystemError" not in logs, logs[-3000:]  # a normal stop is quiet
        # Every process that ran stopped cleanly (one may have exited to rejoin during a slow broker restart,
        # and been started again by its supervisor): each "running" has its "stopped".
        assert logs.count("stage stopped") == logs.count("stage running") >= 2 * len(index_logs), logs[-3000:]
        assert logs.count("resuming from its stored offset") >= 2, logs[-3000:]
        contents = read_shards(tmp_path / "state", "durable", 2, flow.stage("index").config)
        assert sorted(contents.docs) == sorted(doc.id for doc, _ in corpus)
        assert contents.vectors == len(contents.vector_table)  # no vector twice


# -- records deleted before a shard applied them -----------------------------------------------


RETAINED_FLOW = """
topics:
  config:
    encoded: {cleanup.policy: "compact,delete"}
"""
"""Retention as well as compaction on ``encoded``: records can leave the log before a lagging shard applies them
(Kafka refuses delete_records on a topic that is only compacted)."""


def _encoded_end(settings: KafkaSettings, topic: str, reached: int) -> int:
    """Wait until partition 0 of ``topic`` ends at ``reached`` or beyond; its high watermark."""
    deadline = time.monotonic() + 120
    while (high := fetch_high_watermarks(settings, {topic: 1}, timeout=10)[(topic, 0)]) < reached:
        assert time.monotonic() < deadline, f"{topic} ends at {high}, not {reached}, after 120 s"
        time.sleep(0.2)
    return high


def test_a_shard_whose_records_were_deleted_before_it_applied_them_keeps_its_state_and_says_what_may_be_missing(
        kafka: LocalBroker, start_flow: FlowFactory) -> None:
    """Issue 20: delete_records (or retention) removed records a lagging shard had not applied. Kafka
    answered OFFSET_OUT_OF_RANGE, the shard destroyed its state, its seek failed ("Failed to seek to
    offset -2") and the index stage exited. Now it keeps what it holds, goes on from the log start,
    and says in its log and in `status` how many documents may be missing and why."""
    runtime = start_flow(sentence_flow_yaml(shards=1) + RETAINED_FLOW)
    assert runtime.settings is not None and runtime.local_flow is not None
    topics = runtime.flow.topics
    corpus = corpus_with_unique_sentences(9)
    kept, deleted, later = corpus[:3], corpus[3:6], corpus[6:]
    with runtime.client() as client:
        wait_applied(client, client.index([doc for doc, _ in kept]))
        runtime.local_flow.pause("index", 0)  # the shard lags ...
        try:
            client.index([doc for doc, _ in deleted])
            end = _encoded_end(runtime.settings, topics.encoded, len(kept) + len(deleted))
            where = TopicPartition(topics.encoded, 0, end)  # ... while its records are deleted
            admin = AdminClient(runtime.settings.base())  # kept: a destroyed client never resolves its futures
            [done] = admin.delete_records([where]).values()
            assert done.result(timeout=30).low_watermark == end
        finally:
            runtime.local_flow.resume("index", 0)
        wait_applied(client, client.index([doc for doc, _ in later]))
        for doc, sentence in kept + later:
            assert doc.id in [m.id for m in client.search(sentence, timeout_s=20).docs[0].matches], stage_logs(runtime)
        for doc, sentence in deleted:
            assert doc.id not in [m.id for m in client.search(sentence, timeout_s=20).docs[0].matches]
    assert runtime.local_flow.find("index").restarts == 0, stage_logs(runtime)
    log = runtime.local_flow.log_path("index").read_text()
    reason = (f"records 3..5 of {topics.encoded} were deleted (retention or delete_records) before the shard "
              "applied them")
    [line] = [line for line in log.splitlines() if "were deleted" in line]
    assert f"shard 0: {reason}: up to 3 documents may be missing or stale; keeping its 3 documents" in line, line
    assert "Failed to seek" not in log and "Traceback" not in log, log[-3000:]
    deadline = time.monotonic() + 30  # the stage reports every few seconds
    while True:
        shown = cli("status", "--flow", str(runtime.flow_path), bootstrap=runtime.settings.bootstrap_servers)
        assert shown.returncode == 0, shown.stderr
        if f"warning: shard 0 may be missing up to 3 documents: {reason}" in shown.stdout.splitlines():
            break
        assert time.monotonic() < deadline, shown.stdout
        time.sleep(1)
