"""Replay treats records as the live index stage did: what the stage dead-lettered, replay skips and
reports; it never dies on it (a record that crashed the live shard would crash every replay again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from processors.document import Document
from streams.flow.parse import load_flow
from streams.kafka.admin import ensure_topics
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.runtime.failures import DeadLetterTopic
from streams.runtime.inflight import CrashLoopError
from streams.runtime.spec import Inbound, StageSpec
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT
from tests.e2e.fixtures import root_flow_yaml

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[3]
DIM = 384  # the flow's encoder's (MiniLM): the flow is checked against it

# Replay, in a process whose shard handler dies on the record "killer" as a native library would
# (the FAISS segfault the live stage's crash-loop breaker dead-lettered). Prints the result.
REPLAY = """
import dataclasses, json, os, sys
from pathlib import Path
from streams.flow.parse import load_flow
from streams.flow.spec import with_state_dir
from streams.kafka.settings import KafkaSettings
from streams.ops.replay import replay_index
from streams.stages.shard.ingest import ShardIngest

flow_path, state_dir, bootstrap = sys.argv[1:4]
process = ShardIngest.process

def crashing(self, records):
    if any(r.key == b"killer" for r in records):
        os.abort()
    return process(self, records)

ShardIngest.process = crashing
result = replay_index(with_state_dir(load_flow(flow_path), Path(state_dir)), KafkaSettings(bootstrap), progress=False)
print(json.dumps(dataclasses.asdict(result)))
"""


def _encoded(doc_id: str, offset: int) -> tuple[bytes, bytes, dict[str, bytes]]:
    vector = np.random.default_rng(offset).standard_normal(DIM).astype(np.float32)
    doc = Document(id=doc_id, text=f"text of {doc_id}", embedding=vector / np.linalg.norm(vector))
    headers = {h.SCHEMA: DOCUMENT.header()[1], **dict([h.int_header(h.INGEST_OFFSET, offset)])}
    return doc_id.encode(), DOCUMENT.encode(doc), headers


def test_a_record_the_live_shard_dead_lettered_for_crashing_it_is_skipped_by_replay_not_fatal(
        kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    name = f"rpl{uuid.uuid4().hex[:6]}"
    flow_path = tmp_path / "flow.yml"
    flow_path.write_text(root_flow_yaml().replace("{name}", name).replace("shards: 2", "shards: 1"))
    topics = load_flow(flow_path).topics
    ensure_topics(kafka_settings, topics.shapes())
    records = [_encoded("a", 0), _encoded("killer", 1), (b"unreadable", b"\x00not avro", {}), _encoded("b", 3)]
    producer = StageProducer(kafka_settings)
    for key, value, headers in records:
        producer.produce(topics.encoded, value=value, key=key, partition=0, headers=tuple(headers.items()))
    # What the live index stage's crash-loop breaker wrote for "killer" (offset 1), with the stage's own code.
    key, value, headers = records[1]
    letters = DeadLetterTopic(StageSpec(flow=topics.prefix, name="index", dead_letter_topic=topics.dead_letter))
    letters.keep(producer, Inbound(topics.encoded, 0, 1, key, value, headers),
                 CrashLoopError("crashed the stage 3 times (Aborted)"))
    producer.flush()

    run = subprocess.run([sys.executable, "-c", REPLAY, str(flow_path), str(tmp_path / "state"),
                          kafka_settings.bootstrap_servers], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, (run.returncode, run.stderr[-3000:])
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["records"] == 4 and result["documents"] == {"0": 2}, result
    assert result["skipped"] == 2, result  # the killer unprocessed, the unreadable one as the stage dead-lettered it
    assert run.stderr.count("replay skipped a bad record") == 2, run.stderr[-3000:]
