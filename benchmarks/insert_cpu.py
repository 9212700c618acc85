"""Where an insert's CPU goes: CPU seconds of each process of a flow (the broker, each stage, this
client) per vector, while pre-embedded vectors are inserted in acknowledged batches until all are
searchable; then the same round again on the same, now warm, broker and stages.

Each process's CPU is its user + system time from ``/proc/<pid>/stat`` (children included in the
process tree of this one, by role as ``setup.ProcessTreePeaks`` names them), read before and after a
round; the broker's and each stage's also by thread group from ``/proc/<pid>/task`` (a stage's: RocksDB's,
librdkafka's, and the rest, its Python threads). The baseline in the same run: the same vectors added to an in-process FAISS flat index.
The first round pays the JVM's JIT warming up on a fresh broker; the second shows a warm one.
Then, per round, the cores each process and thread group used and the cores' worth of its threads that waited
runnable for one (``/proc/<pid>/task/*/schedstat``), while the client inserted and from its last acknowledgement
until all was searchable: what is short of cores, and what waits for work.

    python benchmarks/insert_cpu.py [--vectors 50000] [--batch 1000] [--shards 1] [--broker kafka|tansu]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from setup import (NO_MODEL_FLOW_YAML, RunQueueReading, broker_label, cpu_seconds_by_role, flow_runtime, fresh_broker,
                   machine, markdown_table, run_queue_seconds, run_queue_seconds_between, unit_vectors)

from processors.document import Document


def run(args: argparse.Namespace) -> None:
    spec = yaml.safe_load(NO_MODEL_FLOW_YAML)
    spec["stages"]["index"]["shards"] = args.shards
    vectors = unit_vectors(args.vectors, seed=11)
    rounds: list[tuple[str, float, float, dict[str, float]]] = []
    phases: list[tuple[str, list[_Mark]]] = []
    with tempfile.TemporaryDirectory(prefix="insert-cpu-") as state, fresh_broker(args.broker):
        runtime = flow_runtime(Path(state), yaml.safe_dump(spec, sort_keys=False))
        with runtime, runtime.client() as client:
            runtime.wait_ready(client, timeout=300)
            for label in ("fresh broker and stages", "the same, warm (upserts of the same ids)"):
                marks = [_Mark.start()]
                receipts = [client.index(Document(id=f"v{i}", embedding=vectors[i])
                                         for i in range(start, min(start + args.batch, len(vectors))))
                            for start in range(0, len(vectors), args.batch)]
                marks.append(_Mark.now())
                receipt = receipts[0]
                for later in receipts[1:]:
                    receipt = receipt.merge(later)
                client.search(vectors=vectors[:1], top_k=1, after=receipt, timeout_s=300)
                marks.append(_Mark.now())
                inserted, searchable = (mark.at - marks[0].at for mark in marks[1:])
                used = marks[2].cpu_since(marks[0])
                rounds.append((label, inserted, searchable, used))
                phases.append((label, marks))
    started = time.perf_counter()
    _in_process(vectors)
    baseline = time.perf_counter() - started
    roles = sorted({role for *_, used in rounds for role in used})
    rows = [(f"{role} (µs of CPU per vector)", [f"{used.get(role, 0.0) / len(vectors) * 1e6:,.1f}"
                                                 for *_, used in rounds]) for role in roles]
    rows.append(("all processes (µs of CPU per vector)",
                 [f"{sum(v for role, v in used.items() if ':' not in role) / len(vectors) * 1e6:,.1f}"
                  for *_, used in rounds]))
    rows.append(("inserted vectors/s", [f"{len(vectors) / inserted:,.0f}" for _, inserted, _, _ in rounds]))
    rows.append(("all searchable after s", [f"{searchable:.2f}" for _, _, searchable, _ in rounds]))
    print(f"\ninsert CPU: no-model flow, {args.shards} shard(s), {broker_label(args.broker)}, {len(vectors):,} "
          f"384-d vectors in acknowledged batches of {args.batch}; {machine()}; load {os.getloadavg()[0]:.2f}")
    print(markdown_table([label for label, *_ in rounds], rows))
    print(f"baseline: FAISS flat in-process adds them in {baseline:.3f} s ({len(vectors) / baseline:,.0f} vectors/s)")
    for label, marks in phases:
        _print_cores(label, marks)


@dataclass(frozen=True)
class _Mark:
    """A moment of a round: the clock, and each role's CPU and each thread's run-queue seconds so far."""

    at: float
    cpu: dict[str, float]
    waited: RunQueueReading

    @classmethod
    def start(cls) -> _Mark:
        """The clock read after the readings: a round's time does not count them."""
        cpu, waited = cpu_seconds_by_role(), run_queue_seconds()
        return cls(time.perf_counter(), cpu, waited)

    @classmethod
    def now(cls) -> _Mark:
        """The clock read before the readings."""
        return cls(time.perf_counter(), cpu_seconds_by_role(), run_queue_seconds())

    def cpu_since(self, earlier: _Mark) -> dict[str, float]:
        return {role: seconds - earlier.cpu.get(role, 0.0) for role, seconds in self.cpu.items()}

    def waited_since(self, earlier: _Mark) -> dict[str, float]:
        return run_queue_seconds_between(earlier.waited, self.waited)


def _print_cores(label: str, marks: list[_Mark]) -> None:
    """Cores each role used and cores' worth of its threads waited runnable for one, while the client inserted and
    from its last acknowledgement until all was searchable: a role short of cores waits runnable; one that waits
    for work (or a lock, or the network) does neither. A thread group's CPU is its live threads' (one that exits in
    a phase takes its CPU out of the group's, not out of the role's); the readings at the last acknowledgement
    (tens of ms) fall in the second phase."""
    spans = list(itertools.pairwise(marks))
    roles = sorted({role for mark in marks for role in mark.cpu})
    rows = []
    for role in roles:
        cells = []
        for earlier, later in spans:
            seconds = later.at - earlier.at
            cells.append(f"{later.cpu_since(earlier).get(role, 0.0) / seconds:.2f} / "
                         f"{later.waited_since(earlier).get(role, 0.0) / seconds:.2f}")
        rows.append((role, cells))
    print(f"\n{label}: cores used / cores' worth of threads waiting runnable for one (of {len(os.sched_getaffinity(0))})")
    print(markdown_table([f"while inserting ({marks[1].at - marks[0].at:.2f} s)",
                          f"after the last acknowledgement ({marks[2].at - marks[1].at:.2f} s)"], rows))


def _in_process(vectors: np.ndarray) -> None:
    import faiss

    faiss.IndexFlatIP(vectors.shape[1]).add(vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
