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

import yaml
from setup import FLOW, machine, peak_rss_mib, scifact

from processors.encoders.transformer import TransformerEncoder
from streams.flow import load_flow
from streams.local.runtime import LocalRuntime


def in_process(docs) -> float:  # type: ignore[no-untyped-def]
    flow = load_flow(FLOW)
    encoder = TransformerEncoder(flow.stage("encode").config)
    encoder.warm_up()
    encoder.run(docs=docs[:32])  # warm caches, as the stage is warm when the data arrives
    started = time.perf_counter()
    encoder.run(docs=docs)
    return len(docs) / (time.perf_counter() - started)


def pipeline(docs, *, query_fetch_wait_ms: int) -> float:  # type: ignore[no-untyped-def]
    """Documents/s from the first produce until every shard has applied the last document."""
    settings = yaml.safe_load(FLOW.read_text())
    settings["search"]["fetch_wait_ms"] = query_fetch_wait_ms
    with tempfile.TemporaryDirectory() as state:
        flow_path = Path(state) / "flow.yml"
        flow_path.write_text(yaml.safe_dump(settings))
        with LocalRuntime(load_flow(flow_path), flow_path=flow_path, state_dir=Path(state)) as runtime:
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
    default = pipeline(docs, query_fetch_wait_ms=5)
    bulk = pipeline(docs, query_fetch_wait_ms=100)
    print(f"machine: {machine()}")
    print(f"documents: {len(docs)} SciFact (title + text, max_length 256), flow deploy/flows/beir.yml, 2 shards")
    print(f"in-process encoder                       : {baseline:6.2f} docs/s   peak RSS {rss_in_process:5.0f} MiB")
    print(f"pipeline, query fetch wait 5 ms (default): {default:6.2f} docs/s   ratio {default / baseline:5.3f}  (goal >= 0.9)")
    print(f"pipeline, query fetch wait 100 ms (bulk) : {bulk:6.2f} docs/s   ratio {bulk / baseline:5.3f}")
    print(f"peak RSS of the largest stage process    : {peak_rss_mib(children=True):5.0f} MiB")


if __name__ == "__main__":
    main()
