"""Ingest throughput: documents/s through the whole pipeline (ingest -> encode -> shards,
until every shard has applied the last document) against the same encoder in-process on
the same texts, measured in the same run. Goal: pipeline >= 0.9 x in-process. The pipeline runs
on Apache Kafka and on Tansu (``--broker both``, the default), each run on a fresh broker.

    python benchmarks/ingest.py [--docs 600] [--broker kafka|tansu|both]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml
from setup import (BROKER_CHOICES, FLOW, ProcessTreePeaks, broker_kinds, broker_label, fresh_broker, machine,
                   markdown_table, peak_rss_mib, scifact)

from processors.encoders.transformer import TransformerEncoder
from streams.flow.parse import load_flow
from streams.kafka.consumer import EMBEDDED_FETCH_WAIT_MS, LONG_POLL_FETCH_WAIT_MS
from streams.local.runtime import LocalRuntime


def in_process(docs) -> float:  # type: ignore[no-untyped-def]
    flow = load_flow(FLOW)
    encoder = TransformerEncoder(flow.stage("encode").config)
    encoder.warm_up()
    encoder.run(docs=docs[:32])  # warm caches, as the stage is warm when the data arrives
    started = time.perf_counter()
    encoder.run(docs=docs)
    return len(docs) / (time.perf_counter() - started)


OTHER_WAIT_MS = {"kafka": EMBEDDED_FETCH_WAIT_MS, "tansu": LONG_POLL_FETCH_WAIT_MS}
"""Per broker, the query fetch wait its default is compared with: on Apache Kafka the short wait every
broker had before (stop 37), on Tansu the long one (each hop waits it out there: bulk loads only)."""


def pipeline(docs, *, query_fetch_wait_ms: int | None,  # type: ignore[no-untyped-def]
             broker: str) -> tuple[float, ProcessTreePeaks]:
    """Documents/s from the first produce until every shard has applied the last document, on a
    fresh broker of this kind; and the peak RSS of every process of the run. ``query_fetch_wait_ms``:
    the flow's ``search.fetch_wait_ms`` (None: by the broker)."""
    settings = yaml.safe_load(FLOW.read_text())
    settings["search"]["fetch_wait_ms"] = query_fetch_wait_ms
    with tempfile.TemporaryDirectory() as state, fresh_broker(broker), ProcessTreePeaks() as peaks:
        flow_path = Path(state) / "flow.yml"
        flow_path.write_text(yaml.safe_dump(settings))
        with LocalRuntime(load_flow(flow_path), flow_path=flow_path, state_dir=Path(state)) as runtime:
            client = runtime.client()
            runtime.wait_ready(client)
            started = time.perf_counter()
            receipt = client.index(docs)
            reply = client.search("done?", after=receipt, timeout_s=300)  # at most max_deadline_s
            elapsed = time.perf_counter() - started
            assert not reply.partial and not reply.stale_shards, reply
            client.close()
            peaks.sample()
    return len(docs) / elapsed, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--broker", choices=BROKER_CHOICES, default="both")
    args = parser.parse_args()
    docs, _ = scifact(args.docs)
    baseline = in_process(docs)
    rss_in_process = peak_rss_mib()
    kinds = broker_kinds(args.broker)
    default = {kind: pipeline(docs, query_fetch_wait_ms=None, broker=kind) for kind in kinds}
    other = {kind: pipeline(docs, query_fetch_wait_ms=OTHER_WAIT_MS[kind], broker=kind) for kind in kinds}
    print(f"machine: {machine()}")
    print(f"documents: {len(docs)} SciFact (title + text, max_length 256), flow streams/flows/beir.yml, 2 shards")
    print(f"in-process encoder (baseline): {baseline:6.2f} docs/s   peak RSS {rss_in_process:5.0f} MiB")

    def stages_mib(peaks: ProcessTreePeaks) -> float:
        return sum(mib for role, mib in peaks.by_role_mib().items() if role.startswith("stage"))

    def largest_stage(peaks: ProcessTreePeaks) -> float:
        return max((kib / 1024 for role, kib in peaks.peaks.values() if role.startswith("stage")), default=0.0)

    rows = [
        ("pipeline docs/s, query fetch wait by the broker (default)", [f"{default[k][0]:.2f}" for k in kinds]),
        ("  ratio to in-process (goal >= 0.9)", [f"{default[k][0] / baseline:.3f}" for k in kinds]),
        ("pipeline docs/s, the other query fetch wait", [f"{other[k][0]:.2f} ({OTHER_WAIT_MS[k]} ms)" for k in kinds]),
        ("  ratio to in-process", [f"{other[k][0] / baseline:.3f}" for k in kinds]),
        ("peak RSS, all processes (MiB, default run)", [f"{default[k][1].total_mib():.0f}" for k in kinds]),
        ("  of which the broker (MiB)", [f"{default[k][1].by_role_mib().get('broker', 0.0):.0f}" for k in kinds]),
        ("  of which the stage processes (MiB)", [f"{stages_mib(default[k][1]):.0f}" for k in kinds]),
        ("  largest stage process (MiB)", [f"{largest_stage(default[k][1]):.0f}" for k in kinds]),
    ]
    print(markdown_table([broker_label(k) for k in kinds], rows))


if __name__ == "__main__":
    main()
