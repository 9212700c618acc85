"""A 3-broker Apache Kafka cluster under failure: kill -9 partition leaders while documents are
ingested and while queries stream, then count every document and every answer.

Topics have replication factor 3 and ``min.insync.replicas`` 2, every producer is idempotent
(acks=all): a broker that dies is replaced by an in-sync follower holding every acknowledged
record, and its return must not duplicate any. The leader of the busiest ``ingest`` partition and
of the busiest ``encoded`` partition are killed during ingest, the leader of most query-path
partitions (query, search, partials, the client's reply topic) while queries stream; each comes
back and rejoins the ISR of every partition. Then: each document exactly once with its content,
each findable by its own sentence, each query answered by its deadline (partial allowed while a
leader moves, a timeout or a silently incomplete reply never).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processors.document import Document
from streams.kafka.admin import describe_topics
from streams.client import IndexReceipt
from streams.exceptions import RequestTimeoutError
from streams.flow.parse import load_flow
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.reader import fetch_high_watermarks
from streams.local.apache_kafka import BROKER_SETTINGS, KafkaCluster
from streams.local.runtime import LocalRuntime
from streams.local.supervisor import stage_log_files
from streams.stages.kinds import ENCODE, INDEX, JOIN, QUERY_GROUP_SUFFIX, SEARCH_GROUP_SUFFIX
from streams.wire.records import SearchReply
from streams.wire.topics import TopicShape
from tests.e2e.fixtures import corpus_with_unique_sentences, sentence_flow_yaml, stage_logs
from tests.e2e.recovery import (assert_exact, committed_keys, committed_total, offsets_report, starts, transactional_id,
                                 wait_applied)

pytestmark = pytest.mark.kafka

DOCS = 96
BATCH = 8
QUERY_TIMEOUT_S = 20.0
"""The queries' deadline. Kafka moves a dead broker's leaderships when the active controller has not
heard from it for ``broker.session.timeout.ms`` (9 s by default; more when the dead broker was the
active controller: the quorum elects another first), and a query that meets a dead leader on its
path (its query partition, its partials partition, the client's reply topic) waits that long. So the
deadline must outlast a failover: 10 s does not (failovers measured here: 8 to 12 s; the slowest
query about 2 s more)."""
QUERIES_AFTER_RETURN = 10
"""Queries answered after the killed broker is back in every ISR, before the query phase ends."""
TOPICS_YAML = "topics: {replication_factor: 3, min_insync_replicas: 2}\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three KRaft nodes (broker+controller each); KAFKA_BOOTSTRAP_SERVERS points at them for
    this module only (the session fixture points it at the session broker)."""
    started = KafkaCluster(tmp_path_factory.mktemp("cluster"), size=3).start()
    previous = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = started.bootstrap_servers
    try:
        yield started
    finally:
        if previous is None:
            os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        else:
            os.environ["KAFKA_BOOTSTRAP_SERVERS"] = previous
        started.stop()


@contextmanager
def _running(cluster: KafkaCluster, path: Path) -> Iterator[LocalRuntime]:
    """The flow at ``path`` running on the cluster, every stage ready."""
    started = LocalRuntime(load_flow(path), flow_path=path, state_dir=path.parent / "state").start()
    try:
        assert started.settings is not None and started.settings.bootstrap_servers == cluster.bootstrap_servers
        with started.client() as client:
            started.wait_ready(client, timeout=180)
        yield started
    finally:
        started.stop()


@pytest.fixture
def runtime(cluster: KafkaCluster, tmp_path: Path) -> Iterator[LocalRuntime]:
    path = tmp_path / "flow.yml"
    path.write_text(sentence_flow_yaml().replace("{name}", f"cluster{os.getpid()}") + TOPICS_YAML)
    with _running(cluster, path) as started:
        yield started


# -- waiting on the cluster ------------------------------------------------------------------


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; returns the seconds it took.

    :raises AssertionError: naming ``what`` after ``timeout``.
    """
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.1)  # polling interval of a condition, not a synchronisation by sleeping
    return time.monotonic() - start


class Metadata:
    """Partition leaders and ISRs as the cluster's metadata has them now (from any live broker)."""

    def __init__(self, settings: KafkaSettings) -> None:
        # librdkafka's complaints about the killed broker go to logging, not stderr
        self._admin = AdminClient({**settings.base(), "logger": logging.getLogger("tests.cluster.rdkafka")})

    def partitions(self, topics: Sequence[str]) -> dict[tuple[str, int], tuple[int, int]]:
        """(topic, partition) -> (leader, ISR size); empty while no broker answers."""
        try:
            listed = self._admin.list_topics(timeout=5).topics
        except Exception:  # the broker asked was the one just killed: ask again
            return {}
        return {(name, p): (meta.leader, len(meta.isrs))
                for name in topics if name in listed for p, meta in listed[name].partitions.items()}

    def leader(self, topic: str, partition: int) -> int:
        found: dict[str, int] = {}

        def known() -> bool:
            leader = self.partitions([topic]).get((topic, partition), (-1, 0))[0]
            found["leader"] = leader
            return leader >= 0

        _wait_until(known, 60, f"a leader for {topic}[{partition}]")
        return found["leader"]

    def controller(self) -> int | None:
        """The controller's node id as a broker reports it (for the report), None when no broker says. Read it once
        per decision: under KRaft two calls may name different nodes (a test that asked once per node found
        none that was not "the controller")."""
        try:
            return self._admin.describe_cluster(request_timeout=10).result().controller.id
        except Exception:  # only the report needs it
            return None


@dataclass(frozen=True)
class Kill:
    node: int
    why: str
    controller: bool
    """The node was the active controller: the quorum elected another before any failover."""
    killed_at: float
    moved_at: float
    """When every partition the node led had another leader (time.monotonic())."""
    back_s: float
    """From the relaunch (right after the failover) until every partition of the flow was in sync on
    all three brokers again."""

    @property
    def failover_s(self) -> float:
        return self.moved_at - self.killed_at

    def __str__(self) -> str:
        return (f"node {self.node}{' (controller)' if self.controller else ''}, {self.why}: "
                f"failover {self.failover_s:.1f}s, back in sync {self.back_s:.1f}s")


def _kill_and_return(cluster: KafkaCluster, metadata: Metadata, node_id: int, watched: Sequence[tuple[str, int]],
                     flow_partitions: dict[str, int], why: str, *, then: Callable[[], None] = lambda: None) -> Kill:
    """SIGKILL a node (and call ``then`` at once), wait until the partitions it led have new leaders
    (the failover), start it again on its data, wait until it is registered and in the ISR of every
    partition of the flow."""
    controller = metadata.controller() == node_id
    node = cluster.node(node_id)
    killed_at = time.monotonic()
    node.kill()
    then()

    def moved() -> bool:
        now = metadata.partitions(sorted({topic for topic, _ in watched}))
        return all(key in now and now[key][0] not in (-1, node_id) for key in watched)

    _wait_until(moved, 120, f"failover of {watched} away from killed node {node_id}")
    moved_at = time.monotonic()
    node.launch()
    cluster.wait_ready(120, nodes=[node])

    def in_sync() -> bool:
        now = metadata.partitions(list(flow_partitions))
        return len(now) == sum(flow_partitions.values()) and all(
            isr == 3 and leader >= 0 for leader, isr in now.values())

    _wait_until(in_sync, 180, f"node {node_id} back in the ISR of every partition")
    return Kill(node_id, why, controller, killed_at, moved_at, round(time.monotonic() - moved_at, 1))


def _create_topics(settings: KafkaSettings, shapes: Sequence[TopicShape],
                   replicas: Callable[[TopicShape], list[list[int]]]) -> None:
    """Create topics on chosen brokers (``replicas(shape)``: one broker list per partition, the first
    its leader), configured as the flow would; the flow then finds them and leaves them so."""
    admin = AdminClient(settings.base())
    futures = admin.create_topics([NewTopic(shape.name, shape.partitions, replica_assignment=replicas(shape),
                                            config={"min.insync.replicas": "2", **dict(shape.config)})
                                   for shape in shapes], operation_timeout=30)
    for future in futures.values():
        future.result()


def _busiest(settings: KafkaSettings, topic: str, partitions: int) -> int:
    highs = fetch_high_watermarks(settings, {topic: partitions}, timeout=10)
    return max(range(partitions), key=lambda p: highs[(topic, p)])


# -- what the brokers hold --------------------------------------------------------------------


def _producer_ids(log_dir: Path) -> list[int]:
    """The producer id of every record batch in a partition's log segments (format v2: -1 when
    the producer was not idempotent)."""
    ids = []
    for segment in sorted(log_dir.glob("*.log")):
        data = segment.read_bytes()
        position = 0
        while position + 61 <= len(data):
            (length,) = struct.unpack_from(">i", data, position + 8)
            if length <= 0 or position + 12 + length > len(data):
                break
            assert data[position + 16] == 2, f"{segment}: record batch magic {data[position + 16]}"
            (producer_id,) = struct.unpack_from(">q", data, position + 43)
            ids.append(producer_id)
            position += 12 + length
    return ids


# -- the test ---------------------------------------------------------------------------------


@dataclass
class QueryOutcome:
    doc_id: str
    reply: SearchReply | None
    sent: float
    """time.monotonic() when the query was sent."""
    seconds: float
    error: str = ""


class QueryStream:
    """Searches for the documents of ``corpus``, one after the other, from a thread, until stopped:
    each outcome is kept (a reply, or the timeout of a query nobody answered)."""

    def __init__(self, runtime: LocalRuntime, corpus: Sequence[tuple[Document, str]], timeout_s: float,
                 *, reply_replicas: list[int] | None = None) -> None:
        """:param reply_replicas: create the client's reply topic on these brokers (the first leads)."""
        self.outcomes: list[QueryOutcome] = []
        self.reply_topic = ""
        self._runtime, self._corpus, self._timeout_s = runtime, corpus, timeout_s
        self._reply_replicas = reply_replicas
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queries")

    def __enter__(self) -> "QueryStream":
        self._thread.start()
        _wait_until(lambda: len(self.outcomes) >= 5, 120, "queries answered before the kill")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(self._timeout_s + 30)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        with self._runtime.client() as client:
            if self._reply_replicas is not None:
                assert self._runtime.settings is not None
                _create_topics(self._runtime.settings, [TopicShape(client.reply_topic, 1)],
                               lambda shape: [self._reply_replicas])
            client.start()
            self.reply_topic = client.reply_topic
            i = 0
            while not self._stop.is_set():
                doc, sentence = self._corpus[i % len(self._corpus)]
                i += 1
                sent = time.monotonic()
                try:
                    reply = client.search(sentence, timeout_s=self._timeout_s)
                    self.outcomes.append(QueryOutcome(doc.id, reply, sent, time.monotonic() - sent))
                except RequestTimeoutError as exc:
                    self.outcomes.append(QueryOutcome(doc.id, None, sent, time.monotonic() - sent, str(exc)))


def _assert_answered(outcomes: Sequence[QueryOutcome], timeout_s: float, outage: Kill, runtime: LocalRuntime) -> str:
    """Every query answered by its deadline, complete and right or flagged partial, some of them
    during ``outage``; returns the report line."""
    met = [o for o in outcomes if o.sent < outage.moved_at and o.sent + o.seconds > outage.killed_at]
    assert met, "no query was under way while the leader was dead"
    failed = [o for o in outcomes if o.reply is None]
    partial = [o for o in outcomes if o.reply is not None and o.reply.partial]
    wrong = [o for o in outcomes if o.reply is not None and not o.reply.partial and
             (not o.reply.docs[0].matches or o.reply.docs[0].matches[0].id != o.doc_id)]
    unflagged = [o for o in partial if not (o.reply and (o.reply.missing_shards or o.reply.restoring_shards
                                                         or o.reply.errors or o.reply.stale_shards))]
    report = (f"queries answered={len(outcomes) - len(failed)} partial={len(partial)} failed={len(failed)} "
              f"(during the failover: {len(met)}, slowest {max(o.seconds for o in met):.1f}s)")
    timed_out = [(o.doc_id, f"sent {o.sent - outage.killed_at:+.1f}s after the kill", o.error) for o in failed]
    assert not failed, f"{report}: {timed_out}\n{outage}\n{stage_logs(runtime)}"
    # a complete reply that misses the document would be silently incomplete
    assert not wrong, [(o.doc_id, o.reply.docs[0].matches[:3] if o.reply else None) for o in wrong]
    assert not unflagged, [o.reply for o in unflagged]
    late = [o for o in outcomes if o.seconds > timeout_s + 1.5]
    assert not late, [(o.doc_id, round(o.seconds, 1)) for o in late]
    return report


def test_kill_9_partition_leaders_during_ingest_and_queries(cluster: KafkaCluster, runtime: LocalRuntime) -> None:
    assert runtime.settings is not None and runtime.local_flow is not None
    settings, topics, partitions = runtime.settings, runtime.flow.topics, runtime.flow.topics.partitions
    flow_partitions = {shape.name: shape.partitions for shape in topics.shapes()}
    flow_topics = list(flow_partitions)
    metadata = Metadata(settings)

    described = describe_topics(settings, flow_topics)
    assert sorted(t.name for t in described) == sorted(flow_topics)
    for topic in described:
        assert (topic.replication_factor, topic.config.get("min.insync.replicas"), topic.under_replicated) == \
            (3, "2", 0), topic
    producer_config = StageProducer(settings)._config  # what the client and every stage build theirs from
    assert producer_config["enable.idempotence"] is True and producer_config.get("acks", "all") in ("all", -1)

    corpus = corpus_with_unique_sentences(DOCS)
    kills: list[Kill] = []

    # (1) kill -9 the leader of the busiest ingest partition, then of the busiest encoded one, during ingest
    batches = [corpus[i:i + BATCH] for i in range(0, DOCS, BATCH)]
    receipts: list[IndexReceipt] = []
    ingest_errors: list[BaseException] = []
    second_half = threading.Event()

    def ingest() -> None:
        try:
            with runtime.client() as client:
                for i, batch in enumerate(batches):
                    if i == len(batches) // 2:
                        second_half.wait(600)  # the second half goes in once the first broker is back
                    receipts.append(client.index([doc for doc, _ in batch]))
                    time.sleep(0.3)  # pacing: spread the ingest over the kill
        except BaseException as exc:  # reported by the main thread
            ingest_errors.append(exc)

    producer = threading.Thread(target=ingest, name="ingest")
    producer.start()
    try:
        _wait_until(lambda: bool(receipts) or bool(ingest_errors), 60, "the first batch delivered")
        p = _busiest(settings, topics.ingest, partitions)
        victim = metadata.leader(topics.ingest, p)
        kills.append(_kill_and_return(cluster, metadata, victim, [(topics.ingest, p)], flow_partitions,
                                      f"leader of {topics.ingest}[{p}]"))
        assert not ingest_errors, ingest_errors
        second_half.set()
        _wait_until(lambda: len(receipts) > len(batches) // 2 or bool(ingest_errors), 120, "a batch of the second half")
        _wait_until(lambda: sum(fetch_high_watermarks(settings, {topics.encoded: partitions}, 10).values()) > 0,
                    120, f"records on {topics.encoded}")
        p = _busiest(settings, topics.encoded, partitions)
        victim = metadata.leader(topics.encoded, p)
        kills.append(_kill_and_return(cluster, metadata, victim, [(topics.encoded, p)], flow_partitions,
                                      f"leader of {topics.encoded}[{p}]"))
    finally:
        second_half.set()
        producer.join(300)
    assert not producer.is_alive() and not ingest_errors, ingest_errors
    assert len(receipts) == len(batches)
    final = IndexReceipt()
    for receipt in receipts:
        final = final.merge(receipt)
    ingested = sum(fetch_high_watermarks(settings, {topics.ingest: partitions}, 10).values())
    assert ingested == DOCS, f"{topics.ingest} holds {ingested} records for {DOCS} documents (idempotent producer)"
    with runtime.client() as client:
        wait_applied(client, final)

    # (2) kill -9 the leader of most query-path partitions while queries stream
    with QueryStream(runtime, corpus, QUERY_TIMEOUT_S) as queries:
        path = [topics.query, topics.search, topics.partials, queries.reply_topic]
        led: dict[int, list[tuple[str, int]]] = {}
        for (name, p), (leader, _) in metadata.partitions(path).items():
            led.setdefault(leader, []).append((name, p))
        victim = max(led, key=lambda node: (len(led[node]), (queries.reply_topic, 0) in led[node]))
        kills.append(_kill_and_return(cluster, metadata, victim, led[victim], flow_partitions,
                                      f"leader of {', '.join(f'{t}[{p}]' for t, p in sorted(led[victim]))}"))
        answered = len(queries.outcomes)
        _wait_until(lambda: len(queries.outcomes) >= answered + QUERIES_AFTER_RETURN, 120,
                    "queries after the broker's return")
    report_queries = _assert_answered(queries.outcomes, QUERY_TIMEOUT_S, kills[-1], runtime)

    details = "; ".join(str(k) for k in kills)

    # every document findable by its own sentence, then each exactly once in the shards
    with runtime.client() as client:
        for doc, sentence in corpus:
            reply = client.search(sentence, timeout_s=20)
            assert not reply.partial, reply
            assert reply.docs[0].matches and reply.docs[0].matches[0].id == doc.id, \
                (sentence, reply.docs[0].matches[:3])
    # no stage lost its partitions: every consumer rode through the failovers of its group coordinator
    revoked = [f"{log.name}: {line}" for log in stage_log_files(runtime.flow)
               for line in log.read_text(errors="replace").splitlines() if "partitions revoked" in line]
    assert not revoked, f"{revoked}: session.timeout.ms shorter than a failover?\n{details}"
    runtime.local_flow.stop()
    report = assert_exact(runtime, {doc.id: doc.text or "" for doc, _ in corpus})

    # the records on the brokers were written by idempotent producers (a producer id per batch)
    for name in (topics.ingest, topics.segmented, topics.encoded):
        for p in range(partitions):
            ids = _producer_ids(cluster.node(1).data_dir / "log" / f"{name}-{p}")
            assert ids and min(ids) >= 0, f"{name}[{p}]: producer ids {sorted(set(ids))[:5]}"
    described = describe_topics(settings, flow_topics)
    assert all(t.under_replicated == 0 and t.replication_factor == 3 for t in described), described

    print(f"\ncluster kill -9: N={DOCS} kills={len(kills)} lost={report['lost']} "
          f"duplicated={report['duplicated_vectors'] + report['on_two_shards']} {report_queries} ({details})")


EOS_DOCS = 64
QUERY_DEADLINE_S = 5.0
"""The queries' deadline in the exactly_once test: none of its queries meets the killed broker, so
they are answered as fast as without the kill (well under a second), while the index path's commit
waits for the failover (9 s or more) and would hold them past this deadline if they waited for it."""


def test_queries_do_not_wait_for_a_transaction_stuck_on_a_killed_leader(cluster: KafkaCluster,
                                                                        tmp_path: Path) -> None:
    """``exactly_once``: kill -9 the broker that leads every partition of ``encoded`` while the encode
    stage has documents to encode and write there in transactions. Its commit waits for the failover
    (or the transaction's timeout, then an abort and a rerun); the queries it encodes meanwhile must
    not wait with it, nor behind its batch. Every other topic lives on the two other brokers, and they
    coordinate the query path's consumer groups, so nothing on the query path waits for the killed one:
    each query is answered by a deadline shorter than a failover, and exactly once holds."""
    settings = KafkaSettings(cluster.bootstrap_servers)
    metadata = Metadata(settings)
    controller = metadata.controller()  # once: asked per node, it changed between calls (a StopIteration in CI)
    # not the controller: no quorum election to wait for; nor any coordinator of the query path's groups
    victim, name = _victim_and_flow(settings, metadata, [node for node in (1, 2, 3) if node != controller],
                                    f"eos{os.getpid()}")
    others = [node for node in (1, 2, 3) if node != victim]
    path = tmp_path / "flow.yml"
    path.write_text(sentence_flow_yaml(guarantee="exactly_once").replace("{name}", name) + TOPICS_YAML)
    flow = load_flow(path)
    topics = flow.topics

    def replicas(shape: TopicShape) -> list[list[int]]:
        if shape.name == topics.encoded:
            return [[victim, *others[p % 2:], *others[:p % 2]] for p in range(shape.partitions)]
        return [others[p % 2:] + others[:p % 2] for p in range(shape.partitions)]

    _create_topics(settings, topics.shapes(), replicas)
    corpus = corpus_with_unique_sentences(EOS_DOCS)
    first, second = corpus[:EOS_DOCS // 2], corpus[EOS_DOCS // 2:]
    with _running(cluster, path) as runtime:
        assert runtime.local_flow is not None
        with runtime.client() as client:
            receipts = [client.index([doc for doc, _ in first])]
            wait_applied(client, receipts[0])
            with QueryStream(runtime, first, QUERY_DEADLINE_S, reply_replicas=others) as queries:
                # The second half waits on segmented for the encode stage, held (SIGSTOP) for the second
                # it takes, so that the stage encodes and writes it while the leader of encoded is dead.
                runtime.local_flow.pause("encode")
                try:
                    receipts.append(client.index([doc for doc, _ in second]))
                    _wait_until(lambda: committed_total(runtime, topics.group("segment"), topics.ingest) == EOS_DOCS,
                                60, "the second half segmented")
                finally:
                    outage = _kill_and_return(
                        cluster, metadata, victim, [(topics.encoded, p) for p in range(topics.partitions)],
                        {topics.encoded: topics.partitions}, f"leader of every {topics.encoded} partition",
                        then=lambda: runtime.local_flow.resume("encode"))  # type: ignore[union-attr]
                answered = len(queries.outcomes)
                _wait_until(lambda: len(queries.outcomes) >= answered + QUERIES_AFTER_RETURN, 120,
                            "queries after the broker's return")
        report_queries = _assert_answered(queries.outcomes, QUERY_DEADLINE_S, outage, runtime)
        _assert_each_document_once(runtime, receipts, second, corpus)
        aborted = runtime.local_flow.log_path("encode", 0).read_text().count("transaction failed")
        runtime.local_flow.stop()
        report = assert_exact(runtime, {doc.id: doc.text or "" for doc, _ in corpus})
    print(f"\nexactly_once, kill -9 the leader of {topics.encoded}: N={EOS_DOCS} lost={report['lost']} "
          f"duplicated={report['duplicated_vectors']} transactions aborted={aborted} {report_queries} ({outage})")


TRANSACTION_STATE = "__transaction_state"


def _coordinator_partition(key: str, setting: str = "transaction.state.log.num.partitions") -> int:
    """The partition of ``__transaction_state`` (or of ``__consumer_offsets``, with ``setting`` its partition
    count's) whose leader coordinates a transactional id (a consumer group), as the broker computes it:
    ``Utils.abs(key.hashCode) % <setting>``."""
    code = 0
    for (unit,) in struct.iter_unpack(">H", key.encode("utf-16-be")):
        code = (31 * code + unit) & 0xFFFFFFFF  # java.lang.String.hashCode: over UTF-16 code units, in 32 bits
    signed = code - (1 << 32) if code >= 1 << 31 else code
    return (0 if signed == -(1 << 31) else abs(signed)) % int(BROKER_SETTINGS[setting])


CONSUMER_OFFSETS = "__consumer_offsets"
QUERY_PATH_GROUPS = (f"{ENCODE.name}{QUERY_GROUP_SUFFIX}", INDEX.name, f"{INDEX.name}{SEARCH_GROUP_SUFFIX}", JOIN.name)
"""The consumer groups (after the flow's prefix) of the stages a query passes: one whose coordinator dies
stops its consumer until the coordinator has moved, and past ``session.timeout.ms`` (a failover of 12.5
and 14.6 s, then the group's load on the new coordinator, two runs at a time on 2 cores) the consumer
rejoins as a new member, queries waiting meanwhile."""


def _victim_and_flow(settings: KafkaSettings, metadata: Metadata, candidates: Sequence[int], base: str) -> tuple[int, str]:
    """The candidate node leading the fewest partitions of ``__consumer_offsets``, and a flow name whose
    query-path consumer groups (``QUERY_PATH_GROUPS``) it does not coordinate: a group's coordinator leads the
    partition its name hashes to. After earlier kills in the session, one node may lead every partition (seen in
    CI): a name can avoid only a node that leads few of them."""
    probe = f"{base}.probe"  # its coordinator's lookup creates the topic, if no group has yet
    admin = AdminClient(settings.base())  # held until the answer: a client freed first never completes its future
    with contextlib.suppress(KafkaException):  # Kafka 4 says GROUP_ID_NOT_FOUND of a group that never was
        admin.describe_consumer_groups([probe], request_timeout=30)[probe].result(timeout=60)
    partitions = int(BROKER_SETTINGS["offsets.topic.num.partitions"])
    found: dict[int, int] = {}

    def led() -> bool:
        found.clear()
        found.update({p: leader for (_, p), (leader, _) in metadata.partitions([CONSUMER_OFFSETS]).items()})
        return len(found) == partitions and min(found.values()) >= 0

    _wait_until(led, 60, f"a leader for every partition of {CONSUMER_OFFSETS}")
    victim = min(candidates, key=lambda node: (sum(leader == node for leader in found.values()), node))
    for attempt in range(1000):
        name = f"{base}g{attempt}"
        if all(found[_coordinator_partition(f"{name}.{group}", "offsets.topic.num.partitions")] != victim
               for group in QUERY_PATH_GROUPS):
            return victim, name
    raise AssertionError(f"no flow name whose query-path groups node {victim} does not coordinate: {found}")


def test_an_exactly_once_stage_outlives_the_death_of_its_transaction_coordinator(cluster: KafkaCluster,
                                                                                 tmp_path: Path) -> None:
    """``exactly_once``: kill -9 the broker that coordinates the encode stage's transactions (the leader
    of its ``__transaction_state`` partition) while the stage encodes and writes documents in
    transactions. Whatever librdkafka makes of it (a commit that waits for the failover, an abort, or a
    fatal error when the new coordinator has aborted the transaction: then the producer is replaced),
    the stage process lives on: the same process, every document written and indexed once, every
    query answered by its deadline."""
    path = tmp_path / "flow.yml"
    path.write_text(sentence_flow_yaml(guarantee="exactly_once").replace("{name}", f"coord{os.getpid()}") + TOPICS_YAML)
    corpus = corpus_with_unique_sentences(EOS_DOCS)
    first, second = corpus[:EOS_DOCS // 2], corpus[EOS_DOCS // 2:]
    with _running(cluster, path) as runtime:
        assert runtime.local_flow is not None and runtime.settings is not None
        topics, metadata = runtime.flow.topics, Metadata(runtime.settings)
        flow_partitions = {shape.name: shape.partitions for shape in topics.shapes()}
        encode = runtime.local_flow.find("encode").process.pid
        with runtime.client() as client:
            receipts = [client.index([doc for doc, _ in first])]
            wait_applied(client, receipts[0])
            tid = transactional_id(runtime, "encode")
            coordinated_by = (TRANSACTION_STATE, _coordinator_partition(tid))
            victim = metadata.leader(*coordinated_by)
            with QueryStream(runtime, first, QUERY_TIMEOUT_S) as queries:
                # as in the test above: the second half waits on segmented while the encode stage is held,
                # so that the stage's transactions for it meet the dead coordinator
                runtime.local_flow.pause("encode")
                try:
                    receipts.append(client.index([doc for doc, _ in second]))
                    _wait_until(lambda: committed_total(runtime, topics.group("segment"), topics.ingest) == EOS_DOCS,
                                120, "the second half segmented")
                finally:
                    led = [key for key, (leader, _) in metadata.partitions(list(flow_partitions)).items()
                           if leader == victim]
                    outage = _kill_and_return(
                        cluster, metadata, victim, [coordinated_by, *led], flow_partitions,
                        f"coordinator of {tid} ({TRANSACTION_STATE}[{coordinated_by[1]}]) and leader of {len(led)} "
                        f"flow partitions", then=lambda: runtime.local_flow.resume("encode"))  # type: ignore[union-attr]
                answered = len(queries.outcomes)
                _wait_until(lambda: len(queries.outcomes) >= answered + QUERIES_AFTER_RETURN, 120,
                            "queries after the broker's return")
        report_queries = _assert_answered(queries.outcomes, QUERY_TIMEOUT_S, outage, runtime)
        assert (runtime.local_flow.find("encode").process.pid, starts(runtime, "encode")) == (encode, 1), \
            f"the encode stage restarted ({outage})\n{stage_logs(runtime)}"
        _assert_each_document_once(runtime, receipts, second, corpus)
        log = runtime.local_flow.log_path("encode", 0).read_text()
        runtime.local_flow.stop()
        report = assert_exact(runtime, {doc.id: doc.text or "" for doc, _ in corpus})
    print(f"\nexactly_once, kill -9 the transaction coordinator of encode: N={EOS_DOCS} lost={report['lost']} "
          f"duplicated={report['duplicated_vectors']} transactions aborted={log.count('transaction failed')} "
          f"producers replaced={log.count('producer failed for good')} {report_queries} ({outage})")


def _assert_each_document_once(runtime: LocalRuntime, receipts: list[IndexReceipt],
                               second: list[tuple[Document, str]], corpus: list[tuple[Document, str]]) -> None:
    """After an outage under exactly_once: the second half is found, and read_committed readers of
    segmented and encoded see each document once."""
    final = IndexReceipt()
    for receipt in receipts:
        final = final.merge(receipt)
    with runtime.client() as client:
        try:
            wait_applied(client, final)
        except AssertionError as error:
            topics = runtime.flow.topics
            where = offsets_report(runtime, {topics.ingest: topics.group("segment"), topics.segmented: topics.group("encode"),
                                             topics.encoded: topics.group("index")})
            raise AssertionError(f"{error}\nreceipt {final}\n{where}\n{stage_logs(runtime, stacks=True)}") from None
        for doc, sentence in second:
            reply = client.search(sentence, timeout_s=20)
            assert not reply.partial and reply.docs[0].matches[0].id == doc.id, (sentence, reply)
    topics = runtime.flow.topics
    for topic in (topics.segmented, topics.encoded):
        keys = committed_keys(runtime, topic)
        assert sorted(keys) == sorted(doc.id.encode() for doc, _ in corpus), \
            f"{topic}: {len(keys)} records visible to read_committed for {EOS_DOCS} documents"
