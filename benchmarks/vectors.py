"""Pre-embedded workload: documents that carry their embeddings and vector queries, on Apache
Kafka and on Tansu in the same run, each on its own fresh broker, against in-process FAISS.

The flow has no segmenter; the encoder is present but skipped (every document and query carries
its vector, so the model is never called, though the stage loads it at start as always); a flat
inner-product index on 2 shards. ``--docs`` random unit float32 vectors (dim 384) are indexed
as root documents, then ``--queries`` sequential top-10 searches with other random unit vectors
go over request/reply. Per broker it prints:

- insert vectors/s: documents produced and acknowledged by the broker per second (``Client.index``);
- seconds until all searchable: from the first produce until a read-your-writes search
  (``search(after=receipt)``) is answered by every shard, i.e. every vector is applied;
- query p50/p99 over the topics, and recall@10 against exact numpy search;
- peak RSS, all processes: the sum of per-process peaks (VmHWM) of this process, the broker
  (the JVM for Kafka) and the stage processes, sampled every 0.25 s from the broker's start on.

The baseline, measured in the same run on the same vectors and queries: one in-process FAISS
IndexFlatIP (all vectors, no shards), vectors added per second, one query per search.

    python benchmarks/vectors.py [--docs 100000] [--queries 1000] [--broker kafka|tansu|both]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from setup import (BROKER_CHOICES, DIM, VECTOR_FLOW_YAML, ProcessTreePeaks, broker_kinds, broker_label,
                   exact_top, flow_runtime, fresh_broker, machine, markdown_table, percentiles, recall_at,
                   unit_vectors)

from processors.document import Document

@dataclass
class Figures:
    insert_per_s: float = 0.0
    searchable_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    recall: float = 0.0
    rss_total_mib: float = 0.0
    rss_by_role: dict[str, float] = field(default_factory=dict)


def baseline(vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int) -> Figures:
    import faiss

    with ProcessTreePeaks() as peaks:
        index = faiss.IndexFlatIP(DIM)
        started = time.perf_counter()
        index.add(vectors)
        added = len(vectors) / (time.perf_counter() - started)
        index.search(queries[:10], k)  # warm
        latencies, found = [], []
        for query in queries:
            started = time.perf_counter()
            _, ids = index.search(query[None, :], k)
            latencies.append(time.perf_counter() - started)
            found.append(ids[0].tolist())
        del index
    p50, p99 = percentiles(latencies)
    return Figures(added, 0.0, p50, p99, recall_at(found, exact, k), peaks.total_mib(), peaks.by_role_mib())


def pipeline(kind: str, vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="vectors-bench-") as state, fresh_broker(kind), \
            ProcessTreePeaks() as peaks:
        runtime = flow_runtime(Path(state), VECTOR_FLOW_YAML)
        try:
            runtime.start()
            client = runtime.client()
            runtime.wait_ready(client, timeout=300)
            docs = (Document(id=f"v{i}", embedding=vector) for i, vector in enumerate(vectors))
            started = time.perf_counter()
            receipt = client.index(docs)
            figures.insert_per_s = len(vectors) / (time.perf_counter() - started)
            reply = client.search(vectors=queries[:1], top_k=k, after=receipt, timeout_s=300)  # at most max_deadline_s
            figures.searchable_s = time.perf_counter() - started
            assert not reply.partial and not reply.stale_shards and not reply.errors, reply
            for query in queries[:10]:  # warm the query path
                client.search(vectors=query[None, :], top_k=k)
            latencies, found = [], []
            for query in queries:
                started = time.perf_counter()
                reply = client.search(vectors=query[None, :], top_k=k, timeout_s=10)
                latencies.append(time.perf_counter() - started)
                assert not reply.partial and not reply.errors and len(reply.docs[0].matches) == k, reply
                found.append([int(m.id[1:]) for m in reply.docs[0].matches])
            figures.p50_ms, figures.p99_ms = percentiles(latencies)
            figures.recall = recall_at(found, exact, k)
            peaks.sample()  # the stages' last readings before they stop
            client.close()
        finally:
            runtime.stop()
        peaks.sample()
    figures.rss_total_mib, figures.rss_by_role = peaks.total_mib(), peaks.by_role_mib()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--broker", choices=BROKER_CHOICES, default="both")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every figure
    vectors = unit_vectors(args.docs, seed=1)
    queries = unit_vectors(args.queries, seed=2)
    exact = exact_top(vectors, queries, args.top_k)
    base = baseline(vectors, queries, exact, args.top_k)
    kinds = broker_kinds(args.broker)
    results = {kind: pipeline(kind, vectors, queries, exact, args.top_k) for kind in kinds}

    print(f"machine: {machine()}; load average (1 min) at start {load_at_start:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")
    print(f"workload: {args.docs} random unit {DIM}-d float32 vectors as pre-embedded root documents "
          f"(no segmenter, encoder skipped), flat inner-product index, 2 shards; {args.queries} sequential "
          f"top-{args.top_k} vector searches (random unit queries); each broker fresh")
    columns = [broker_label(kind) for kind in kinds] + ["in-process FAISS IndexFlatIP (baseline)"]
    figures = [results[kind] for kind in kinds]
    rows = [
        ("insert vectors/s", [f"{f.insert_per_s:,.0f}" for f in figures] + [f"{base.insert_per_s:,.0f} (index.add)"]),
        ("seconds until all searchable", [f"{f.searchable_s:.1f}" for f in figures] + ["-"]),
        ("end-to-end vectors/s (all searchable)", [f"{args.docs / f.searchable_s:,.0f}" for f in figures] + ["-"]),
        ("query p50 ms", [f"{f.p50_ms:.2f}" for f in figures] + [f"{base.p50_ms:.2f}"]),
        ("query p99 ms", [f"{f.p99_ms:.2f}" for f in figures] + [f"{base.p99_ms:.2f}"]),
        (f"recall@{args.top_k} vs exact numpy", [f"{f.recall:.4f}" for f in figures] + [f"{base.recall:.4f}"]),
        ("peak RSS, all processes (MiB)", [f"{f.rss_total_mib:,.0f}" for f in figures]
         + [f"{base.rss_total_mib:,.0f} (this process)"]),
    ]
    roles = sorted({role for f in figures for role in f.rss_by_role})
    rows += [(f"  of which {role} (MiB)", [f"{f.rss_by_role.get(role, 0.0):,.0f}" for f in figures] + ["-"])
             for role in roles]
    print(markdown_table(columns, rows))


if __name__ == "__main__":
    main()
