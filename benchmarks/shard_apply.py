"""The index stage's own work per document, without a broker: ``ShardIngest.process`` on records as
they arrive (decode, checks, apply to RocksDB and FAISS), in the stage's batches of 256.

Two shapes: pre-embedded root documents (a flow without a model reads them from ingest) and
documents of ``--chunks`` chunks with a vector each (what an encode stage writes to ``encoded``,
and what a replay applies). The baseline in the same run: ``CompoundIndexer.apply`` of the same
Documents straight from memory (no Avro, no checks), which is the floor of the handler. The longest
batch is where a shard answered no search: FAISS's vectors double as they grow, a new block and a copy.

``--malloc-huge-pages`` times the pre-embedded handler again in two child processes set up as the index
stage is (``fix_mmap_threshold``, ``start_collapsing``), one started with ``glibc.malloc.hugetlb=1`` as the
supervisor started the stage until 2026-12-07, one with ``=0``: what malloc's huge pages cost the write path here
(``processors/index/huge_pages.py``).

    python benchmarks/shard_apply.py [--docs 20000] [--chunks 10] [--malloc-huge-pages]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from setup import DIM, machine, markdown_table, peak_rss_mib, unit_vectors

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


def through_the_handler(docs: Sequence[Document], *, from_ingest: bool) -> tuple[float, float]:
    """Seconds for ``ShardIngest.process`` over the records of ``docs``, in batches of ``BATCH``, and
    the longest batch's."""
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
        batches: list[float] = []
        gc.collect()
        gc.freeze()  # the records held here are not the stage's: a full collection walking them is no batch's cost

        def batch(start: int) -> None:
            began = time.perf_counter()
            ingest.process(records[start:start + BATCH])
            batches.append(time.perf_counter() - began)

        try:
            return _timed(lambda: [batch(s) for s in range(0, len(records), BATCH)], ingest.close), max(batches)
        finally:
            gc.unfreeze()


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


HUGE_PAGE_SETTINGS = {"glibc.malloc.hugetlb=1 (as the supervisor started the index stage)": "glibc.malloc.hugetlb=1",
                      "glibc.malloc.hugetlb=0": "glibc.malloc.hugetlb=0"}
"""``--malloc-huge-pages``: each child's ``GLIBC_TUNABLES``, by row label."""


def as_the_stage(docs: int) -> None:
    """In a child started with the stage's tunables: fix the mmap threshold as the stage does, time the pre-embedded
    handler, print its seconds, the longest batch's and the peak RSS as JSON."""
    from processors.index.huge_pages import start_collapsing
    from streams.runtime.heap import fix_mmap_threshold

    fix_mmap_threshold()
    start_collapsing()
    seconds, longest = through_the_handler(documents(docs, 0, unit_vectors(docs, seed=5)), from_ingest=True)
    print(json.dumps([seconds, longest, peak_rss_mib()]))


def malloc_rows(docs: int) -> list[tuple[str, list[str]]]:
    """The pre-embedded handler in a child per ``HUGE_PAGE_SETTINGS``, in turns."""
    rows = []
    for label, tunables in HUGE_PAGE_SETTINGS.items():
        child = subprocess.run([sys.executable, __file__, "--docs", str(docs), "--as-the-stage"], capture_output=True,
                               text=True, check=True, env={**os.environ, "GLIBC_TUNABLES": tunables})
        seconds, longest, rss = json.loads(child.stdout.splitlines()[-1])
        rows.append((label, [f"{docs:,}", f"{seconds / docs * 1e6:,.1f}", f"{longest * 1e3:,.0f}",
                             f"{docs / seconds:,.0f}", f"{rss:,.0f}"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--malloc-huge-pages", action="store_true",
                        help="also time the pre-embedded handler in children started with and without malloc's huge pages")
    parser.add_argument("--as-the-stage", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_the_stage:
        as_the_stage(args.docs)
        return
    vectors = unit_vectors(args.docs * max(args.chunks, 1), seed=5)
    rows = []
    for label, chunks, from_ingest in (("pre-embedded root documents, from ingest", 0, True),
                                       (f"documents of {args.chunks} chunks, from encoded", args.chunks, False)):
        count = args.docs if not chunks else max(args.docs // chunks, 1)
        docs = documents(count, chunks, vectors)
        (handler, longest), floor = through_the_handler(docs, from_ingest=from_ingest), in_process(docs)
        rows.append((label, [f"{count:,}", f"{handler / count * 1e6:,.1f}", f"{longest * 1e3:,.0f}",
                             f"{floor / count * 1e6:,.1f}", f"{count * max(chunks, 1) / handler:,.0f}"]))
    print(f"\nshard apply, no broker; {machine()}; load {os.getloadavg()[0]:.2f}")
    print(markdown_table(["documents", "handler µs/doc", "longest batch ms", "baseline: apply in-process µs/doc",
                          "vectors/s"], rows))
    print(f"peak RSS of this process: {peak_rss_mib():,.0f} MiB")
    if args.malloc_huge_pages:
        del vectors, docs
        print(f"\npre-embedded handler in a child set up as the index stage, by its malloc's huge pages; "
              f"load {os.getloadavg()[0]:.2f}")
        print(markdown_table(["documents", "handler µs/doc", "longest batch ms", "vectors/s", "peak RSS MiB"],
                             malloc_rows(args.docs)))


if __name__ == "__main__":
    main()
