"""The index stage's own work per query, without a broker: ``ShardSearch.process`` answering the copies of a
query for the shards of one process (decode, scan, hits back to documents, rank, encode the partial result).

The baseline in the same run: FAISS's flat scan of one shard's vectors, alone and with the other shards'
side by side in threads (as the handler runs them), which is the floor of the handler.

    python benchmarks/shard_search.py [--vectors 100000] [--shards 2] [--queries 300]
                                      [--chunk-oversample 5] [--flat-scan auto|float32|float16]

``--chunk-oversample`` is how many vectors a shard reads per wanted document (the window; a flow's default
is 5): the hits beyond the top 10 documents are what the handler reads and ranks beyond the floor.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
from setup import DIM, machine, markdown_table, percentiles, unit_vectors

from processors.document import Document
from processors.index.base import FLAT_SCANS
from processors.index.compound import CompoundIndexerConfig
from processors.index.faiss_flat import faiss_search
from processors.rankers.chunk2doc import Chunk2DocRanker, Chunk2DocRankerConfig
from streams.runtime.spec import Inbound
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.search import ShardSearch
from streams.stages.shard.states import ShardStates
from streams.wire import headers as h
from streams.wire.codec import DOCUMENT, REQUEST
from streams.wire.partitioner import partition_of
from streams.wire.records import Request
from streams.wire.topics import FlowTopics

TOP_K = 10
BATCH = 1000


def _load(ingest: ShardIngest, topics: FlowTopics, vectors: np.ndarray) -> dict[int, list[int]]:
    """Every vector as a pre-embedded root document through the index path's handler; returns the rows of each
    partition (the documents' partitions as a producer's would be)."""
    offsets = dict.fromkeys(range(topics.partitions), 0)
    rows: dict[int, list[int]] = {p: [] for p in range(topics.partitions)}
    for start in range(0, len(vectors), BATCH):
        records = []
        for row in range(start, min(len(vectors), start + BATCH)):
            doc_id = f"doc-{row:07d}"
            partition = partition_of(doc_id.encode(), topics.partitions)
            value, headers = DOCUMENT.encode_record(Document(id=doc_id, embedding=vectors[row]))
            records.append(Inbound(topics.ingest, partition, offsets[partition], doc_id.encode(), value, dict(headers)))
            offsets[partition] += 1
            rows[partition].append(row)
        ingest.process(records)
    for partition in range(topics.partitions):
        ingest.end_reached(partition)
    return rows


def _copies(topics: FlowTopics, number: int, query: np.ndarray, oversample: int) -> list[Inbound]:
    """One query's copies, one per partition, as the fan-out writes them."""
    request = Request(request_id=f"r{number}", kind="search", reply_to=f"{topics.prefix}.reply.bench",
                      deadline_ms=int(time.time() * 1000) + 240_000, docs=[Document(id="q", embedding=query)],
                      parameters={"top_k": TOP_K, "chunk_oversample": oversample}, min_offsets={})
    value, headers = REQUEST.encode_record(request, (h.int_header(h.DEADLINE_MS, request.deadline_ms),))
    return [Inbound(topics.search, p, number, request.request_id.encode(), value, dict(headers))
            for p in range(topics.partitions)]


def _timed(work: Callable[[int], object], count: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``work(i)`` for i in range(count), after 20 untimed calls."""
    for number in range(20):
        work(number)
    seconds = []
    for number in range(count):
        started = time.perf_counter()
        work(number)
        seconds.append(time.perf_counter() - started)
    return percentiles(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--chunk-oversample", type=int, default=5)
    parser.add_argument("--flat-scan", choices=FLAT_SCANS, default="auto")
    args = parser.parse_args()
    topics = FlowTopics("bench", args.shards)
    vectors, queries = unit_vectors(args.vectors, seed=11), unit_vectors(args.queries + 20, seed=12)
    config = CompoundIndexerConfig(dim=DIM, flat_scan=args.flat_scan)
    with tempfile.TemporaryDirectory() as state:
        states = ShardStates(root=Path(state), flow=topics.prefix, config=config)
        ingest = ShardIngest(states=states, topics=topics, given_dim=DIM)
        ingest.assigned(list(range(args.shards)))
        rows = _load(ingest, topics, vectors)
        search = ShardSearch(states=states, ranker=Chunk2DocRanker(Chunk2DocRankerConfig(keep_chunks=0)),
                             topics=topics)
        copies = [_copies(topics, n, queries[n], args.chunk_oversample) for n in range(len(queries))]
        handler_all = _timed(lambda n: search.process(copies[n]), args.queries)
        handler_one = _timed(lambda n: search.process(copies[n][:1]), args.queries)
        ingest.close()
    floors = [faiss.IndexFlatIP(DIM) for _ in range(args.shards)]
    for partition, index in enumerate(floors):
        index.add(vectors[rows[partition]])
    window = TOP_K * args.chunk_oversample
    pool = ThreadPoolExecutor(max_workers=max(1, args.shards - 1))

    def side_by_side(n: int) -> None:
        others = [pool.submit(faiss_search, index, queries[n:n + 1], window) for index in floors[1:]]
        faiss_search(floors[0], queries[n:n + 1], window)
        for other in others:
            other.result()

    floor_all = _timed(side_by_side, args.queries)
    floor_one = _timed(lambda n: faiss_search(floors[0], queries[n:n + 1], window), args.queries)
    pool.shutdown()
    table = [(f"`ShardSearch.process`, the copies for all {args.shards} shards", handler_all),
             ("`ShardSearch.process`, one shard's copy", handler_one),
             (f"baseline: FAISS flat scans of the {args.shards} shards side by side, top {window}", floor_all),
             (f"baseline: FAISS flat scan of one shard ({len(rows[0]):,} vectors), top {window}", floor_one)]
    print(f"\nshard search, no broker: {args.vectors:,} vectors in {args.shards} shard(s) of one process, flat_scan "
          f"{args.flat_scan}, top {TOP_K} documents of {window} vectors (chunk_oversample {args.chunk_oversample}), "
          f"{args.queries} queries; {machine()}; load {os.getloadavg()[0]:.2f}")
    print(markdown_table(["p50 ms", "p99 ms"], [(label, [f"{p50:.2f}", f"{p99:.2f}"]) for label, (p50, p99) in table]))


if __name__ == "__main__":
    main()
