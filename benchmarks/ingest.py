"""Ingest throughput: documents/s through the whole pipeline (ingest -> encode -> shards,
until every shard has applied the last document) against the same encoder in-process on
the same texts, measured in the same run. Goal: pipeline >= 0.9 x in-process. The pipeline runs
on Apache Kafka and on Tansu (``--broker both``, the default), each run on a fresh broker.

The host's speed moves between minutes (the in-process encoder took 24-33 CPU s for the same 600 texts
in four runs of one evening, 36-49 docs/s), more than the pipeline's effects. So the in-process encoder
is timed again right before and right after each pipeline round, beside the flow then idle, and each
round's ratio is to the mean of those two; the first baseline, alone before any broker starts, is printed
too, and again after the runs. Two rounds per flow: on a fresh broker, then warm (its JVM compiles its hot paths during the first).
Printed beside them: each process's CPU seconds per round, and the idle flow's during the baselines.

    python benchmarks/ingest.py [--docs 600] [--broker kafka|tansu|both] [--no-other-wait]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from setup import (BROKER_CHOICES, FLOW, ProcessTreePeaks, broker_kinds, broker_label, cpu_seconds_by_role,
                   fresh_broker, machine, markdown_table, scifact)

from processors.document import Document
from processors.encoders.transformer import TransformerEncoder
from streams.flow.parse import load_flow
from streams.kafka.consumer import EMBEDDED_FETCH_WAIT_MS, LONG_POLL_FETCH_WAIT_MS
from streams.local.runtime import LocalRuntime

OTHER_WAIT_MS = {"kafka": EMBEDDED_FETCH_WAIT_MS, "tansu": LONG_POLL_FETCH_WAIT_MS}
"""Per broker, the query fetch wait its default is compared with: on Apache Kafka the short wait every
broker had before (stop 37), on Tansu the long one (each hop waits it out there: bulk loads only)."""

ROUNDS = ("fresh broker and stages", "warm (the same texts under new ids)")
"""A fresh broker's JVM compiles its hot paths during the first round (its JIT compiler took 3.6 CPU s
of a 20 s round, 1.3 in the second, stop 42); a running flow's broker is past that."""


@dataclass
class Timed:
    """One pass of the in-process encoder over the documents."""

    docs_per_s: float
    cpu_s: float
    """This process's CPU seconds (the encoder's threads)."""
    flow_cpu_s: float
    """The other processes' (an idle flow, if one runs) meanwhile."""


class InProcess:
    """The flow's encoder in this process, loaded and warmed once: the baseline."""

    def __init__(self, docs: Sequence[Document]) -> None:
        self._docs = docs
        self._encoder = TransformerEncoder(load_flow(FLOW).stage("encode").config)
        self._encoder.warm_up()
        self._encoder.run(docs=docs[:32])  # warm caches, as the stage is warm when the data arrives

    def timed(self) -> Timed:
        before, started, cpu = cpu_seconds_by_role(), time.perf_counter(), time.process_time()
        self._encoder.run(docs=self._docs)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        others = sum(seconds - before.get(role, 0.0) for role, seconds in cpu_seconds_by_role().items()
                     if role != "benchmark" and ":" not in role)
        return Timed(len(self._docs) / elapsed, cpu, others)


@dataclass
class Round:
    """One timed ingest of the documents through a running flow, between two baselines."""

    docs_per_s: float
    cpu_s: dict[str, float]
    """CPU seconds each role (the broker and its thread groups, each stage, this benchmark) took meanwhile."""
    before: Timed
    after: Timed

    @property
    def ratio(self) -> float:
        """To the in-process encoder timed around it."""
        return self.docs_per_s / statistics.fmean((self.before.docs_per_s, self.after.docs_per_s))


def pipeline(docs: Sequence[Document], baseline: InProcess, *, query_fetch_wait_ms: int | None,
             broker: str) -> tuple[list[Round], ProcessTreePeaks]:
    """Per round of ``ROUNDS``: documents/s from the first produce until every shard has applied the last
    document, on a fresh broker of this kind, the CPU each process took and the baselines around it; and
    the peak RSS of every process of the run. ``query_fetch_wait_ms``: the flow's ``search.fetch_wait_ms``
    (None: by the broker)."""
    settings = yaml.safe_load(FLOW.read_text())
    settings["search"]["fetch_wait_ms"] = query_fetch_wait_ms
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory() as state, fresh_broker(broker), ProcessTreePeaks() as peaks:
        flow_path = Path(state) / "flow.yml"
        flow_path.write_text(yaml.safe_dump(settings))
        with LocalRuntime(load_flow(flow_path), flow_path=flow_path, state_dir=Path(state)) as runtime:
            client = runtime.client()
            runtime.wait_ready(client)
            before = baseline.timed()
            for number, _ in enumerate(ROUNDS):
                batch = [dataclasses.replace(doc, id=f"{doc.id}#{number}") for doc in docs] if number else docs
                cpu_before, started = cpu_seconds_by_role(), time.perf_counter()
                receipt = client.index(batch)
                reply = client.search("done?", after=receipt, timeout_s=300)  # at most max_deadline_s
                elapsed = time.perf_counter() - started
                cpu = {role: seconds - cpu_before.get(role, 0.0) for role, seconds in cpu_seconds_by_role().items()}
                assert not reply.partial and not reply.stale_shards, reply
                after = baseline.timed()
                rounds.append(Round(len(docs) / elapsed, cpu, before, after))
                before = after
            client.close()
            peaks.sample()
    return rounds, peaks


def _rows(label: str, run: Sequence[Round], wait: str) -> list[tuple[str, list[str]]]:
    return [(f"{label}, {round_label}: pipeline docs/s{wait}", [f"{r.docs_per_s:.2f}"]) for round_label, r in
            zip(ROUNDS, run, strict=True)] + [
        (f"  {round_label}: in-process before / after", [f"{r.before.docs_per_s:.2f} / {r.after.docs_per_s:.2f}"])
        for round_label, r in zip(ROUNDS, run, strict=True)] + [
        (f"  {round_label}: ratio (goal >= 0.9)", [f"{r.ratio:.3f}"]) for round_label, r in zip(ROUNDS, run, strict=True)]


def _memory_rows(peaks: ProcessTreePeaks) -> list[tuple[str, list[str]]]:
    by_role = peaks.by_role_mib()
    stages = {role: mib for role, mib in by_role.items() if role.startswith("stage")}
    largest = max((kib / 1024 for role, kib in peaks.peaks.values() if role.startswith("stage")), default=0.0)
    return [("peak RSS of the flow: broker + stages (MiB)", [f"{by_role.get('broker', 0.0) + sum(stages.values()):.0f}"]),
            ("  of which the broker (MiB)", [f"{by_role.get('broker', 0.0):.0f}"]),
            ("  largest stage process (MiB)", [f"{largest:.0f}"]),
            ("this benchmark, with its in-process encoder (MiB)", [f"{by_role.get('benchmark', 0.0):.0f}"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--broker", choices=BROKER_CHOICES, default="both")
    parser.add_argument("--no-other-wait", action="store_true",
                        help="skip the runs with the other query fetch wait (half the time)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    docs, _ = scifact(args.docs)
    baseline = InProcess(docs)
    alone = baseline.timed()
    cores = os.cpu_count() or 1
    for kind in broker_kinds(args.broker):
        default = pipeline(docs, baseline, query_fetch_wait_ms=None, broker=kind)
        other = None if args.no_other_wait else pipeline(docs, baseline, query_fetch_wait_ms=OTHER_WAIT_MS[kind],
                                                         broker=kind)
        alone_again = baseline.timed()  # the broker and the flow gone: how far the host's speed moved
        print(f"\n{broker_label(kind)}; {machine()}; load average {load_before:.2f} at the start, "
              f"{os.getloadavg()[0]:.2f} now")
        print(f"documents: {len(docs)} SciFact (title + text, max_length 256), flow streams/flows/beir.yml, 2 shards; "
              f"in-process encoder alone first / after the runs: {alone.docs_per_s:.2f} / {alone_again.docs_per_s:.2f} "
              f"docs/s, {alone.cpu_s:.1f} / {alone_again.cpu_s:.1f} CPU s")
        rows = _rows("default", default[0], " (query fetch wait by the broker)")
        if other is not None:
            rows += _rows("other", other[0], f" (query fetch wait {OTHER_WAIT_MS[kind]} ms)")
        print(markdown_table([broker_label(kind)], rows + _memory_rows(default[1])))
        idle = [timed.flow_cpu_s / (len(docs) / timed.docs_per_s) for r in default[0] for timed in (r.before, r.after)]
        print(f"\nCPU seconds by process in the default run's rounds ({cores} cores give {cores} CPU s a second; "
              f"the in-process encoder's passes took {', '.join(f'{r.before.cpu_s:.1f}' for r in default[0])}, "
              f"{default[0][-1].after.cpu_s:.1f} CPU s; the idle flow beside them {max(idle):.2f} cores at most)")
        runs = default[0]
        roles = sorted({role for r in runs for role in r.cpu_s}, key=lambda role: -runs[0].cpu_s.get(role, 0.0))
        columns = [f"{label}: CPU s in {len(docs) / r.docs_per_s:.1f} s" for label, r in zip(ROUNDS, runs, strict=True)]
        print(markdown_table(columns, [(role, [f"{r.cpu_s.get(role, 0.0):.1f}" for r in runs]) for role in roles]))


if __name__ == "__main__":
    main()
