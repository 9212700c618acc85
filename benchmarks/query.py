"""Query latency: p50/p99 of sequential searches over request/reply topics against the
same work in-process (encode the query + FAISS flat search + chunk->doc ranking), in the
same run. Goal: p50 overhead <= 15 ms. The pipeline runs on Apache Kafka and on Tansu
(``--broker both``, the default), each on a fresh broker.

    python benchmarks/query.py [--docs 1000] [--queries 200] [--broker kafka|tansu|both]
                               [--retrieval dense --retrieval hybrid ...]

With several ``--retrieval``s each query is asked once per retrieval, one after the other, so that every
retrieval meets the same broker, caches and load: the cost of ``hybrid`` over ``dense`` in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from setup import (BROKER_CHOICES, FLOW, broker_kinds, broker_label, fresh_broker, machine, markdown_table,
                   peak_rss_mib, percentiles, scifact)

from processors.encoders.transformer import TransformerEncoder
from processors.query.parameters import RETRIEVALS
from processors.index.base import Change
from processors.index.compound import CompoundIndexer
from processors.rankers.chunk2doc import Chunk2DocRanker
from streams.flow.parse import load_flow
from streams.local.runtime import LocalRuntime
from streams.wire.codec import DOCUMENT


def in_process(docs, queries, top_k: int) -> list[float]:  # type: ignore[no-untyped-def]
    flow = load_flow(FLOW)
    encoder = TransformerEncoder(flow.stage("encode").config)
    encoder.warm_up()
    encoded = encoder.run(docs=docs).docs
    with tempfile.TemporaryDirectory() as state:
        index = CompoundIndexer(flow.stage("index").config, path=Path(state), codec=DOCUMENT)
        index.warm_up()
        index.apply(changes=[Change(d.id, d) for d in encoded], checkpoint=b"0")
        ranker = Chunk2DocRanker(flow.stage("index").ranker_config)
        latencies = []
        for text in queries:
            started = time.perf_counter()
            vector = encoder.encode_texts([text])
            ranker.run(hits=index.search(embeddings=vector, top_k=top_k), top_k=top_k)
            latencies.append(time.perf_counter() - started)
        index.close()
    return latencies


def pipeline(docs, queries, top_k: int, broker: str,  # type: ignore[no-untyped-def]
             retrievals: tuple[str, ...] = ("dense",)) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as state, fresh_broker(broker), \
            LocalRuntime(load_flow(FLOW), flow_path=FLOW, state_dir=Path(state)) as runtime:
        client = runtime.client()
        runtime.wait_ready(client)
        receipt = client.index(docs)
        client.search("warm up", after=receipt, timeout_s=300)  # at most max_deadline_s
        latencies: dict[str, list[float]] = {retrieval: [] for retrieval in retrievals}
        for text in queries:
            for retrieval in retrievals:
                started = time.perf_counter()
                reply = client.search(text, top_k=top_k, timeout_s=10, retrieval=retrieval)
                latencies[retrieval].append(time.perf_counter() - started)
                assert not reply.partial and len(reply.docs[0].matches) == top_k
        client.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--broker", choices=BROKER_CHOICES, default="both")
    parser.add_argument("--retrieval", choices=RETRIEVALS, action="append",
                        help="repeatable; default dense (the flow, beir.yml, keeps the lexical arm)")
    args = parser.parse_args()
    retrievals = tuple(dict.fromkeys(args.retrieval or ["dense"]))
    docs, queries = scifact(args.docs)
    queries = (queries * (args.queries // len(queries) + 1))[: args.queries]
    base = percentiles(in_process(docs, queries, args.top_k))
    rss = peak_rss_mib()
    kinds = broker_kinds(args.broker)
    runs = {kind: pipeline(docs, queries, args.top_k, kind, retrievals) for kind in kinds}
    print(f"machine: {machine()}")
    print(f"index: {len(docs)} SciFact docs, 2 shards; {len(queries)} sequential queries, top_k={args.top_k}")
    print(f"in-process encode + FAISS (baseline): p50 {base[0]:7.1f} ms   p99 {base[1]:7.1f} ms   "
          f"peak RSS {rss:6.0f} MiB")
    rows = []
    for retrieval in retrievals:
        piped = {kind: percentiles(runs[kind][retrieval]) for kind in kinds}
        label = "" if retrievals == ("dense",) else f" ({retrieval})"
        rows += [
            (f"request/reply p50 ms{label}", [f"{piped[k][0]:.1f}" for k in kinds]),
            (f"request/reply p99 ms{label}", [f"{piped[k][1]:.1f}" for k in kinds]),
            (f"p50 overhead ms{label} (goal <= 15)", [f"{piped[k][0] - base[0]:.1f}" for k in kinds]),
        ]
    print(markdown_table([broker_label(k) for k in kinds], rows))


if __name__ == "__main__":
    main()
