"""An index stage catching up alone: pre-embedded vectors are written to ingest while no index stage runs, then
one starts and applies them all; how long until all are searchable, the CPU it spent, and where its vectors sit.

What it isolates: the stage's own loop (fetch, decode, apply, commit) with the cores to itself, as after the
last acknowledgement of a bulk insert (``insert_cpu.py``: the index stage's main thread then works alone, on one
core). The catch-up's seconds include the stage's start-up. Its huge pages (``AnonHugePages``) are read up to
``--settle`` seconds after, until they stop growing: the index stage collapses its vectors into huge pages once
its writes pause (``processors/index/huge_pages.py``). ``--malloc-huge-pages`` runs the same again with the
stage started under ``glibc.malloc.hugetlb=1`` (what the supervisor did before: every page ``malloc`` maps a huge
one), the rounds in turns. The baseline in the same run: ``ShardIngest.process`` over the same records
in-process (``shard_apply.py``'s handler), which is the loop's floor.

    python benchmarks/catch_up.py [--vectors 200000] [--rounds 1] [--malloc-huge-pages]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml
from setup import (
    NO_MODEL_FLOW_YAML,
    broker_label,
    cpu_seconds,
    cpu_seconds_by_role,
    fresh_broker,
    machine,
    markdown_table,
    process_role,
    process_tree,
    unit_vectors,
)
from shard_apply import documents, through_the_handler

from processors.document import Document
from processors.index.huge_pages import ATTEMPTS, QUIET_S
from streams.flow.parse import load_flow
from streams.local.runtime import LocalRuntime

SETTINGS = {"collapsed once writes pause (the default)": None,
            "malloc huge pages (glibc.malloc.hugetlb=1)": "glibc.malloc.hugetlb=1"}
"""The index stage's ``GLIBC_TUNABLES`` by row label (None: the environment's own)."""

INDEX = "stage index"


def catch_up(vectors_count: int, tunables: str | None, settle_s: float) -> list[str]:
    """One round on a fresh broker: the row's figures."""
    spec = yaml.safe_load(NO_MODEL_FLOW_YAML)
    spec["stages"]["index"]["shards"] = 1
    vectors = unit_vectors(vectors_count, seed=3)
    with tempfile.TemporaryDirectory(prefix="catch-up-") as state, fresh_broker("kafka"):
        flow_path = Path(state) / "flow.yml"
        flow_path.write_text(yaml.safe_dump(spec, sort_keys=False))
        flow = load_flow(flow_path)
        with LocalRuntime(flow, flow_path=flow_path, state_dir=Path(state), stages=["join"]) as joiner, \
                joiner.client() as client:
            receipt = None
            for start in range(0, vectors_count, 1000):
                written = client.index(Document(id=f"v{i}", embedding=vectors[i])
                                       for i in range(start, min(start + 1000, vectors_count)))
                receipt = written if receipt is None else receipt.merge(written)
            previous = os.environ.get("GLIBC_TUNABLES")
            if tunables is not None:  # the supervisor passes its environment on; the caller's own tunables stay
                os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [previous, tunables]))
            try:
                started = time.perf_counter()
                with LocalRuntime(flow, flow_path=flow_path, state_dir=Path(state), stages=["index"]):
                    client.search(vectors=vectors[:1], top_k=1, after=receipt, timeout_s=300)
                    seconds = time.perf_counter() - started
                    main_thread = _main_thread_cpu()  # first: the process's reading, a tick later, holds it
                    stage = cpu_seconds_by_role().get(INDEX, 0.0)
                    huge = _settled_huge_mib(settle_s)
            finally:
                _restore("GLIBC_TUNABLES", previous)
    return [f"{seconds:.2f}", f"{vectors_count / seconds:,.0f}", f"{main_thread:.2f}", f"{stage:.2f}", f"{huge:,.0f}"]


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _main_thread_cpu() -> float:
    """User + system CPU seconds of the index stage's main thread (its loop), from ``/proc/<pid>/task/<pid>/stat``."""
    return sum(cpu_seconds(f"/proc/{pid}/task/{pid}/stat") or 0.0 for pid in process_tree() if process_role(pid) == INDEX)


def _settled_huge_mib(settle_s: float) -> float:
    """The index stage's ``AnonHugePages`` in MiB once it has not changed for ``QUIET_S`` times ``ATTEMPTS`` + 1 (the
    collapse starts ``QUIET_S`` after the last write, a refused one is tried again later), or when ``settle_s`` has
    passed."""
    deadline, last, steady_since = time.monotonic() + settle_s, -1.0, time.monotonic()
    while time.monotonic() < deadline:
        now = sum(_huge_kib(pid) for pid in process_tree() if process_role(pid) == INDEX) / 1024
        if now != last:
            last, steady_since = now, time.monotonic()
        elif time.monotonic() - steady_since >= QUIET_S * (ATTEMPTS + 1):
            break
        time.sleep(0.1)  # a reading of /proc, not a wait on the stage: its collapse says nothing when done
    return max(last, 0.0)


def _huge_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("AnonHugePages:")), 0)
    except OSError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=15.0, help="seconds to wait for the huge pages to settle")
    parser.add_argument("--malloc-huge-pages", action="store_true", help="also with glibc.malloc.hugetlb=1, in turns")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    settings = SETTINGS if args.malloc_huge_pages else dict(list(SETTINGS.items())[:1])
    rows = [(f"{label}, round {i + 1}", catch_up(args.vectors, tunables, args.settle))
            for i in range(args.rounds) for label, tunables in settings.items()]
    handler, _ = through_the_handler(documents(args.vectors, 0, unit_vectors(args.vectors, seed=3)), from_ingest=True)
    print(f"\ncatch-up of an index stage started after {args.vectors:,} pre-embedded 384-d vectors were written, "
          f"1 shard, {broker_label('kafka')}; {machine()}; load {load_at_start:.2f} -> {os.getloadavg()[0]:.2f}")
    print(markdown_table(["caught up s (start-up included)", "vectors/s", "main thread CPU s", "stage CPU s",
                          "huge pages MiB after"], rows))
    print(f"baseline: the handler in-process applies them in {handler:.2f} s ({args.vectors / handler:,.0f} vectors/s)")


if __name__ == "__main__":
    main()
