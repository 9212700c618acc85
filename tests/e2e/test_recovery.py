"""Nothing lost: restarts, kill -9 in rotation, a broker that forgets everything, a replica
added under load. Modelled on Kafka Streams' exactly-once system test: kill, restart, then
count every document (lost, duplicated, wrong content) and search for each one."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition

from processors.document import Document
from streams.client import IndexReceipt
from streams.flow.parse import load_flow
from streams.flow.spec import with_state_dir
from streams.kafka.consumer import consume_batch, make_consumer
from streams.local.brokers import BrokerKind
from streams.local.runtime import LocalRuntime
from streams.local.supervisor import LocalFlow
from tests.streams.fixtures import corpus_with_unique_sentences, sentence_flow_yaml, stage_logs
from tests.streams.recovery import read_shards, text_hash, wait_applied

pytestmark = pytest.mark.kafka

def _restart_stages(runtime: LocalRuntime) -> None:
    """Stop every stage process (SIGTERM) and start them again on the same state."""
    assert runtime.local_flow is not None and runtime.settings is not None
    runtime.local_flow.stop()
    runtime.local_flow = LocalFlow(runtime.flow, flow_path=runtime.flow_path,
                                   bootstrap_servers=runtime.settings.bootstrap_servers,
                                   log_dir=runtime.flow.state_dir / "logs").start()


def _stop_stages(runtime: LocalRuntime) -> None:
    assert runtime.local_flow is not None
    runtime.local_flow.stop()


def _contents(runtime: LocalRuntime):  # type: ignore[no-untyped-def]
    flow = runtime.flow
    return read_shards(flow.state_dir, flow.name, flow.topics.partitions, flow.stage("index").config)


def _assert_exact(runtime: LocalRuntime, expected: dict[str, str]) -> dict[str, int]:
    """The stopped flow's shards hold exactly ``expected`` (id -> text): each once, right
    content, one vector per chunk. Returns the counts for the report."""
    contents = _contents(runtime)
    lost = sorted(set(expected) - set(contents.docs))
    extra = sorted(set(contents.docs) - set(expected))
    on_two_shards = sorted(doc_id for doc_id, shards in contents.shards_of.items() if len(shards) > 1)
    wrong = sorted(doc_id for doc_id, doc in contents.docs.items()
                   if doc_id in expected and text_hash(doc.text) != text_hash(expected[doc_id]))
    chunk_mismatch = sorted(doc_id for doc_id, doc in contents.docs.items()
                            if contents.per_doc.get(doc_id, 0) != len(doc.chunks))
    duplicated_vectors = contents.vectors - len(contents.vector_table)
    report = {"expected": len(expected), "lost": len(lost), "extra": len(extra), "on_two_shards": len(on_two_shards),
              "wrong_content": len(wrong), "chunk_mismatch": len(chunk_mismatch), "duplicated_vectors": duplicated_vectors}
    assert (lost, extra, on_two_shards, wrong, chunk_mismatch, duplicated_vectors) == ([], [], [], [], [], 0), (
        f"{report}\nlost {lost[:5]} extra {extra[:5]} wrong {wrong[:5]} chunks {chunk_mismatch[:5]}\n"
        f"{stage_logs(runtime)}")
    return report


def _assert_findable(runtime: LocalRuntime, corpus: list[tuple[Document, str]]) -> None:
    with runtime.client() as client:
        for doc, sentence in corpus:
            reply = client.search(sentence, timeout_s=20)
            assert not reply.partial, reply
            assert reply.docs[0].matches and reply.docs[0].matches[0].id == doc.id, (sentence, reply.docs[0].matches[:3])


def test_updates_and_deletes_survive_a_restart(start_flow) -> None:  # type: ignore[no-untyped-def]
    runtime = start_flow(sentence_flow_yaml())
    corpus = corpus_with_unique_sentences(8)
    docs = [doc for doc, _ in corpus]
    updated = {docs[0].id: "Lighthouses guide ships along rocky coasts at night. Their lamps rotate slowly.",
               docs[1].id: "Volcanoes erupt molten rock called lava. Ash clouds can ground airplanes."}
    deleted = [docs[2].id, docs[3].id]
    with runtime.client() as client:
        client.index(docs)
        client.index([Document(id=doc_id, text=text) for doc_id, text in updated.items()])
        receipt = client.delete(deleted)
        wait_applied(client, receipt)

    _restart_stages(runtime)
    with runtime.client() as client:
        wait_applied(client, receipt)
        lighthouse = client.search("a lamp on the coast that guides ships", timeout_s=20)
        assert lighthouse.docs[0].matches[0].id == docs[0].id
        assert "Lighthouses" in lighthouse.docs[0].matches[0].text
        for doc, sentence in corpus[2:4]:
            assert doc.id not in {m.id for m in client.search(sentence, timeout_s=20).docs[0].matches}
    _stop_stages(runtime)
    expected = {doc.id: doc.text or "" for doc in docs if doc.id not in deleted} | updated
    _assert_exact(runtime, expected)


KILL_DOCS = 120
KILL_CYCLES = 3


@pytest.mark.parametrize(("victim", "guarantee"), [("index", "at_least_once"), ("encode", "at_least_once"),
                                                   ("encode", "exactly_once")])
def test_kill_9_during_ingest_loses_and_duplicates_nothing(start_flow, broker_kind, victim: str, guarantee: str) -> None:  # type: ignore[no-untyped-def]
    runtime = start_flow(sentence_flow_yaml(guarantee=guarantee))
    assert runtime.local_flow is not None
    corpus = corpus_with_unique_sentences(KILL_DOCS)
    receipts: list[IndexReceipt] = []

    def ingest() -> None:
        with runtime.client() as client:
            for start in range(0, KILL_DOCS, 20):
                receipts.append(client.index([doc for doc, _ in corpus[start:start + 20]]))
                time.sleep(0.5)  # spread the ingest over the kill cycles (pacing, not synchronisation)

    producer = threading.Thread(target=ingest)
    producer.start()
    rng = random.Random(KILL_DOCS)
    kills = 0
    for _ in range(KILL_CYCLES):
        time.sleep(rng.uniform(0.5, 3.0))  # a random moment: the point of the test
        process = runtime.local_flow.find(victim).process
        process.kill()  # SIGKILL: no commit, no clean close of RocksDB or the producer
        process.wait()
        kills += 1
        deadline = time.monotonic() + 30
        while runtime.local_flow.find(victim).process is process:  # the supervisor restarts it
            assert time.monotonic() < deadline, "supervisor did not restart the stage"
            time.sleep(0.1)
    producer.join()
    assert len(receipts) == KILL_DOCS // 20
    final = IndexReceipt()
    for receipt in receipts:
        final = final.merge(receipt)
    with runtime.client() as client:
        wait_applied(client, final)
    assert runtime.local_flow.find(victim).restarts == kills
    _assert_findable(runtime, corpus)
    if guarantee == "exactly_once":  # only send_offsets_to_transaction commits the segment stage's offsets
        assert _committed_total(runtime, f"{runtime.flow.name}.segment", runtime.flow.topics.ingest) == KILL_DOCS
        if broker_kind is BrokerKind.KAFKA:  # read_committed readers see each document once, whatever was killed
            for topic in (runtime.flow.topics.segmented, runtime.flow.topics.encoded):
                keys = _committed_keys(runtime, topic)
                assert sorted(keys) == sorted(doc.id.encode() for doc, _ in corpus), \
                    f"{topic}: {len(keys)} records visible to read_committed for {KILL_DOCS} documents"
    _stop_stages(runtime)
    report = _assert_exact(runtime, {doc.id: doc.text or "" for doc, _ in corpus})
    print(f"kill -9 {victim} ({guarantee}): N={KILL_DOCS} K={kills} lost={report['lost']} "
          f"duplicated={report['duplicated_vectors']}")


def _committed_keys(runtime: LocalRuntime, topic: str) -> list[bytes]:
    """The keys of every record of ``topic`` a read_committed consumer sees, to the end."""
    assert runtime.settings is not None
    partitions = runtime.flow.topics.partitions
    consumer = make_consumer(runtime.settings, group_id=f"committed-{time.monotonic_ns()}",
                             **{"isolation.level": "read_committed", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    keys: list[bytes] = []
    ended: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(ended) < partitions and time.monotonic() < deadline:
            for msg in consume_batch(consumer, max_records=500, timeout=0.5):
                if msg.error() is None:
                    keys.append(msg.key())
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(msg.partition())
    finally:
        consumer.close()
    assert len(ended) == partitions, f"{topic} not read to its end"
    return keys


def _committed_total(runtime: LocalRuntime, group: str, topic: str) -> int:
    assert runtime.settings is not None
    consumer = make_consumer(runtime.settings, group_id=group)
    try:
        partitions = [TopicPartition(topic, p) for p in range(runtime.flow.topics.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def test_a_broker_that_lost_everything_makes_each_shard_rebuild_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The memory-only broker (Tansu, whatever the session runs on) restarts empty; the shards' stored offsets point past the end of
    the new topics: one clear log line each, a rebuild, no crash loop, no stale documents."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)  # this test runs its own brokers
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "flow.yml"
    path.write_text(sentence_flow_yaml().replace("{name}", "rebuild"))
    flow = load_flow(path)
    before = corpus_with_unique_sentences(10)
    after = corpus_with_unique_sentences(13)[10:]
    with LocalRuntime(flow, flow_path=path, state_dir=tmp_path / "state", broker=BrokerKind.TANSU) as first:
        with first.client() as client:
            first.wait_ready(client)
            wait_applied(client, client.index([doc for doc, _ in before]))
    with LocalRuntime(flow, flow_path=path, state_dir=tmp_path / "state", broker=BrokerKind.TANSU) as second:  # empty
        with second.client() as client:
            second.wait_ready(client)
            receipt = client.index([doc for doc, _ in after])
            wait_applied(client, receipt)
            for doc, sentence in before:
                assert doc.id not in {m.id for m in client.search(sentence, timeout_s=20).docs[0].matches}
        _assert_findable(second, after)
        assert second.local_flow is not None
        assert second.local_flow.find("index").restarts == 0
        logs = second.local_flow.log_path("index").read_text()
        _stop_stages(second)
        rebuilt = [line for line in logs.splitlines() if "rebuilding the shard" in line]
        assert sorted(line.split("shard ", 1)[1].split(":")[0] for line in rebuilt) == ["0", "1"], logs[-3000:]
        _assert_exact(second, {doc.id: doc.text or "" for doc, _ in after})


def test_a_replica_added_under_load_loses_nothing_and_flags_moving_shards(start_flow, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runtime = start_flow(sentence_flow_yaml(shards=4))
    corpus = corpus_with_unique_sentences(60)
    first, second = corpus[:40], corpus[40:]
    with runtime.client() as client:
        wait_applied(client, client.index([doc for doc, _ in first]))

    replica_state = tmp_path / "replica-state"  # another machine: no local state, it must restore
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": runtime.settings.bootstrap_servers}  # type: ignore[union-attr]
    added = subprocess.Popen([sys.executable, "-m", "streams.cli", "run", str(runtime.flow_path), "--stage", "index",
                              "--replicas", "1", "--state-dir", str(replica_state)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    replies, moved = [], False
    try:
        with runtime.client() as client:
            receipt = client.index([doc for doc, _ in second])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (moved and len(replies) >= 100):
                doc, sentence = first[len(replies) % len(first)]
                sent = time.monotonic()
                reply = client.search(sentence, timeout_s=5)  # raises if nothing came by the deadline
                replies.append((doc.id, reply, time.monotonic() - sent))
                moved = moved or any((replica_state / runtime.flow.name / "index").glob("*"))
            assert moved, "the added replica never took a shard"
            for doc_id, reply, seconds in replies:
                assert seconds < 5 + 1.5, (doc_id, seconds)
                if reply.partial:
                    assert reply.restoring_shards or reply.missing_shards, reply
                else:  # never silently incomplete: a complete reply finds the document
                    assert reply.docs[0].matches[0].id == doc_id, (doc_id, reply.docs[0].matches[:3])
            wait_applied(client, receipt)
        _assert_findable(runtime, corpus)
    finally:
        added.terminate()
        output = added.communicate(timeout=30)[0].decode(errors="replace")
    partial = sum(1 for _, reply, _ in replies if reply.partial)
    print(f"replica added: {len(replies)} queries, {partial} flagged partial (restoring or moving)")
    assert "more 'index' replicas joined" in output, output


def _cli(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})


def _top(client, queries: list[str]) -> list[list[tuple[str, float]]]:  # type: ignore[no-untyped-def]
    tops = []
    for query in queries:
        reply = client.search(query, timeout_s=20)
        assert not reply.partial, reply
        tops.append([(m.id, round(m.scores["score"].value, 5)) for m in reply.docs[0].matches])
    return tops


def test_replay_rebuilds_an_index_equal_to_the_original(start_flow, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runtime = start_flow(sentence_flow_yaml())
    assert runtime.settings is not None
    bootstrap = runtime.settings.bootstrap_servers
    corpus = corpus_with_unique_sentences(30)
    queries = [sentence for _, sentence in corpus[::5]] + ["how to compress files", "parse a date"]
    with runtime.client() as client:
        client.index([doc for doc, _ in corpus])
        client.index([Document(id=corpus[0][0].id, text="A replaced text about tidal energy and the moon.")])
        wait_applied(client, client.delete([corpus[1][0].id]))
        original_tops = _top(client, queries)

    busy = _cli("replay", str(runtime.flow_path), "--state-dir", str(runtime.flow.state_dir), bootstrap=bootstrap)
    assert busy.returncode == 1 and busy.stderr.strip().splitlines()[-1].startswith("streamsearch: error: a shard"), busy

    _stop_stages(runtime)
    original = _contents(runtime)
    replayed_dir = tmp_path / "replayed"
    done = _cli("replay", str(runtime.flow_path), "--stage", "index", "--from-beginning", "--state-dir",
                str(replayed_dir), bootstrap=bootstrap)
    assert done.returncode == 0, done.stderr
    assert "replayed" in done.stderr and "rec" in done.stderr  # the progress bar
    replayed = read_shards(replayed_dir, runtime.flow.name, runtime.flow.topics.partitions,
                           runtime.flow.stage("index").config)
    assert set(replayed.docs) == set(original.docs) and len(original.docs) == 29
    assert {k: d.text for k, d in replayed.docs.items()} == {k: d.text for k, d in original.docs.items()}
    assert replayed.vector_table == original.vector_table and replayed.vectors == original.vectors
    assert replayed.shards_of == original.shards_of

    again = _cli("replay", str(runtime.flow_path), "--from-timestamp", "1970-01-01T00:00:01", "--state-dir",
                 str(replayed_dir), bootstrap=bootstrap)  # everything again, over the state: upserts change nothing
    assert again.returncode == 0, again.stderr
    assert read_shards(replayed_dir, runtime.flow.name, runtime.flow.topics.partitions,
                       runtime.flow.stage("index").config).vector_table == original.vector_table

    runtime.flow = with_state_dir(runtime.flow, replayed_dir)
    _restart_stages(runtime)  # serve from the replayed state: same results, same scores
    with runtime.client() as client:
        runtime.wait_ready(client)
        assert _top(client, queries) == original_tops
