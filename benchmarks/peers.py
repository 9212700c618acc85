"""streamsearch side by side with its peers, one system at a time, each in a fresh state, on the
same pre-embedded workload (issue 17): ``--docs`` random unit 384-d float32 vectors inserted in
batches of 1,000 that each wait for the acknowledgement, then ``--queries`` sequential top-10
vector queries. Systems (``--systems``):

- ``numpy``: exact inner product in this process (the limit);
- ``faiss``: FAISS IndexFlatIP in this process;
- ``milvus``: milvus-lite (pymilvus MilvusClient on a local .db file, FLAT, IP), in a child process;
- ``jina``: a Jina 3 Flow with a numpy executor (gRPC), in a child process;
- ``streamsearch``: a local flow on Apache Kafka (``--broker``: or Tansu, or both) through
  ``Client.index`` / ``Client.search``, one row per ``--flow`` × ``--shards``; the default flow
  is ``benchmarks/vectors.py``'s (encoder present, skipped for pre-embedded vectors).

milvus-lite runs under this interpreter when pymilvus imports here (``pip install
.[bench]``), else in a virtualenv ``.bench/milvus``; Jina always in ``.bench/jina`` (its pins of
uvicorn, urllib3 and grpcio conflict with the project's). The virtualenvs are made on first use.

Per system: flow start-up (streamsearch: LocalRuntime start until a vector search is answered by
every shard; peers: until the first insert can start); insert vectors/s; seconds until all is
searchable after the last acknowledgement (streamsearch: ``search(after=receipt)`` answered by
every shard); the vectors a second from the first insert until all are searchable (end to end); sequential
query p50/p99 and recall@10 against exact numpy; the most queries per
second over ``--concurrency`` client threads, with its recall@10; query p99 while another thread
re-upserts the same documents (``--bulk``), from its first insert until all of it is searchable (and, beside it,
over the queries that ran while the client still inserted); write->found p50/p99 (index one document, then search
for it reading that write, paced at 20/s); peak RSS of all processes (this one, the broker, the
stages, the peer's children); the load average before and after; then each figure as a ratio to
the first streamsearch row.

streamsearch's broker is fresh for each row, and an Apache Kafka one first warmed up (``--broker-warm-up``, 100,000
vectors by default) by a throwaway copy of the flow, stopped and its topics deleted before the timed one starts: a
broker in production has been running, and a fresh JVM's compiler takes a third of a core during the first bulk
(``setup.warm_broker``). ``0`` measures the flow on a cold broker, as the rows before 2026-12-07's last did.

    python benchmarks/peers.py [--docs 100000] [--queries 1000] [--systems numpy,faiss,milvus,jina,streamsearch]
        [--flow FLOW.yml ...] [--shards 1,2] [--broker kafka|tansu|both] [--concurrency 1,2,4,8,16,32]
        [--broker-warm-up 100000]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np
import yaml
from peer_workload import WARM_UP_QUERIES, Dataset, ExactIndex, Figures, Token, Workload, measure
from setup import (
    BROKER_CHOICES,
    DIM,
    ROOT,
    NO_MODEL_FLOW_YAML,
    VECTOR_FLOW_YAML,
    ProcessTreePeaks,
    broker_kinds,
    broker_label,
    exact_top,
    flow_runtime,
    fresh_broker,
    machine,
    markdown_table,
    unit_vectors,
    warm_broker,
)

from processors.document import Document

SYSTEMS = ("numpy", "faiss", "milvus", "jina", "streamsearch")
BENCHMARKS = Path(__file__).resolve().parent
VENVS = ROOT / ".bench"


# -- in-process peers ----------------------------------------------------------------------------


class NumpyExact:
    """An ``ExactIndex`` in this process: a search is one matrix-vector product."""

    name = "numpy in-process (exact)"
    upserts = True

    def start(self) -> float:
        started = time.perf_counter()
        self.index = ExactIndex()
        return time.perf_counter() - started

    def insert(self, ids: np.ndarray, vectors: np.ndarray, *, upsert: bool = False) -> Token:
        self.index.upsert(ids, vectors)

    def wait_searchable(self, tokens: Sequence[Token], probe: np.ndarray) -> None:
        pass

    def search(self, vector: np.ndarray, k: int, after: Token | None = None) -> list[int]:
        return self.index.top(vector, k)

    def stop(self) -> None:
        del self.index


class FaissFlat:
    """FAISS IndexFlatIP: ids are positions (inserted in order); it has no cheap upsert."""

    name = "FAISS IndexFlatIP in-process"
    upserts = False

    def start(self) -> float:
        import faiss

        started = time.perf_counter()
        self.index = faiss.IndexFlatIP(DIM)
        return time.perf_counter() - started

    def insert(self, ids: np.ndarray, vectors: np.ndarray, *, upsert: bool = False) -> Token:
        assert not upsert and ids[0] == self.index.ntotal, "ids are positions"
        self.index.add(vectors)
        return None

    def wait_searchable(self, tokens: Sequence[Token], probe: np.ndarray) -> None:
        pass

    def search(self, vector: np.ndarray, k: int, after: Token | None = None) -> list[int]:
        return self.index.search(vector[None, :], k)[1][0].tolist()

    def stop(self) -> None:
        self.index.reset()


# -- streamsearch --------------------------------------------------------------------------------


class Streamsearch:
    """A local flow on a fresh broker; one Client writes, another searches (threads share it)."""

    upserts = True

    def __init__(self, flow_yaml: str, shards: int, broker: str, peaks: ProcessTreePeaks,
                 broker_warm_up: int = 0) -> None:
        """:param peaks: the run's RSS watch: sampled before the flow stops, started over after a warm-up.
        :param broker_warm_up: vectors a throwaway copy of the flow inserts on a fresh Apache Kafka broker before the
            timed flow starts (``setup.warm_broker``); 0: the timed flow meets a JVM that has compiled nothing.
            Tansu, not a JVM, is never warmed up."""
        self.broker_warm_up = broker_warm_up if broker == "kafka" else 0
        self.peaks = peaks
        spec = yaml.safe_load(flow_yaml)
        spec["stages"]["index"]["shards"] = shards
        self.flow_yaml = yaml.safe_dump(spec, sort_keys=False)
        self.name = f"streamsearch {spec['name']}, {broker_label(broker)}, {shards} shard{'s' * (shards > 1)}"
        self.broker = broker
        self._stack = ExitStack()

    def start(self) -> float:
        state = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="peers-bench-")))
        self._stack.enter_context(fresh_broker(self.broker))
        if self.broker_warm_up:
            print(f"  broker warmed up in {warm_broker(self.flow_yaml, self.broker_warm_up):.1f} s", file=sys.stderr)
            self.peaks.restart()  # the warm-up's stages and peaks are not the timed flow's
        runtime = flow_runtime(state, self.flow_yaml)
        started = time.perf_counter()
        self._stack.enter_context(runtime)
        self.writer = self._stack.enter_context(runtime.client())
        self.reader = self._stack.enter_context(runtime.client())
        runtime.wait_ready(self.reader, timeout=300)  # a vector probe in a flow without a model
        return time.perf_counter() - started

    def insert(self, ids: np.ndarray, vectors: np.ndarray, *, upsert: bool = False) -> Token:
        return self.writer.index(Document(id=f"v{i}", embedding=v) for i, v in zip(ids, vectors))

    def wait_searchable(self, tokens: Sequence[Token], probe: np.ndarray) -> None:
        self._search(probe, 1, reduce(lambda a, b: a.merge(b), tokens), timeout_s=300)

    def search(self, vector: np.ndarray, k: int, after: Token | None = None) -> list[int]:
        return self._search(vector, k, after)

    def _search(self, vector: np.ndarray, k: int, after: Token | None, timeout_s: float = 10) -> list[int]:
        reply = self.reader.search(vectors=vector[None, :], top_k=k, after=after, timeout_s=timeout_s)
        if reply.partial or reply.stale_shards or reply.errors:
            raise RuntimeError(f"{self.name}: incomplete reply: {reply.errors or reply.stale_shards}")
        return [int(match.id[1:]) for match in reply.docs[0].matches]

    def stop(self) -> None:
        self.peaks.sample()  # the stages' last RSS readings
        self._stack.close()


# -- peers in child processes --------------------------------------------------------------------


class NotInstalled(Exception):
    """A peer that cannot be installed here; the message says why."""


@dataclass(frozen=True)
class ChildPeer:
    """A peer run as ``python SCRIPT DATA_DIR`` under its own interpreter."""

    script: str
    module: str
    """Imported by the script: when this interpreter has it, the child runs under this one."""
    requirements: tuple[str, ...]
    """What the virtualenv ``.bench/<name>`` gets otherwise."""
    own_venv: bool = False
    """Always in the virtualenv: it cannot be installed beside the project."""


def bench_extra_peers() -> tuple[str, ...]:
    """The peers the ``bench`` extra of pyproject.toml installs beside the project (one declaration)."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return tuple(r for r in extras["bench"] if not r.startswith("streamsearch"))


CHILD_PEERS = {
    "milvus": ChildPeer("peer_milvus.py", "pymilvus", (*bench_extra_peers(), "numpy")),
    "jina": ChildPeer("peer_jina.py", "jina", (
        "jina==3.34.0", "numpy",
        # one coherent OpenTelemetry release: without these pins pip's resolver gives up on jina 3.34
        "opentelemetry-api==1.27.0", "opentelemetry-sdk==1.27.0", "opentelemetry-exporter-otlp==1.27.0",
        "opentelemetry-exporter-otlp-proto-grpc==1.27.0", "opentelemetry-exporter-prometheus==0.48b0",
        "opentelemetry-instrumentation==0.48b0", "opentelemetry-instrumentation-grpc==0.48b0",
        "opentelemetry-instrumentation-fastapi==0.48b0", "opentelemetry-instrumentation-aiohttp-client==0.48b0"),
        own_venv=True),
}


def interpreter(name: str) -> str:
    """This interpreter when it has the peer, else its virtualenv's, made on first use.

    :raises NotInstalled: with pip's error line, when the virtualenv cannot be made.
    """
    peer = CHILD_PEERS[name]
    if not peer.own_venv and importlib.util.find_spec(peer.module) is not None:
        return sys.executable
    venv = VENVS / name
    python, installed = venv / "bin" / "python", venv / "installed.txt"
    wanted = "\n".join(peer.requirements)
    if python.exists() and installed.exists() and installed.read_text() == wanted:
        return str(python)
    print(f"{name}: installing {' '.join(peer.requirements[:2])} into {venv}", file=sys.stderr, flush=True)
    for command in ([sys.executable, "-m", "venv", str(venv)],
                    [str(python), "-m", "pip", "install", "-q", *peer.requirements]):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise NotInstalled(last_error(done.stderr) or f"{command[0]} exited {done.returncode}")
    installed.write_text(wanted)
    return str(python)


def last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR") or "Error" in line]
    return (errors or lines or [""])[-1][:300]


def run_child(name: str, folder: Path) -> Figures:
    """The peer's figures from its child process (RSS and load are the caller's to measure).

    :raises NotInstalled: if its interpreter cannot be had; :raises RuntimeError: if the run failed.
    """
    python = interpreter(name)
    done = subprocess.run([python, str(BENCHMARKS / CHILD_PEERS[name].script), str(folder)],
                          capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{name} failed (exit {done.returncode}): {last_error(done.stderr + done.stdout)}")
    return Figures.from_json(lines[-1])


# -- the run -------------------------------------------------------------------------------------


def run_system(run: Callable[[ProcessTreePeaks], Figures]) -> Figures:
    """``run`` under a fresh peak-RSS watch of this process tree; the load average around it."""
    with ProcessTreePeaks() as peaks:
        figures = run(peaks)
    figures.rss_mib, figures.rss_by_role = peaks.total_mib(), peaks.by_role_mib()
    figures.load_before, figures.load_after = peaks.load_at_start, os.getloadavg()[0]
    return figures


def runs(args: argparse.Namespace, data: Dataset, workload: Workload, folder: Path
         ) -> list[tuple[str, Callable[[ProcessTreePeaks], Figures]]]:
    """(system, run) in the order asked for; streamsearch as one run per flow, shard count and broker."""
    out: list[tuple[str, Callable[[ProcessTreePeaks], Figures]]] = []
    in_process = {"numpy": NumpyExact, "faiss": FaissFlat}
    for system in args.systems:
        if system in in_process:
            out.append((system, lambda _, make=in_process[system]: measure(make(), data, workload)))
        elif system in CHILD_PEERS:
            out.append((system, lambda _, name=system: run_child(name, folder)))
        else:
            for flow_yaml in args.flow:
                for kind in broker_kinds(args.broker):
                    for shards in args.shards:
                        out.append((system, lambda peaks, f=flow_yaml, s=shards, b=kind: measure(
                            Streamsearch(f, s, b, peaks, args.broker_warm_up), data, workload)))
    return out


def optional(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def row(f: Figures) -> list[str]:
    found = "-" if f.found_p50_ms is None else f"{f.found_p50_ms:.1f} / {f.found_p99_ms:.1f}" + (
        f" ({f.found_missed} missed)" if f.found_missed else "")
    during = "-" if f.ingest_query_p99_ms is None else (
        f"{f.ingest_query_p99_ms:.1f} ({f.ingest_queries} q; inserting {f.inserting_query_p99_ms:.1f}, "
        f"{f.inserting_queries} q)")
    return [optional(f.startup_s, "{:.2f}"), f"{f.insert_per_s:,.0f}", f"{f.searchable_s:.2f}",
            f"{f.searchable_per_s:,.0f}",
            f"{f.query_p50_ms:.2f} / {f.query_p99_ms:.2f}", f"{f.recall:.4f}",
            f"{f.max_qps:,.0f} ({f.qps_clients}) {f.qps_recall:.4f}", during, found,
            f"{f.rss_mib:,.0f}", f"{f.load_before:.2f} → {f.load_after:.2f}"]


RATIOS: tuple[tuple[str, Callable[[Figures], float | None]], ...] = (
    ("start-up", lambda f: f.startup_s),
    ("insert vec/s", lambda f: f.insert_per_s),
    ("all searchable after", lambda f: f.searchable_s),
    ("searchable vec/s", lambda f: f.searchable_per_s),
    ("query p50", lambda f: f.query_p50_ms),
    ("query p99", lambda f: f.query_p99_ms),
    ("max QPS", lambda f: f.max_qps),
    ("query p99 during ingest", lambda f: f.ingest_query_p99_ms),
    ("write→found p50", lambda f: f.found_p50_ms),
    ("peak RSS", lambda f: f.rss_mib),
)


def ratio(peer: float | None, reference: float | None) -> str:
    if peer is None or reference is None:
        return "-"
    if not reference:
        return "∞"
    value = peer / reference
    return f"{value:,.0f}×" if value >= 100 else f"{value:.3g}×"  # 0.000123×, 2.67×, 1,234×


def report(args: argparse.Namespace, results: list[Figures], failures: list[str], load_at_start: float) -> None:
    k = args.top_k
    print(f"machine: {machine()}; load average (1 min) at start {load_at_start:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"workload: {args.docs:,} random unit {DIM}-d float32 vectors inserted in batches of {args.batch:,}, each "
          f"acknowledged; {args.queries:,} sequential top-{k} vector queries after {args.warm_up:,} untimed ones; concurrency {args.concurrency} ({args.qps_queries} queries each); "
          f"bulk re-upsert of {args.bulk:,} during queries; write→found {args.freshness} samples at 20/s; "
          "one system at a time, each fresh" + ("" if args.broker == "tansu" else (
              f" (an Apache Kafka broker warmed up first by {args.broker_warm_up:,} vectors through a throwaway flow, "
              "its topics then deleted)" if args.broker_warm_up else
              " (an Apache Kafka broker too: its JVM has compiled nothing)")))
    for line in failures:
        print(line)
    columns = ["start-up s", "insert vec/s", "all searchable after s", "searchable vec/s (end to end)",
               "query p50 / p99 ms", f"recall@{k}",
               f"max QPS (clients) recall@{k}", "query p99 during bulk ingest ms", "write→found p50 / p99 ms",
               "peak RSS MiB (all processes)", "load avg before → after"]
    print(markdown_table(columns, [(f.system, row(f)) for f in results]))
    for f in results:
        if len(f.rss_by_role) > 1:
            served = sum(mib for role, mib in f.rss_by_role.items() if role != "benchmark")
            print(f"peak RSS of {f.system}: " + ", ".join(f"{role} {mib:,.0f}" for role, mib in f.rss_by_role.items())
                  + f"; without this benchmark's process (the client, holding the vectors): {served:,.0f}")
    reference = next((f for f in results if f.system.startswith("streamsearch")), None)
    others = [f for f in results if f is not reference]
    if reference is not None and others:
        print(f"\nratio of each system's figure to {reference.system}'s (above 1: more vec/s or QPS, "
              "or more seconds, ms, MiB)")
        print(markdown_table([name for name, _ in RATIOS],
                             [(f.system, [ratio(get(f), get(reference)) for _, get in RATIOS]) for f in others]))


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000, help="documents per acknowledged insert")
    parser.add_argument("--systems", type=lambda text: text.split(","), default=list(SYSTEMS),
                        help=f"comma-separated, in order: {','.join(SYSTEMS)}")
    parser.add_argument("--flow", type=Path, action="append",
                        help="a streamsearch flow YAML (repeat for several rows; default: the flow without a model, then the encoder flow of benchmarks/vectors.py)")
    parser.add_argument("--shards", type=integers, default=[1, 2], help="streamsearch index shards, e.g. 1,2")
    parser.add_argument("--broker", choices=BROKER_CHOICES, default="kafka")
    parser.add_argument("--concurrency", type=integers, default=[1, 2, 4, 8, 16, 32], help="client threads")
    parser.add_argument("--qps-queries", type=int, default=200, help="queries per concurrency level")
    parser.add_argument("--bulk", type=int, help="documents re-upserted while querying (default: --docs; 0 skips)")
    parser.add_argument("--freshness", type=int, default=200, help="write→found samples")
    parser.add_argument("--broker-warm-up", type=int, default=100_000,
                        help="streamsearch: vectors a throwaway flow inserts on the fresh broker before the timed one "
                             "starts, as a broker in production has run before (0: a cold JVM)")
    parser.add_argument("--warm-up", type=int, default=WARM_UP_QUERIES,
                        help="untimed queries before the sequential ones, every system alike")
    args = parser.parse_args()
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}: choose from {','.join(SYSTEMS)}")
    args.flow = [path.read_text() for path in args.flow] if args.flow else [NO_MODEL_FLOW_YAML, VECTOR_FLOW_YAML]
    args.bulk = args.docs if args.bulk is None else args.bulk
    return args


def main() -> None:
    args = parse_args()
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every figure
    workload = Workload(top_k=args.top_k, batch=args.batch, concurrency=tuple(args.concurrency),
                        qps_queries=args.qps_queries, freshness_samples=args.freshness, bulk=args.bulk,
                        warm_up=args.warm_up)
    vectors, queries = unit_vectors(args.docs, seed=1), unit_vectors(args.queries, seed=2)
    data = Dataset(vectors, queries, exact_top(vectors, queries, args.top_k))
    results, failures = [], []
    with tempfile.TemporaryDirectory(prefix="peers-data-") as folder:
        data.save(Path(folder))
        workload.save(Path(folder) / "workload.json")
        for system, run in runs(args, data, workload, Path(folder)):
            print(f"running {system} ...", file=sys.stderr, flush=True)
            try:
                results.append(run_system(run))
            except NotInstalled as exc:
                failures.append(f"{system}: not installed ({exc})")
            except Exception as exc:  # noqa: BLE001 - one system's failure is a line of the report
                failures.append(f"{system}: failed ({type(exc).__name__}: {exc})")
    report(args, results, failures, load_at_start)


if __name__ == "__main__":
    main()
