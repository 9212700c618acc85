"""The index stage's own work per document, without a broker: ``ShardIngest.process`` on records as
they arrive (decode, checks, apply to RocksDB and FAISS), in the stage's batches of 256.

Two shapes: pre-embedded root documents (a flow without a model reads them from ingest) and
documents of ``--chunks`` chunks with a vector each (what an encode stage writes to ``encoded``,
and what a replay applies). The baseline in the same run: ``CompoundIndexer.apply`` of the same
Documents straight from memory (no Avro, no checks), which is the floor of the handler.

    python benchmarks/shard_apply.py [--docs 20000] [--chunks 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from setup import DIM, machine, markdown_table, unit_vectors

from processors.document import Document
from processors.index.base import Change
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from streams.runtime.spec import Inbound
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.states import ShardStates
from streams.wire.codec import DOCUMENT, STORED_DOCUMENT
from streams.wire.topics import FlowTopics

BATCH = 256
"""The index stage's index-path batch size (``streams/stages/kinds.py``)."""


def documents(count: int, chunks: int, vectors: np.ndarray) -> list[Document]:
    if not chunks:
        return [Document(id=f"doc-{i:07d}", text=f"text {i}", embedding=vectors[i]) for i in range(count)]
    return [Document(id=f"doc-{i:07d}", chunks=[
        Document(id=f"doc-{i:07d}/{c}", parent_id=f"doc-{i:07d}", text=f"chunk {c} of {i}",
                 embedding=vectors[(i * chunks + c) % len(vectors)]) for c in range(chunks)]) for i in range(count)]


def through_the_handler(docs: Sequence[Document], *, from_ingest: bool) -> float:
    """Seconds for ``ShardIngest.process`` over the records of ``docs``, in batches of ``BATCH``."""
    topics = FlowTopics("bench", 1)
    topic = topics.ingest if from_ingest else topics.encoded
    records = []
    for offset, doc in enumerate(docs):
        value, headers = DOCUMENT.encode_record(doc)
        records.append(Inbound(topic, 0, offset, doc.id.encode(), value, dict(headers)))
    with tempfile.TemporaryDirectory() as state:
        states = ShardStates(root=Path(state), flow="bench", config=CompoundIndexerConfig(dim=DIM))
        ingest = ShardIngest(states=states, topics=topics, source=topic, given_dim=DIM if from_ingest else None)
        ingest.assigned([0])
        return _timed(lambda: [ingest.process(records[s:s + BATCH]) for s in range(0, len(records), BATCH)],
                      ingest.close)


def in_process(docs: Sequence[Document]) -> float:
    """Seconds for ``CompoundIndexer.apply`` of the same Documents, in batches of ``BATCH``."""
    with tempfile.TemporaryDirectory() as state:
        index = CompoundIndexer(CompoundIndexerConfig(dim=DIM), path=Path(state), codec=STORED_DOCUMENT)
        index.warm_up()
        return _timed(lambda: [index.apply(changes=[Change(d.id, d) for d in docs[s:s + BATCH]],
                                           checkpoint=str(s).encode()) for s in range(0, len(docs), BATCH)],
                      index.close)


def _timed(work: Callable[[], object], close: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--chunks", type=int, default=10)
    args = parser.parse_args()
    vectors = unit_vectors(args.docs * max(args.chunks, 1), seed=5)
    rows = []
    for label, chunks, from_ingest in (("pre-embedded root documents, from ingest", 0, True),
                                       (f"documents of {args.chunks} chunks, from encoded", args.chunks, False)):
        count = args.docs if not chunks else max(args.docs // chunks, 1)
        docs = documents(count, chunks, vectors)
        handler, floor = through_the_handler(docs, from_ingest=from_ingest), in_process(docs)
        rows.append((label, [f"{count:,}", f"{handler / count * 1e6:,.1f}", f"{floor / count * 1e6:,.1f}",
                             f"{count * max(chunks, 1) / handler:,.0f}"]))
    print(f"\nshard apply, no broker; {machine()}; load {os.getloadavg()[0]:.2f}")
    print(markdown_table(["documents", "handler µs/doc", "baseline: apply in-process µs/doc", "vectors/s"], rows))
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
