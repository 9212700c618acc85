"""Ingest throughput: documents/s through the whole pipeline (ingest -> encode -> shards,
until every shard has applied the last document) against the same encoder in-process on
the same texts, measured in the same run. Goal: pipeline >= 0.9 x in-process.

    python benchmarks/ingest.py [--docs 600]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from setup import FLOW, machine, peak_rss_mib, scifact

from processors.encoders.transformer import TransformerEncoder
from streams.flow import load_flow
from streams.local import LocalRuntime


def in_process(docs) -> float:  # type: ignore[no-untyped-def]
    flow = load_flow(FLOW)
    encoder = TransformerEncoder(flow.stage("encode").config)
    encoder.warm_up()
    encoder.run(docs=docs[:32])  # warm caches, as the stage is warm when the data arrives
    started = time.perf_counter()
    encoder.run(docs=docs)
    return len(docs) / (time.perf_counter() - started)


def pipeline(docs) -> float:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as state, LocalRuntime(load_flow(FLOW), flow_path=FLOW,
                                                              state_dir=Path(state)) as runtime:
        client = runtime.client()
        runtime.wait_ready(client)
        started = time.perf_counter()
        receipt = client.index(docs)
        reply = client.search("done?", after=receipt, timeout_s=3600)
        elapsed = time.perf_counter() - started
        assert not reply.partial and not reply.stale_shards, reply
        client.close()
    return len(docs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=600)
    args = parser.parse_args()
    docs, _ = scifact(args.docs)
    baseline = in_process(docs)
    rss_in_process = peak_rss_mib()
    through = pipeline(docs)
    print(f"machine: {machine()}")
    print(f"documents: {len(docs)} SciFact (title + text, max_length 256)")
    print(f"in-process encoder : {baseline:7.2f} docs/s   peak RSS {rss_in_process:7.0f} MiB")
    print(f"pipeline (Kafka)   : {through:7.2f} docs/s   peak RSS of largest stage {peak_rss_mib(children=True):7.0f} MiB")
    print(f"ratio              : {through / baseline:7.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
