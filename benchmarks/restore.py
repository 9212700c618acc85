"""Restore time: rebuild one shard of N chunks by replaying ``<flow>.encoded`` (``streams/ops/replay.py``),
against building the same index in-process from the same Documents, measured in the same run.

A shard that lost its local state (new node, disk gone, index config changed) is restored by
replay: no re-encoding, every embedding comes from the topic. This measures what that costs
over the floor, which is applying the same Documents to a ``CompoundIndexer`` straight from
memory in batches of 256 (the index stage's batch size) with a checkpoint per batch. The
difference is consuming from the broker and decoding Avro. The Documents are synthetic: root
documents of ``--chunks-per-doc`` chunks, each chunk a random unit-norm float32 vector, so no
model is loaded. The broker is Apache Kafka and Tansu, each fresh, in one run (``--broker``); producing the topic is
timed and shown, but is not part of either figure.

    python benchmarks/restore.py [--chunks 100000] [--chunks-per-doc 10] [--dim 384]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from setup import BROKER_CHOICES, broker_kinds, broker_label, fresh_broker, machine, peak_rss_mib

from streams.stages.shard import ingest as shard_ingest
from processors.document import Document
from processors.index.base import Change
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from streams.wire import headers as h
from streams.kafka.admin import ensure_topics
from streams.flow.parse import parse_flow
from streams.flow.spec import FlowSpec, with_state_dir
from streams.kafka.settings import KafkaSettings
from streams.kafka.producer import StageProducer
from streams.ops.replay import replay_index
from streams.runtime.heap import freeze_startup_heap
from streams.wire.codec import DOCUMENT
from streams.stages.shard.states import ShardCheckpoint

BATCH = 256
"""Records per apply in the baseline: the index stage's batch size (``streams/stages/kinds.py``)."""

FLOW_YAML = """\
name: restore-bench
stages:
  segment:
    uses: Sentencizer
    with: {{min_sent_len: 8, max_sent_len: 300}}
  encode:
    uses: TransformerEncoder
    with: {{pooling_strategy: mean, max_length: 128, batch_size: 64, traversal_paths: [c]}}
  index:
    uses: CompoundIndexer
    with: {{dim: {dim}, metric: inner_product}}
    shards: 1
  join: {{}}
"""


@dataclass(slots=True)
class Timer:
    """Calls and seconds spent in one wrapped function."""

    calls: int = 0
    seconds: float = 0.0


@contextmanager
def timed(owner: Any, name: str, timer: Timer) -> Iterator[None]:
    """Count the calls and time of ``owner.name`` while the block runs (to see where replay spends)."""
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timer.calls += 1
            timer.seconds += time.perf_counter() - started

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _status_mib(pid: int | str, field: str) -> float | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/<pid>/status in MiB; None off Linux."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith(field + ":")), None)


@dataclass(slots=True)
class Memory:
    """This process's RSS at the start of a phase and its peak during it (VmHWM, reset at the start)."""

    start: float | None = None
    peak: float | None = None


@contextmanager
def phase_rss(memory: Memory) -> Iterator[None]:
    """Measure the peak RSS of a block alone: Linux resets the high-water mark on ``5 > clear_refs``."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the peak is then the run's so far
        pass
    memory.start = _status_mib("self", "VmRSS")
    yield
    memory.peak = _status_mib("self", "VmHWM") or peak_rss_mib()


def broker_peak_rss_mib() -> float | None:
    """Peak RSS of the largest running child, i.e. the broker, in MiB; None off Linux.

    Not ``peak_rss_mib(children=True)``: that counts only children already waited for, and a
    child's reading starts from the parent's RSS at fork time.
    """
    peaks = [_status_mib(pid, "VmHWM") for children in Path("/proc/self/task").glob("*/children")
             for pid in children.read_text().split()]
    return max((peak for peak in peaks if peak is not None), default=None)


def synthetic_docs(chunks: int, per_doc: int, dim: int, seed: int = 0) -> list[Document]:
    """Encoded root documents as the encode stage emits them: chunks with embeddings, root without."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((chunks, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = np.array(["tide", "moon", "river", "stone", "lamp", "north", "quiet", "paper", "signal", "harbor"])
    docs = []
    for start in range(0, chunks, per_doc):
        doc_id = f"doc-{start // per_doc:07d}"
        children = []
        for j, vector in enumerate(vectors[start : start + per_doc]):
            text = f"Sentence {j} of {doc_id} about the " + " ".join(rng.choice(words, 6)) + "."
            children.append(Document(id=f"{doc_id}/{j}", parent_id=doc_id, granularity=1, text=text,
                                     embedding=vector, offset=j))
        docs.append(Document(id=doc_id, text=" ".join(c.text or "" for c in children), chunks=children))
    return docs


def produce(settings: KafkaSettings, topic: str, docs: Sequence[Document]) -> float:
    """Seconds to encode and produce every document to partition 0, as the encode stage does."""
    producer = StageProducer(settings)
    started = time.perf_counter()
    for ingest_offset, doc in enumerate(docs):
        value, headers = DOCUMENT.encode_record(doc, (h.int_header(h.INGEST_OFFSET, ingest_offset),))
        producer.produce(topic, value=value, key=doc.id.encode(), partition=0, headers=headers)
    producer.flush(timeout=600)
    seconds = time.perf_counter() - started
    producer.close()
    return seconds


def build_in_process(config: CompoundIndexerConfig, path: Path, docs: Sequence[Document]) -> tuple[float, int, int]:
    """Seconds to open an empty shard and apply ``docs`` in batches; its documents and vectors."""
    started = time.perf_counter()
    index = CompoundIndexer(config, path=path, codec=DOCUMENT)
    index.warm_up()
    for start in range(0, len(docs), BATCH):
        batch = docs[start : start + BATCH]
        last = start + len(batch) - 1
        index.apply(changes=[Change(doc.id, doc) for doc in batch],
                    checkpoint=ShardCheckpoint(encoded_offset=last, ingest_offset=last).to_bytes())
    seconds = time.perf_counter() - started
    documents, vectors = index.stats().documents, index.vector_count
    index.close()
    return seconds, documents, vectors


def same_vectors(config: CompoundIndexerConfig, left: Path, right: Path) -> tuple[bool, float]:
    """Whether two shards hold the same vector for every (doc, node, field); seconds to reopen ``right``."""
    first = CompoundIndexer(config, path=left, codec=DOCUMENT)
    first.warm_up()
    expected = first.vectors_by_node()
    first.close()
    del first  # its FAISS copy: the check holds enough vectors already
    started = time.perf_counter()
    second = CompoundIndexer(config, path=right, codec=DOCUMENT)
    second.warm_up()
    reopen = time.perf_counter() - started
    actual = second.vectors_by_node()
    second.close()
    same = expected.keys() == actual.keys() and all(np.array_equal(v, actual[k]) for k, v in expected.items())
    return same, reopen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks (vectors) in the shard")
    parser.add_argument("--chunks-per-doc", type=int, default=10, help="chunks per root document (one record each)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--broker", choices=BROKER_CHOICES, default="both", help="the broker(s) to replay from")
    args = parser.parse_args()
    failures = 0
    for kind in broker_kinds(args.broker):
        print(f"\n== {broker_label(kind)} ==")
        failures += run(kind, args)
    return 1 if failures else 0


def run(kind: str, args: argparse.Namespace) -> int:
    """One restore measurement on a fresh broker of ``kind``; returns 1 on a mismatch."""
    flow: FlowSpec = parse_flow(FLOW_YAML.format(dim=args.dim))
    config = flow.stage("index").config
    docs = synthetic_docs(args.chunks, args.chunks_per_doc, args.dim)
    n_records = len(docs)
    record_kib = sum(len(DOCUMENT.encode(doc)) for doc in docs[:100]) / min(100, n_records) / 1024
    generated = _status_mib("self", "VmHWM") or peak_rss_mib()
    build_mem, replay_mem = Memory(), Memory()
    baseline_apply, replay_apply, replay_decode = Timer(), Timer(), Timer()
    with tempfile.TemporaryDirectory(prefix="restore-bench-") as tmp, fresh_broker(kind) as bootstrap:
        settings = KafkaSettings(bootstrap)
        ensure_topics(settings, flow.topics.shapes(), topic_settings=flow.topic_settings,
                      max_payload_bytes=flow.max_payload_bytes)
        produce_s = produce(settings, flow.topics.encoded, docs)

        built = Path(tmp) / "in-process"
        with phase_rss(build_mem), timed(CompoundIndexer, "apply", baseline_apply):
            in_process_s, in_docs, in_vectors = build_in_process(config, built, docs)
        del docs  # a restoring process holds no Documents: measure replay's memory without them
        freeze_startup_heap()  # as `streamsearch replay` does before it replays

        replayed = with_state_dir(flow, Path(tmp) / "replayed")
        with phase_rss(replay_mem), timed(CompoundIndexer, "apply", replay_apply), \
                timed(shard_ingest, "decode_stored_document", replay_decode):
            started = time.perf_counter()
            result = replay_index(replayed, settings, progress=False)
            replay_s = time.perf_counter() - started

        broker_rss = broker_peak_rss_mib()
        same, reopen_s = same_vectors(config, built, replayed.state_dir / flow.name / "index" / "0")

    other_s = replay_s - replay_apply.seconds - replay_decode.seconds
    print(f"restore of 1 shard, {in_vectors} chunks ({in_docs} docs x {args.chunks_per_doc}, "
          f"{record_kib:.1f} KiB/record), dim {args.dim}, flat index, {machine()}")
    print(f"in-process build :  {in_process_s:6.2f} s  ({in_vectors / in_process_s:6.0f} chunks/s)"
          f"   apply {baseline_apply.seconds:5.2f} s in {baseline_apply.calls} batches of {BATCH} records")
    print(f"replay from Kafka:  {replay_s:6.2f} s  ({in_vectors / replay_s:6.0f} chunks/s)  "
          f"= {replay_s / in_process_s:.2f} x the in-process time")
    print(f"  ReplayResult: {result.seconds:.2f} s, {result.records} records ({result.records / result.seconds:.0f}/s), "
          f"documents {result.documents}, vectors {result.vectors}")
    print(f"  where it goes: apply {replay_apply.seconds:5.2f} s in {replay_apply.calls} batches "
          f"(avg {result.records / max(replay_apply.calls, 1):.0f} records), Avro decode {replay_decode.seconds:5.2f} s, "
          f"consume and the rest {other_s:5.2f} s")
    print(f"produce to topic :  {produce_s:6.2f} s  ({n_records / produce_s:.0f} records/s; part of neither)")
    print(f"reopen the replayed shard from RocksDB (a restart with local state): {reopen_s:.2f} s")
    print(f"peak RSS: {max(generated, build_mem.peak or 0, replay_mem.peak or 0):.0f} MiB (benchmark process, the check "
          f"after excluded; "
          f"{generated:.0f} MiB with the Documents generated); in-process build {build_mem.peak or 0:.0f} MiB "
          f"(Documents held); replay {replay_mem.peak or 0:.0f} MiB (from {replay_mem.start or 0:.0f} MiB at its start, "
          f"Documents dropped); broker " + (f"{broker_rss:.0f} MiB" if broker_rss is not None else "unknown"))

    failed = [f"{name}: in-process {a}, replay {b}" for name, a, b in
              (("documents", in_docs, result.documents.get(0)), ("vectors", in_vectors, result.vectors.get(0))) if a != b]
    if in_vectors != args.chunks:
        failed.append(f"the in-process shard holds {in_vectors} vectors, not {args.chunks}")
    if not same:
        failed.append("the shards hold different vector values")
    print("check: same documents, vectors and vector values" if not failed else "MISMATCH: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
