"""Where a vector query's time goes: the per-hop breakdown of sequential queries, from record timestamps.

A query crosses the topics of its flow; each record carries a timestamp (the broker's append time on
``<flow>.query``, whose role sets ``LogAppendTime``; the producing stage's create time elsewhere,
which librdkafka stamps at ``produce()``). Subtracting them gives, per hop, the time from one
record's production to the next stage's output: the consumer's fetch latency plus that stage's work.
The client's own send and receive are taken from its wall clock. Timestamps have millisecond
resolution and the processes share one clock (one machine), so per-hop medians are exact to ~1 ms.

    python benchmarks/query_hops.py [--vectors 100000] [--queries 200] [--shards 2] [--broker kafka|tansu]
                                    [--flow nomodel|vectors] [--flat-scan auto|float32|float16] [--bulk N] [--fresh]
                                    [--chunk-oversample N]

Prints each hop's p50/p99 beside the in-process FAISS search of the same query on the same vectors. With
``--fresh`` each query is write→found (``peers.py``'s freshness): one new document is indexed, acknowledged,
then searched for by its own vector reading that write (``after=``), and the first hop is the acknowledged
write; the shard's hop then includes the wait for the write to be applied.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from confluent_kafka import TopicPartition
from peer_workload import WARM_UP_QUERIES, warm_up_queries
from setup import (
    NO_MODEL_FLOW_YAML,
    VECTOR_FLOW_YAML,
    broker_label,
    flow_runtime,
    fresh_broker,
    machine,
    markdown_table,
    percentiles,
    unit_vectors,
)

from processors.document import Document
from processors.index.base import FLAT_SCANS
from streams.kafka.reader import read_to_end
from streams.kafka.settings import KafkaSettings

FLOWS = {"nomodel": NO_MODEL_FLOW_YAML, "vectors": VECTOR_FLOW_YAML}


def _timestamps(settings: KafkaSettings, topic: str, partitions: int, wanted: set[str]) -> dict[str, list[int]]:
    """Record timestamps (ms) of ``topic`` by request id (the record key), for the ``wanted`` ids."""
    by_request: dict[str, list[int]] = defaultdict(list)
    starts = [TopicPartition(topic, p, 0) for p in range(partitions)]
    for record in read_to_end(settings, starts, group_id=f"hops-{uuid.uuid4().hex[:8]}", timeout=60):
        key = (record.key() or b"").decode(errors="replace")
        if key in wanted:
            by_request[key].append(record.timestamp()[1])
    return by_request


def _spread(samples_ms: Iterable[float]) -> tuple[float, float]:
    """p50 and p99 of latencies in milliseconds (``setup.percentiles`` takes seconds)."""
    return percentiles([sample / 1000 for sample in samples_ms])


def hops(sent: Mapping[str, tuple[float, float, float]], stamps: Mapping[str, Mapping[str, list[int]]],
         route: list[tuple[str, str]]) -> list[tuple[str, list[float]]]:
    """Per hop, the milliseconds of every query.

    :param sent: request id -> wall clock ms when the query began, when it was sent (later by a write
        acknowledged first, with ``--fresh``), when its reply was received.
    :param stamps: topic role -> request id -> record timestamps (ms).
    :param route: (hop name, topic role) in the order a query crosses them; a hop ends at the last record
        of its topic for the request (the slowest shard's partial).
    """
    names = ["client: write one document, acknowledged", *(name for name, _ in route), "client: read and decode the reply"]
    out: list[tuple[str, list[float]]] = [(name, []) for name in names]
    for request, (began_ms, send_ms, received_ms) in sent.items():
        previous = send_ms
        ends = [max(stamps[role].get(request, [0])) for _, role in route]
        if not all(ends):
            continue
        out[0][1].append(send_ms - began_ms)
        for (_, samples), end in zip(out[1:], ends):
            samples.append(end - previous)
            previous = end
        out[-1][1].append(received_ms - previous)
    return out


def _timed_query(client: Any, vector: np.ndarray, fresh_id: str | None) -> tuple[str, tuple[float, float, float]]:
    """One timed top-10 query: its request id, and the wall clock (ms) when it began, when it was sent (after the
    acknowledged write of ``fresh_id``, a new document of this vector, when given) and when its reply came.

    :raises RuntimeError: if the fresh document is not in the reply (read-your-writes broken).
    """
    began = time.time() * 1000
    receipt = client.index([Document(id=fresh_id, embedding=vector)]) if fresh_id is not None else None
    sent = time.time() * 1000
    reply = client.search(vectors=vector[None, :], top_k=10, timeout_s=10, after=receipt)
    if fresh_id is not None and fresh_id not in {match.id for match in reply.docs[0].matches}:
        raise RuntimeError(f"{fresh_id} was written before the search that read it, yet not found")
    return reply.request_id, (began, sent, time.time() * 1000)


def run(args: argparse.Namespace) -> None:
    spec = yaml.safe_load(FLOWS[args.flow])
    spec["stages"]["index"]["shards"] = args.shards
    spec["stages"]["index"]["with"]["flat_scan"] = args.flat_scan
    if args.chunk_oversample is not None:
        spec["search"]["chunk_oversample"] = args.chunk_oversample
    vectors = unit_vectors(args.vectors, seed=7)
    queries = unit_vectors(args.queries, seed=8)
    with tempfile.TemporaryDirectory(prefix="hops-") as state, fresh_broker(args.broker) as bootstrap:
        runtime = flow_runtime(Path(state), yaml.safe_dump(spec, sort_keys=False))
        with runtime, runtime.client() as client:
            runtime.wait_ready(client, timeout=300)
            receipt = client.index(Document(id=f"v{i}", embedding=v) for i, v in enumerate(vectors))
            client.search(vectors=queries[:1], top_k=10, after=receipt, timeout_s=300)
            for vector in warm_up_queries(args.warm_up):
                client.search(vectors=vector[None, :], top_k=10, timeout_s=10)
            sent: dict[str, tuple[float, float]] = {}
            with _bulk_upsert(runtime, vectors[:args.bulk]) as writer:
                asking = (lambda n: n < len(queries)) if writer is None else (lambda n: writer.is_alive())
                for n in itertools.takewhile(asking, itertools.count()):
                    request_id, times = _timed_query(client, queries[n % len(queries)], f"fresh{n}" if args.fresh else None)
                    sent[request_id] = times
            topics, reply_topic = runtime.flow.topics, client.reply_topic
            settings = KafkaSettings(bootstrap)
            wanted = set(sent)
            has_encoder = "encode" in spec["stages"]
            route = [("client -> query topic (broker append)", "query"),
                     ("encode" if has_encoder else "join: fan out", "search"),
                     ("shard: fetch + search + rank", "partials"),
                     ("join: fetch + merge + reply", "reply")]
            stamps = {"query": _timestamps(settings, topics.query, args.shards, wanted),
                      "search": _timestamps(settings, topics.search, args.shards, wanted),
                      "partials": _timestamps(settings, topics.partials, args.shards, wanted),
                      "reply": _timestamps(settings, reply_topic, 1, wanted)}
    baseline = _in_process(vectors, queries, args.shards)
    rows = [(name, [*(f"{v:.1f}" for v in _spread(samples)), str(len(samples))])
            for name, samples in hops(sent, stamps, route) if samples and (args.fresh or not name.startswith("client: write"))]
    total = _spread(received - began for began, _, received in sent.values())
    rows.append(("**end to end**", [f"{total[0]:.1f}", f"{total[1]:.1f}", str(len(sent))]))
    for label, (p50, p99) in baseline.items():
        rows.append((f"baseline: FAISS flat in-process, {label}", [f"{p50:.1f}", f"{p99:.1f}", str(len(queries))]))
    during = f", while {args.bulk:,} of them are upserted again in acknowledged batches of {BULK_BATCH:,}" \
        if args.bulk else ""
    if args.fresh:
        during += ", each after writing one new document of its vector and reading that write (write→found)"
    print(f"\nquery hops: {args.flow} flow, {args.shards} shard(s), flat_scan {args.flat_scan}, "
          f"chunk_oversample {spec['search']['chunk_oversample']}, {broker_label(args.broker)}, "
          f"{args.vectors:,} vectors, {len(sent)} sequential top-10 queries{during} after {args.warm_up:,} untimed; "
          f"{machine()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(markdown_table(["p50 ms", "p99 ms", "queries"], rows))


BULK_BATCH = 1000
"""Documents per acknowledged write of ``--bulk``, as ``peers.py`` inserts."""


@contextlib.contextmanager
def _bulk_upsert(runtime: Any, vectors: np.ndarray) -> Iterator[threading.Thread | None]:
    """A thread that writes ``vectors`` again under their ids (same content: the index keeps its answers),
    with its own client, batch after acknowledged batch; None when there are none. Joined on exit, and its
    error raised."""
    if not len(vectors):
        yield None
        return
    failed: list[BaseException] = []

    def upsert() -> None:
        try:
            with runtime.client() as writer:
                for start in range(0, len(vectors), BULK_BATCH):
                    writer.index(Document(id=f"v{i}", embedding=vectors[i])
                                 for i in range(start, min(start + BULK_BATCH, len(vectors))))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=upsert, name="bulk-upsert")
    thread.start()
    try:
        yield thread
    finally:
        thread.join()
    if failed:
        raise failed[0]


def _in_process(vectors: np.ndarray, queries: np.ndarray, shards: int) -> dict[str, tuple[float, float]]:
    """The same top-10 searches on flat indexes in this process: all the vectors on one OpenMP thread (what
    a shard does for a single query, ``faiss_search``) and on FAISS's default threads; and one shard's share
    of them on one thread, which is what each shard scans (side by side on a process owning several). The
    scan's cost is not linear here: 100,000 384-d vectors took 13.4-15.4 ms, 50,000 took 4.0-4.3."""
    import faiss

    from processors.index.faiss_flat import faiss_search

    def flat(rows: np.ndarray) -> faiss.IndexFlatIP:
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(rows)
        return index

    index = flat(vectors)
    share = flat(vectors[: -(-len(vectors) // shards)]) if shards > 1 else index
    searches = {"all vectors, 1 thread": lambda v: faiss_search(index, v, 10),
                f"all vectors, {faiss.omp_get_max_threads()} threads": lambda v: index.search(v, 10)}
    if shards > 1:
        searches[f"one shard's share ({share.ntotal:,} vectors), 1 thread"] = lambda v: faiss_search(share, v, 10)
    out = {}
    for label, search in searches.items():
        latencies = []
        for vector in queries:
            started = time.perf_counter()
            search(vector[None, :])
            latencies.append((time.perf_counter() - started) * 1000)
        out[label] = _spread(latencies)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warm-up", type=int, default=WARM_UP_QUERIES, help="untimed queries before the timed ones")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--chunk-oversample", type=int, default=None,
                        help="vectors a shard reads per wanted document (default: the flow's, 1; a flow's default is 5)")
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--flow", choices=tuple(FLOWS), default="nomodel")
    parser.add_argument("--flat-scan", choices=FLAT_SCANS, default="auto",
                        help="the flat index's single-query scan (CompoundIndexer's flat_scan)")
    parser.add_argument("--bulk", type=int, default=0,
                        help="upsert this many of the vectors again while querying, and query until it is done "
                             "(--queries then cycles): which hop a bulk ingest slows")
    parser.add_argument("--fresh", action="store_true",
                        help="write→found: index one new document of each query's vector first and read that write")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
