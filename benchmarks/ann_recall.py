"""ANN recall: one shard's stored SciFact vectors served by flat, HNSW, IVF and IVF-PQ.

For each index type: recall@k against the exact (flat) top-k over the test queries, p50/p99
latency of one-query searches through the shard index (FAISS plus reading the hits' documents
from RocksDB), and the time to build the index from the stored vectors (no re-encoding, no
re-ingest; the flat index is filled by the ingest itself). Goal: HNSW recall@10 >= 0.98 at defaults.
Embeddings are cached under .streamsearch/cache/, so only the first run encodes (~6 min).

    python benchmarks/ann_recall.py [--limit 1000] [--top-k 10]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
from query import percentiles
from setup import FLOW, ROOT, machine, scifact

from processors.document import Document
from processors.encoders.transformer import TransformerEncoder
from processors.index.base import Change
from processors.index.types import INDEX_TYPES
from processors.index.compound import CompoundIndexer
from processors.index.faiss_ivf import auto_pq_m, nlist_for
from streams.flow.parse import load_flow
from streams.wire.codec import DOCUMENT

CACHE = ROOT / ".streamsearch" / "cache"


def embeddings(limit: int | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Document ids, corpus vectors and test-query vectors, encoded once and cached as .npy."""
    docs, queries = scifact(limit)  # type: ignore[arg-type]
    config = load_flow(FLOW).stage("encode").config
    encoder = TransformerEncoder(config)
    key = hashlib.sha1(f"{encoder.model_path}|{config}|{len(docs)}|{len(queries)}".encode()).hexdigest()[:12]
    corpus_path, queries_path = CACHE / f"scifact-{key}-corpus.npy", CACHE / f"scifact-{key}-queries.npy"
    if not (corpus_path.is_file() and queries_path.is_file()):
        CACHE.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        np.save(queries_path.with_suffix(".tmp.npy"), encoder.encode_texts(queries))
        np.save(corpus_path.with_suffix(".tmp.npy"), encoder.encode_texts([d.text or "" for d in docs]))
        queries_path.with_suffix(".tmp.npy").rename(queries_path)
        corpus_path.with_suffix(".tmp.npy").rename(corpus_path)
        print(f"encoded {len(docs)} docs + {len(queries)} queries in {time.perf_counter() - started:.0f} s")
    return [d.id for d in docs], np.load(corpus_path), np.load(queries_path)


def run_queries(index: CompoundIndexer, queries: np.ndarray, top_k: int, **choice) -> tuple[list[list[str]], list[float]]:  # type: ignore[no-untyped-def]
    """Node ids per query and per-query latency (s), one query per search call."""
    found, latencies = [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search(embeddings=query[None], top_k=top_k, **choice)[0]
        latencies.append(time.perf_counter() - started)
        found.append([hit.node.id for hit in hits])
    return found, latencies


def recall(found: list[list[str]], exact: list[list[str]], top_k: int) -> float:
    return float(np.mean([len(set(f) & set(e)) / top_k for f, e in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="index only the first N SciFact documents")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    ids, corpus, queries = embeddings(args.limit)
    config = load_flow(FLOW).stage("index").config
    rows = []
    with tempfile.TemporaryDirectory() as state:
        index = CompoundIndexer(config, path=Path(state), codec=DOCUMENT)
        index.warm_up()
        changes = [Change(i, Document(id=i, embedding=v)) for i, v in zip(ids, corpus)]
        started = time.perf_counter()
        for start in range(0, len(changes), 1000):
            index.apply(changes=changes[start : start + 1000], checkpoint=str(start).encode())
        ingest = time.perf_counter() - started
        exact, _ = run_queries(index, queries, args.top_k, index_type="flat")
        sweeps: list[tuple[str, dict]] = [(name, {}) for name in INDEX_TYPES]
        sweeps += [("hnsw", {"ef_search": ef}) for ef in (16, 32, 64, 256)]
        sweeps += [("ivf", {"nprobe": n}) for n in (4, 8, 32, 64)] + [("ivf_pq", {"nprobe": 32})]
        for name, knobs in sweeps:
            started = time.perf_counter()
            index.build(name)
            built = time.perf_counter() - started
            run_queries(index, queries[:20], args.top_k, index_type=name, **knobs)  # warm
            found, latencies = run_queries(index, queries, args.top_k, index_type=name, **knobs)
            rows.append((name, knobs, recall(found, exact, args.top_k), *percentiles(latencies), built))
        built_types = index.stats().index_types
        index.close()
    print(f"machine: {machine()}")
    print(f"index: {len(ids)} SciFact docs (1 vector each, {corpus.shape[1]}-d, {config.metric}), "
          f"{len(queries)} test queries one at a time, top_k={args.top_k}; built: {', '.join(built_types)}")
    print(f"ingest into RocksDB + flat: {ingest:.2f} s")
    print(f"defaults: hnsw M={config.hnsw_m} efConstruction={config.hnsw_ef_construction} "
          f"efSearch={config.hnsw_ef_search}; ivf nlist={nlist_for(len(ids), config.ivf_nlist)} "
          f"nprobe={config.ivf_nprobe}; pq m={config.pq_m or auto_pq_m(config.dim)} bits={config.pq_bits}")
    print(f"{'index':<8} {'params':<15} {'recall@' + str(args.top_k):>10} {'p50 ms':>8} {'p99 ms':>8} {'build s':>8}")
    seen: set[str] = set()
    for name, knobs, hit_rate, p50, p99, built in rows:
        params = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "defaults"
        build = f"{'ingest':>8}" if name == "flat" else f"{built:8.2f}" if name not in seen else f"{'(built)':>8}"
        seen.add(name)
        print(f"{name:<8} {params:<15} {hit_rate:10.3f} {p50:8.3f} {p99:8.3f} {build}")


if __name__ == "__main__":
    main()
