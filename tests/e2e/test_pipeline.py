"""End to end through Kafka: ingest -> segment -> encode -> shards -> joiner -> reply."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer, TopicPartition

from processors.document import Document
from streams.client import Client, IndexReceipt
from streams.wire import headers as h
from streams.client.dead_letters import read_dead_letters
from streams.exceptions import SearchError
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.kafka.consumer import make_consumer
from streams.local.brokers import LocalBroker
from streams.local.runtime import LocalRuntime
from streams.wire.partitioner import partition_of
from streams.wire.codec import DOCUMENT
from tests.e2e.fixtures import (METRICS_PORTS, PIPELINE_FLOW, FlowFactory, corpus_with_unique_sentences, scraped_metric,
                                stage_logs)

pytestmark = pytest.mark.kafka

BUS_STOP = "Someone is waiting at the bus stop. John looks surprised, his face seems familiar."
UNRELATED = [
    "The stock market closed higher today. Investors cheered the quarterly earnings.",
    "Photosynthesis converts light into chemical energy. Chlorophyll absorbs mostly red and blue light.",
    "The recipe needs two cups of flour. Bake the bread for forty minutes.",
]


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(PIPELINE_FLOW)


@pytest.fixture(scope="module")
def client(flow: LocalRuntime) -> Iterator[Client]:
    with flow.client() as c:
        yield c


def test_each_of_50_documents_is_found_by_one_of_its_sentences(client: Client, flow: LocalRuntime) -> None:
    corpus = corpus_with_unique_sentences(50)
    receipt = client.index([doc for doc, _ in corpus])
    assert receipt.count == 50
    sentences = [sentence for _, sentence in corpus]
    reply = client.search(sentences, top_k=3, after=receipt, timeout_s=60)
    assert not reply.partial, stage_logs(flow)
    assert len(reply.docs) == 50
    misses = [(doc.id, q.matches[0].id if q.matches else None) for (doc, _), q in zip(corpus, reply.docs)
              if not q.matches or q.matches[0].id != doc.id]
    assert misses == []
    top = reply.docs[0].matches[0]
    assert top.scores["score"].value > 0.95
    assert top.scores["score"].op_name.startswith("chunk2doc.max(faiss.flat_ip")
    assert top.chunks and top.chunks[0].parent_id == top.id


@pytest.mark.parametrize("paraphrase", [
    "A person waits for the bus at the stop.",
    "John seems astonished.",
    "His face looks like one I know.",
])
def test_a_paraphrase_of_each_sentence_finds_the_parent_document(client: Client, paraphrase: str) -> None:
    docs = [Document(id="bus", text=BUS_STOP)] + [Document(id=f"other{i}", text=t) for i, t in enumerate(UNRELATED)]
    receipt = client.index(docs)
    reply = client.search(paraphrase, top_k=4, after=receipt, timeout_s=60)
    ranked = [m.id for m in reply.docs[0].matches if m.id == "bus" or m.id.startswith("other")]
    assert ranked[0] == "bus"
    bus = reply.docs[0].matches[0]
    assert bus.chunks[0].text in {"Someone is waiting at the bus stop.", "John looks surprised,", "his face seems familiar."}


def test_deleted_document_disappears_and_resent_id_replaces_the_old_version(client: Client) -> None:
    receipt = client.index([
        Document(id="volatile", text="Glaciers carve deep valleys into the granite mountains."),
        Document(id="replaced", text="The violin concerto was premiered in Leipzig."),
    ])
    assert "volatile" in _top_ids(client, "glaciers shaping mountain valleys", receipt)
    receipt = receipt.merge(client.delete(["volatile"]))
    receipt = receipt.merge(client.index([Document(id="replaced", text="Quantum computers use qubits.")]))
    assert "volatile" not in _top_ids(client, "glaciers shaping mountain valleys", receipt)
    reply = client.search("qubits in quantum computing", top_k=1, after=receipt, timeout_s=60)
    assert reply.docs[0].matches[0].id == "replaced"
    assert reply.docs[0].matches[0].text == "Quantum computers use qubits."
    old = client.search("violin concerto premiere in Leipzig", top_k=5, after=receipt, timeout_s=60)
    assert all(m.text != "The violin concerto was premiered in Leipzig." for m in old.docs[0].matches)


def _top_ids(client: Client, text: str, receipt: IndexReceipt) -> list[str]:
    reply = client.search(text, top_k=5, after=receipt, timeout_s=60)
    assert not reply.partial
    return [m.id for m in reply.docs[0].matches]


def test_malformed_avro_is_dead_lettered_and_later_documents_are_indexed(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    topics = flow.flow.topics
    producer = StageProducer(kafka_settings)
    producer.produce(topics.ingest, value=b"\x07not avro at all", key="broken", partition=0)
    producer.flush()
    receipt = client.index([Document(id="after-bad", text="Volcanic eruptions release sulfur dioxide.")])
    reply = client.search("volcano eruption gases", top_k=1, after=receipt, timeout_s=60)
    assert reply.docs[0].matches[0].id == "after-bad"

    consumer = make_consumer(kafka_settings, group_id=f"{topics.flow}.dl-check")
    consumer.assign([TopicPartition(topics.dead_letter, 0, 0)])
    found = None
    for _ in range(100):
        for msg in consumer.consume(num_messages=100, timeout=0.1):
            if msg.error() is None and msg.key() == b"broken":
                found = dict(msg.headers())
        if found:
            break
    consumer.close()
    assert found is not None
    assert found[h.DEAD_LETTER_STAGE] == b"segment"
    assert found[h.DEAD_LETTER_ERROR_CLASS] == b"SerdeError"
    assert b"malformed" in found[h.DEAD_LETTER_MESSAGE]
    assert found[h.DEAD_LETTER_TOPIC] == topics.ingest.encode()
    assert found[h.DEAD_LETTER_PARTITION] == b"0"


def test_an_id_written_with_another_partitioner_never_splits_across_shards(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    """Issue 20: a plain librdkafka producer (partitioner consistent_random) put many ids on other
    partitions than the Client (murmur2): an update through the Client left the old copy on the
    other shard, found by its old text, and a delete never reached it. Such a record is refused
    where ingest is read, with a dead letter naming the partitioner to use."""
    topics = flow.flow.topics
    ids = [f"split-{i}" for i in range(12)]
    landed: dict[str, int] = {}
    plain = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})  # librdkafka's default partitioner
    for doc_id in ids:
        old = Document(id=doc_id, text=f"Old copy {doc_id}. The lighthouse keeper painted every shutter green.")
        plain.produce(topics.ingest, key=doc_id, value=DOCUMENT.encode(old), headers=[DOCUMENT.header()],
                      on_delivery=lambda err, msg: landed.__setitem__(msg.key().decode(), msg.partition()))
    assert plain.flush(30) == 0
    elsewhere = {doc_id for doc_id in ids if landed[doc_id] != partition_of(doc_id.encode(), topics.partitions)}
    assert elsewhere and elsewhere != set(ids), landed  # the case: ids the partitioners put apart

    receipt = client.index([Document(id=doc_id, text=f"New copy {doc_id}. A glacier calved into the fjord at dawn.")
                            for doc_id in ids])
    reply = client.search("the lighthouse keeper painted the shutters green", top_k=40, after=receipt, timeout_s=60)
    assert not reply.partial, stage_logs(flow)
    texts = {m.id: " ".join([m.text or ""] + [c.text or "" for c in m.chunks]) for m in reply.docs[0].matches}
    assert [doc_id for doc_id in ids if "Old copy" in texts.get(doc_id, "")] == [], texts
    deleted = client.delete(ids)
    reply = client.search("the lighthouse keeper painted the shutters green", top_k=40, after=deleted, timeout_s=60)
    assert not reply.partial, (reply, stage_logs(flow, stacks=True))  # where a shard that never answered waits
    assert not {m.id for m in reply.docs[0].matches} & set(ids), reply.docs[0].matches

    deadline = time.monotonic() + 30
    while len(letters := {d.key.decode(): d for d in read_dead_letters(kafka_settings, topics)
                          if d.key and d.key.decode() in ids}) < len(elsewhere):
        assert time.monotonic() < deadline, letters
        time.sleep(0.5)
    assert set(letters) == elsewhere
    for doc_id, letter in letters.items():
        assert (letter.stage, letter.error_class, letter.source_partition) == ("segment", "InvalidRecordError",
                                                                             landed[doc_id])
        assert (f"belongs on partition {partition_of(doc_id.encode(), topics.partitions)}" in letter.message
                and "partitioner=murmur2_random" in letter.message), letter.message


def test_a_nul_in_an_id_is_dead_lettered_with_the_reason(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    """Issue 11: such an id reached a shard, whose next warm_up failed on it for ever."""
    topics = flow.flow.topics
    producer = StageProducer(kafka_settings)  # straight onto ingest, as a producer other than the Client could
    producer.produce(topics.ingest, value=DOCUMENT.encode(Document(id="evil\x00id", text="Some sentence here.")),
                     key=b"evil\x00id", partition=0, headers=[DOCUMENT.header()])
    producer.flush()
    receipt = client.index([Document(id="after-nul", text="Volcanic ash grounded every flight in the region.")])
    reply = client.search("volcanic ash stops air travel", top_k=3, after=receipt, timeout_s=60)
    assert reply.docs[0].matches[0].id == "after-nul", stage_logs(flow)
    deadline = time.monotonic() + 30
    while not (letters := [d for d in read_dead_letters(kafka_settings, topics) if d.key == b"evil\x00id"]):
        assert time.monotonic() < deadline, "no dead letter for the NUL id"
        time.sleep(0.5)
    assert (letters[0].stage, letters[0].error_class, letters[0].source_topic) == ("segment", "InvalidDocumentError",
                                                                                 topics.ingest)
    assert "id 'evil\\x00id' contains NUL (U+0000)" in letters[0].message


def test_documents_nested_5000_deep_are_dead_lettered_on_ingest_and_query_and_nothing_restarts(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    """Issue 11: such a record killed the stage in fastavro's reader (SIGSEGV), again on every
    restart; on the query topic, without a deadline header, for ever."""
    from streams.wire.codec import REQUEST
    from tests.streams.wire.fixtures import DEFAULT_PREFIX

    topics = flow.flow.topics
    deep = DEFAULT_PREFIX * 5625  # 135 KB, as reported
    producer = StageProducer(kafka_settings)
    producer.produce(topics.ingest, value=deep, key=b"deep-ingest", partition=0, headers=[DOCUMENT.header()])
    request = b"\x14deep-query\x06\x02" + deep + b"\x00\x00\x02t\x02\x00"  # a search Request holding it
    producer.produce(topics.query, value=request, key=b"deep-query", headers=[REQUEST.header()])  # no deadline
    producer.flush()
    receipt = client.index([Document(id="after-deep", text="Glaciers carve deep valleys over thousands of years.")])
    reply = client.search("how glaciers shape valleys", top_k=1, after=receipt, timeout_s=60)
    assert reply.docs[0].matches[0].id == "after-deep", stage_logs(flow)
    deadline = time.monotonic() + 30
    wanted = {b"deep-ingest": ("segment", topics.ingest), b"deep-query": ("encode", topics.query)}
    while len(letters := {d.key: d for d in read_dead_letters(kafka_settings, topics) if d.key in wanted}) < 2:
        assert time.monotonic() < deadline, f"dead letters: {sorted(letters)}"
        time.sleep(0.5)
    for key, (stage, topic) in wanted.items():
        letter = letters[key]
        assert (letter.stage, letter.error_class, letter.source_topic) == (stage, "DecodeLimitError", topic)
        assert "Documents nested deeper than max_document_depth=32" in letter.message
    assert flow.local_flow.find("segment").restarts == 0 and flow.local_flow.find("encode").restarts == 0


def test_bad_parameter_gets_an_error_reply_not_a_timeout(client: Client) -> None:
    with pytest.raises(SearchError) as refused:
        client.search("anything", parameters={"top_k": "ten"}, timeout_s=10)
    assert refused.value.reply.partial and "top_k" in refused.value.errors[0]
    with pytest.raises(SearchError, match="no_such_knob"):
        client.search("anything", parameters={"no_such_knob": 1}, timeout_s=10)


def test_refused_requests_are_answered_and_counted_not_dead_lettered(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    topics = flow.flow.topics
    letters_before = len(read_dead_letters(kafka_settings, topics))
    rejected_before = scraped_metric(METRICS_PORTS["encode"], "streamsearch_rejected_requests_total")
    refused = [{"top_k": 0}, {"index_type": "nosuch"}, {"filter_by": ["nosuchfield"]}]
    for parameters in refused:
        with pytest.raises(SearchError):
            client.search("anything", parameters=parameters, timeout_s=10)
    deadline = time.monotonic() + 30  # the metric is scraped: wait for the stage's counter
    while scraped_metric(METRICS_PORTS["encode"], "streamsearch_rejected_requests_total") < rejected_before + 3:
        assert time.monotonic() < deadline, "rejected requests not counted"
        time.sleep(0.2)
    assert len(read_dead_letters(kafka_settings, topics)) == letters_before, "a refused request is not a dead letter"


def test_search_with_one_shard_stopped_returns_partial_by_its_deadline(client: Client, flow: LocalRuntime) -> None:
    assert flow.local_flow is not None
    flow.local_flow.pause("index", 0)
    try:
        # search() raises RequestTimeoutError if no reply comes: a reply means the joiner answered.
        reply = client.search("bus stop", timeout_s=2)
    finally:
        flow.local_flow.resume("index", 0)
    assert reply.partial
    assert reply.missing_shards and set(reply.missing_shards) <= {0, 1}
    assert not reply.errors


def test_query_language_per_request_on_shard_and_joiner(client: Client) -> None:
    docs = [Document(id=f"lang-{lang}-{i}", text=f"Rivers flow into the sea number {i}.", tags={"lang": lang})
            for lang in ("en", "de") for i in range(3)]
    receipt = client.index(docs)
    only_de = [{"operator": "filter", "stage": "index", "traversal_paths": ["m"],
                "parameters": {"conditions": {"tags.lang": "de"}}}]
    reply = client.search("rivers flowing to the sea", top_k=3, after=receipt, timeout_s=60,
                          parameters={"query_language": only_de})
    assert [m.tags["lang"] for m in reply.docs[0].matches] == ["de", "de", "de"]
    by_id = only_de + [{"operator": "sort", "traversal_paths": ["m"], "parameters": {"field": "id", "reverse": True}},
                       {"operator": "slice", "traversal_paths": ["m"], "parameters": {"start": 0, "end": 2},
                        "priority": 1}]
    reply = client.search("rivers flowing to the sea", top_k=3, after=receipt, timeout_s=60,
                          parameters={"query_language": by_id})
    assert [m.id for m in reply.docs[0].matches] == ["lang-de-2", "lang-de-1"]


def test_unknown_operator_gets_an_error_reply(client: Client) -> None:
    with pytest.raises(SearchError) as refused:
        client.search("anything", timeout_s=10, parameters={"query_language": [{"operator": "__import__"}]})
    assert "__import__" in refused.value.errors[0] and "filter" in refused.value.errors[0]


def test_metrics_move_after_an_ingest_and_a_search(client: Client, flow: LocalRuntime) -> None:
    topics = flow.flow.topics
    before = scraped_metric(METRICS_PORTS["segment"], "streamsearch_records_in_total", topic=topics.ingest)
    replies_before = scraped_metric(METRICS_PORTS["join"], "streamsearch_replies_total")
    receipt = client.index([Document(id=f"metric-{i}", text=f"Metrics document number {i}.") for i in range(4)])
    client.search("metrics document", after=receipt, timeout_s=60)
    assert scraped_metric(METRICS_PORTS["segment"], "streamsearch_records_in_total", topic=topics.ingest) >= before + 4
    assert scraped_metric(METRICS_PORTS["encode"], "streamsearch_records_out_total") > 0
    assert scraped_metric(METRICS_PORTS["encode"], "streamsearch_batch_seconds_count", topic=topics.segmented) > 0
    vectors = sum(scraped_metric(METRICS_PORTS["index"] + replica, "streamsearch_index_vectors") for replica in (0, 1))
    assert vectors >= 4
    assert scraped_metric(METRICS_PORTS["join"], "streamsearch_replies_total") >= replies_before + 1
    assert scraped_metric(METRICS_PORTS["join"], "streamsearch_query_seconds_count", flow=topics.flow) >= 1



def test_dead_letters_are_counted(flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    port = METRICS_PORTS["segment"]
    before = scraped_metric(port, "streamsearch_dead_letters_total", error="SerdeError")
    producer = StageProducer(kafka_settings)
    producer.produce(flow.flow.topics.ingest, value=b"\x01garbage", key="metric-bad")
    producer.flush()
    deadline = time.monotonic() + 60
    while scraped_metric(port, "streamsearch_dead_letters_total", error="SerdeError") < before + 1:
        assert time.monotonic() < deadline, "dead letter not counted within 60 s"
        time.sleep(0.1)  # polling a condition: the metric is only observable by scraping


def test_dead_letters_are_listed_and_can_be_redriven(flow: LocalRuntime, kafka_settings: KafkaSettings) -> None:
    from streams.client.dead_letters import read_dead_letters
    from streams.ops.dead_letters import redrive

    topics = flow.flow.topics
    producer = StageProducer(kafka_settings)
    producer.produce(topics.ingest, value=b"\x05broken again", key="redrive-me", partition=1)
    producer.flush()
    deadline = time.monotonic() + 60
    while not (mine := [d for d in read_dead_letters(kafka_settings, topics) if d.key == b"redrive-me"]):
        assert time.monotonic() < deadline, "dead letter not listed within 60 s"
    letter = mine[0]
    assert (letter.stage, letter.error_class) == ("segment", "SerdeError")
    assert (letter.source_topic, letter.source_partition) == (topics.ingest, 1)
    assert "malformed" in letter.message and letter.value == b"\x05broken again"
    assert redrive(kafka_settings, [letter]) == 1
    # Re-driven unchanged, the stage processes it again and dead-letters it again: a second copy appears.
    while len([d for d in read_dead_letters(kafka_settings, topics, from_offset=letter.offset)
               if d.key == b"redrive-me"]) < 2:
        assert time.monotonic() < deadline, "re-driven record not processed again within 60 s"


def test_dead_letters_command_prints_one_line_per_record(flow: LocalRuntime, broker: LocalBroker) -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "streams.cli", "dead-letters", "--flow", flow.flow.name],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers})
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert lines and all(len(fields) == 6 for fields in lines)
    assert any(f[1] == "segment" and f[2] == "SerdeError" and f[3].startswith(f"{flow.flow.topics.ingest}[")
               for f in lines)
    assert result.stderr.strip().endswith(f"{len(lines)} dead letters")


def test_redrive_sends_each_dead_letter_once(flow: LocalRuntime, broker: LocalBroker) -> None:
    import os
    import subprocess
    import sys

    def redrive() -> tuple[int, str]:
        result = subprocess.run([sys.executable, "-m", "streams.cli", "dead-letters", "--flow", flow.flow.name,
                                 "--redrive"], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers})
        assert result.returncode == 0, result.stderr
        listed, outcome = result.stderr.strip().splitlines()[-2:]
        return int(listed.split()[0]), outcome

    listed, outcome = redrive()
    assert listed > 0 and outcome.startswith("re-driven: ") and "before" not in outcome, outcome
    # The second re-drive sends none of those again (only letters written since, by records failing again).
    _, again = redrive()
    assert again.endswith(f" ({listed} re-driven before: not again)"), again


def test_status_reports_known_lag_shards_and_dead_letters(
        client: Client, flow: LocalRuntime, kafka_settings: KafkaSettings, broker: LocalBroker) -> None:
    import json
    import os
    import subprocess
    import sys

    from streams.ops.status import collect_status

    def encode_lag() -> int:
        report = collect_status(kafka_settings, flow.flow)
        return next(s for s in report.stages if s.stage == "encode").total_lag

    def settled() -> bool:
        """Encode's asynchronous commit has landed and the shards' periodic reports show documents."""
        report = collect_status(kafka_settings, flow.flow)
        encode = next(s for s in report.stages if s.stage == "encode")
        return encode.total_lag == 0 and sum(s["documents"] for s in report.shards) > 0 and report.dead_letters > 0

    producer = StageProducer(kafka_settings)
    producer.produce(flow.flow.topics.ingest, value=b"\x03not a document", key="status-bad", partition=0)
    producer.flush()
    receipt = client.index([Document(id="status-warm", text="Warm up before the status check.")])
    client.search("warm up", after=receipt, timeout_s=60)
    deadline = time.monotonic() + 60
    while not settled():
        assert time.monotonic() < deadline, "encode never caught up, or no shard documents or dead letter seen"
    assert flow.local_flow is not None
    flow.local_flow.pause("encode", 0)
    try:
        client.index([Document(id=f"status-{i}", text=f"Status document number {i}.") for i in range(5)])
        while (lag := encode_lag()) < 5:  # the segment stage forwards them; the stopped encoder cannot
            assert time.monotonic() < deadline, f"encode lag stuck at {lag}"
        report = collect_status(kafka_settings, flow.flow)
    finally:
        flow.local_flow.resume("encode", 0)
    stages = {s.stage: s for s in report.stages}
    assert stages["encode"].total_lag == 5
    assert stages["segment"].total_lag == 0 and stages["segment"].members == 1
    assert {s["partition"] for s in report.shards} == {0, 1}
    assert sum(s["documents"] for s in report.shards) > 0 and all(s["index_types"] for s in report.shards)
    assert report.dead_letters >= 1

    result = subprocess.run([sys.executable, "-m", "streams.cli", "status", "--flow", str(flow.flow_path), "--json"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers})
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert parsed["flow"] == flow.flow.name
    assert [s["stage"] for s in parsed["stages"]] == ["segment", "encode", "index", "join"]
    assert all("lag" in p for s in parsed["stages"] for p in s["lag"])
