"""What recovery tests check: writes applied, a stopped flow's shards holding exactly what was
written, and what a read_committed consumer sees on a topic."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import TopicPartition

from processors.document import Document
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from streams.client import Client, IndexReceipt
from streams.kafka.consumer import make_consumer
from streams.local.runtime import LocalRuntime
from streams.wire.codec import STORED_DOCUMENT
from streams.wire.records import SearchReply
from tests.e2e.fixtures import stage_logs
from tests.fixtures import read_all


def wait_applied(client: Client, receipt: IndexReceipt, *, timeout: float = 240.0) -> SearchReply:
    """Search with read-your-writes until every shard has applied ``receipt`` and serves.

    A shard that restarts answers ``restoring`` at once, and one that has not caught up by the
    deadline answers ``stale``: both mean "ask again", never "done".
    """
    deadline = time.monotonic() + timeout
    last: SearchReply | None = None
    while time.monotonic() < deadline:
        try:
            last = client.search("are all writes applied?", after=receipt, timeout_s=10)
        except Exception:  # a stage is restarting and the request expired unanswered: ask again
            continue
        if not last.partial and not last.stale_shards:
            return last
        if last.restoring_shards:
            time.sleep(0.2)  # the restoring shard answered at once; do not spin on it
    raise AssertionError(f"writes not applied within {timeout}s; last reply {last}")


def text_hash(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()


@dataclass(frozen=True)
class ShardContents:
    """Everything the shards of a stopped flow hold."""

    docs: dict[str, Document]
    vectors: int
    per_doc: dict[str, int]
    vector_table: dict[tuple[str, str, str], bytes]
    shards_of: dict[str, list[int]]


def read_shards(state_dir: Path, flow: str, partitions: int, config: CompoundIndexerConfig) -> ShardContents:
    """Open every shard of a stopped flow (the stages hold RocksDB's lock while they run)."""
    docs: dict[str, Document] = {}
    shards_of: dict[str, list[int]] = {}
    vector_table: dict[tuple[str, str, str], bytes] = {}
    per_doc: dict[str, int] = {}
    vectors = 0
    for partition in range(partitions):
        path = Path(state_dir) / flow / "index" / str(partition)
        if not path.exists():
            continue
        index = CompoundIndexer(config, path=path, codec=STORED_DOCUMENT)
        index.warm_up()
        try:
            for doc_id in index.doc_ids():
                doc = index.get(doc_id)
                assert doc is not None
                docs[doc_id] = doc
                shards_of.setdefault(doc_id, []).append(partition)
            for owner, vector in index.vectors_by_node().items():
                vector_table[owner] = np.asarray(vector, dtype=np.float32).tobytes()
                per_doc[owner[0]] = per_doc.get(owner[0], 0) + 1
            vectors += index.vector_count
        finally:
            index.close()
    return ShardContents(docs, vectors, per_doc, vector_table, shards_of)


def flow_shards(runtime: LocalRuntime) -> ShardContents:
    """What the shards of ``runtime``'s flow hold, once it is stopped."""
    flow = runtime.flow
    return read_shards(flow.state_dir, flow.name, flow.topics.partitions, flow.stage("index").config)


def assert_exact(runtime: LocalRuntime, expected: dict[str, str]) -> dict[str, int]:
    """The stopped flow's shards hold exactly ``expected`` (id -> text): each once, right
    content, one vector per chunk. Returns the counts for the report."""
    contents = flow_shards(runtime)
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


def committed_keys(runtime: LocalRuntime, topic: str) -> list[bytes]:
    """The keys of every record of ``topic`` a read_committed consumer sees, to the end."""
    assert runtime.settings is not None
    records = read_all(runtime.settings, topic, runtime.flow.topics.partitions, **{"isolation.level": "read_committed"})
    keys: list[bytes] = []
    for msg in records:
        key = msg.key()
        assert isinstance(key, bytes), f"{topic}: a record without a key at offset {msg.offset()}"
        keys.append(key)
    return keys


def committed_total(runtime: LocalRuntime, group: str, topic: str) -> int:
    """The offsets ``group`` committed on ``topic``, summed over its partitions."""
    assert runtime.settings is not None
    consumer = make_consumer(runtime.settings, group_id=group)
    try:
        partitions = [TopicPartition(topic, p) for p in range(runtime.flow.topics.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def transactional_id(runtime: LocalRuntime, stage: str) -> str:
    """The transactional id of an exactly_once stage's running process (replica 0), from its log."""
    assert runtime.local_flow is not None
    found: list[str] = []
    deadline = time.monotonic() + 60
    while not found:
        assert time.monotonic() < deadline, f"no transactional_id in the log of {stage}\n{stage_logs(runtime)}"
        found = re.findall(r"stage running .*transactional_id=(\S+)",
                           runtime.local_flow.log_path(stage).read_text(errors="replace"))
        time.sleep(0.1)  # polling interval of a condition
    return found[-1]


def starts(runtime: LocalRuntime, stage: str) -> int:
    """How many processes of a stage (replica 0) have started (the log has a line per start)."""
    assert runtime.local_flow is not None
    return runtime.local_flow.log_path(stage).read_text(errors="replace").count("stage running")


def offsets_report(runtime: LocalRuntime, groups: dict[str, str]) -> str:
    """Per partition of each topic (key): its end, its last stable offset (the end a read_committed reader
    may read to; below the end while a transaction is open on it, Apache Kafka only), and the offset the
    group (value) that reads it committed: which topic a pipeline that stopped progressing stopped at."""
    assert runtime.settings is not None
    lines = []
    for topic, group in groups.items():
        partitions = [TopicPartition(topic, p) for p in range(runtime.flow.topics.partitions)]
        ends = {isolation: make_consumer(runtime.settings, group_id=group, **{"isolation.level": isolation})
                for isolation in ("read_uncommitted", "read_committed")}
        try:
            for done in ends["read_committed"].committed(partitions, timeout=10):
                high = ends["read_uncommitted"].get_watermark_offsets(done, timeout=10)[1]
                stable = ends["read_committed"].get_watermark_offsets(done, timeout=10)[1]
                lines.append(f"{topic}[{done.partition}]: end {high}, last stable {stable}, "
                             f"{group} committed {done.offset}")
        except Exception as exc:  # noqa: BLE001 - a diagnosis: say what failed rather than hide the assertion it explains
            lines.append(f"{topic}: {exc!r}")
        finally:
            for consumer in ends.values():
                consumer.close()
    return "\n".join(lines)
