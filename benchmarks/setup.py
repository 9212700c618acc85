"""What the benchmarks share: the SciFact texts, the flows they run, the brokers they run on, the
random vector workload, RSS readings and the machine.

Importing it needs numpy and the standard library only (streams.resources is stdlib): the peers'
benchmarks run parts of it under other virtualenvs (``benchmarks/peers.py``)."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.resources import EXAMPLE_FLOWS  # noqa: E402


def shared_data(name: str) -> Path:
    """A BEIR corpus of the project's shared data: ``shared/data/<name>`` in the nearest folder above the
    checkout that has it (a clone need not sit right beside ``shared/``)."""
    for parent in ROOT.parents:
        if (parent / "shared" / "data" / name).is_dir():
            return parent / "shared" / "data" / name
    return ROOT.parent / "shared" / "data" / name  # load_beir then names what is missing


SCIFACT = shared_data("scifact")
FLOW = EXAMPLE_FLOWS / "beir.yml"


def scifact(limit: int):  # type: ignore[no-untyped-def]
    """The first ``limit`` SciFact documents (title + text) and the test queries."""
    from streams.demo.corpora import load_beir

    dataset = load_beir(SCIFACT)
    return dataset.corpus[:limit], list(dataset.queries.values())


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size of this process (or of its largest finished child), in MiB. This process's own
    from ``VmHWM`` where ``/proc`` has it: ``ru_maxrss`` survives ``exec``, so a child started by a large parent
    would report the parent's peak."""
    own = None if children else _status_kib("self", "VmHWM")
    if own is not None:
        return own / 1024
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def machine() -> str:
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return (f"{model}, nproc {len(os.sched_getaffinity(0))} ({os.cpu_count()} cores), "
            f"Python {platform.python_version()}")


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of latencies in seconds, in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


# -- pre-embedded vectors ------------------------------------------------------------------------

DIM = 384
VECTOR_FLOW_YAML = """\
name: vectors
stages:
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [r]}
  index:
    uses: CompoundIndexer
    with: {dim: 384, metric: inner_product}
    ranker: {uses: Chunk2DocRanker, with: {aggregation: max, keep_chunks: 0}}
    shards: 2
  join: {}
search:
  top_k: 10
  chunk_oversample: 1
  timeout_s: 10
"""
"""The flow for pre-embedded documents: no segmenter; the encoder is present but skipped (every
document and query carries its vector, so the model is never called, though the stage loads it at
start as always); a flat inner-product index."""


NO_MODEL_FLOW_YAML = VECTOR_FLOW_YAML.replace("name: vectors", "name: nomodel").replace(
    "  encode:\n    uses: TransformerEncoder\n    with: {traversal_paths: [r]}\n", "")
"""The same index without a model (no ``stages.encode``): documents go from ingest straight to the
shards, the join stage fans queries out, and no process loads torch."""


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids per query by inner product (numpy, in blocks of 100 queries)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 100):
        scores = queries[start : start + 100] @ vectors.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + 100] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at(found: Sequence[Sequence[int]], exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(e[:k].tolist())) / k for f, e in zip(found, exact)]))


def flow_runtime(state: Path, flow_yaml: str):  # type: ignore[no-untyped-def]
    """A LocalRuntime (not started) for ``flow_yaml``, written to ``state``/flow.yml, its stage state
    under ``state``; it runs on the broker KAFKA_BOOTSTRAP_SERVERS names (``fresh_broker``)."""
    from streams.flow.parse import load_flow
    from streams.local.runtime import LocalRuntime

    flow_path = state / "flow.yml"
    flow_path.write_text(flow_yaml)
    return LocalRuntime(load_flow(flow_path), flow_path=flow_path, state_dir=state)


# -- brokers -------------------------------------------------------------------------------------

BROKER_CHOICES = ("kafka", "tansu", "both")


def broker_kinds(choice: str) -> list[str]:
    """``--broker kafka|tansu|both`` -> the brokers to run on, in order."""
    return ["kafka", "tansu"] if choice == "both" else [choice]


def broker_label(kind: str) -> str:
    from streams.local.apache_kafka import KAFKA_VERSION

    return f"Apache Kafka {KAFKA_VERSION}" if kind == "kafka" else "Tansu (memory-only)"


@contextmanager
def fresh_broker(kind: str) -> Iterator[str]:
    """A new broker of this kind on loopback, with KAFKA_BOOTSTRAP_SERVERS pointing at it (so a
    LocalRuntime uses it and starts none of its own); stopped and the variable restored after.
    Yields the bootstrap servers."""
    from streams.local.brokers import start_local_broker

    if kind == "kafka":
        from streams.local.apache_kafka import install_kafka

        install_kafka()  # a no-op after `make install`
    previous = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as data:
        _, broker = start_local_broker(kind, Path(data))
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
        try:
            yield broker.bootstrap_servers
        finally:
            broker.stop()
            if previous is None:
                os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
            else:
                os.environ["KAFKA_BOOTSTRAP_SERVERS"] = previous


BROKER_WARM_UP_BATCH = 1000
"""Vectors per acknowledged insert of ``warm_broker``: the workload's own batches."""


def warm_broker(flow_yaml: str, vectors: int, queries: int = 300) -> float:
    """Run a throwaway copy of ``flow_yaml`` (another name, its own state) on the broker ``fresh_broker`` started:
    ``vectors`` 384-d vectors under as many ids (10,000 random ones, repeated) inserted in acknowledged batches
    until all are searchable, then ``queries`` sequential searches; then stop it and delete its topics. Why: a
    broker in production has been running for days, and a fresh JVM spends its first minute compiling its hot paths
    (``insert_cpu.py``: 9-10 us of the broker's CPU a vector in a fresh round, 3-4 once warm; its compiler took a
    third of a core during the first bulk), and its first idempotent producer waits ~0.5 s for the transaction
    coordinator to load; a benchmark that means to measure the flow, not the broker's start, warms the broker
    first. The timed flow then starts with fresh stages and state. Returns the seconds it took."""
    import yaml

    from processors.document import Document
    from streams.kafka.admin import delete_topics

    started = time.perf_counter()
    spec = yaml.safe_load(flow_yaml)
    spec["name"] = f"{spec['name']}-warm-up"
    data = unit_vectors(max(min(vectors, 10_000), 1), seed=99)  # ids new, vectors repeated: little memory here
    with tempfile.TemporaryDirectory(prefix="broker-warm-up-") as state:
        runtime = flow_runtime(Path(state), yaml.safe_dump(spec, sort_keys=False))
        with runtime, runtime.client() as client:
            runtime.wait_ready(client, timeout=300)
            receipt = None
            for start in range(0, vectors, BROKER_WARM_UP_BATCH):
                written = client.index(Document(id=f"w{i}", embedding=data[i % len(data)])
                                       for i in range(start, min(start + BROKER_WARM_UP_BATCH, vectors)))
                receipt = written if receipt is None else receipt.merge(written)
            client.search(vectors=data[:1], top_k=1, after=receipt, timeout_s=300)
            for i in range(queries):
                client.search(vectors=data[i % len(data)][None, :], top_k=10)
        delete_topics(runtime.settings, [shape.name for shape in runtime.flow.topics.shapes()])
    return time.perf_counter() - started

# -- peak RSS of a process tree ------------------------------------------------------------------


def _status_kib(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def children_of() -> dict[int, list[int]]:
    """Every process's children by parent pid, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree() -> Iterator[int]:
    """This process's pid, then every descendant's, each once (from ``/proc`` as it is now)."""
    tree, todo, seen = children_of(), [os.getpid()], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(tree.get(pid, []))
        yield pid


def process_role(pid: int) -> str:
    """What a process of a benchmark's tree is: this benchmark, the broker, ``stage <name>``, or other."""
    if pid == os.getpid():
        return "benchmark"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "other"
    line = b" ".join(argv)
    if b"kafka.Kafka" in line or b"tansu" in line or b" broker --listener-url" in line:
        return "broker"
    if b"streams.cli run" in line and b"--stage" in argv:
        return f"stage {argv[argv.index(b'--stage') + 1].decode()}"
    return "other"


# -- CPU seconds of a process tree --------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


BROKER_THREADS = (("JIT compiler", ("C1 CompilerThre", "C2 CompilerThre", "Sweeper thread")),
                  ("garbage collector", ("GC Thread", "G1 ")),
                  ("network and request handlers", ("data-plane-kafk",)))
"""The broker's (a JVM's) threads by what they do, from their names in ``/proc/<pid>/task/*/comm``;
the rest counts as ``other``. A fresh JVM spends much of its first minutes compiling its hot paths."""

STAGE_THREADS = (("RocksDB", ("rocksdb:",)), ("librdkafka", ("rdk:",)))
"""A stage's threads by the library that runs them (RocksDB's flushes and compactions, librdkafka's fetchers); the
rest, ``other``, are Python's: the loop's main thread above all."""


def cpu_seconds(stat_path: str) -> float | None:
    """User + system CPU seconds from a ``/proc`` ``stat`` file (a process's or a thread's); None if it is gone."""
    try:
        with open(stat_path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None  # exited meanwhile
    return (int(fields[11]) + int(fields[12])) / _TICKS


ThreadGroups = tuple[tuple[str, tuple[str, ...]], ...]


def thread_groups(role: str) -> ThreadGroups:
    """The thread groups a role's figures are split by: the broker's, a stage's, or none."""
    return BROKER_THREADS if role == "broker" else STAGE_THREADS if role.startswith("stage ") else ()


def _group_of(name: str, groups: ThreadGroups) -> str:
    """The group of a thread by its name (``/proc/<pid>/task/<tid>/comm``); ``other`` if none claims it."""
    return next((label for label, prefixes in groups if name.startswith(prefixes)), "other")


def _start_time(stat: str) -> str:
    """A process's or thread's start time (field 22 of its ``stat``): with its id, it names one across readings."""
    return stat.rsplit(")", 1)[1].split()[19]


def cpu_seconds_by_role() -> dict[str, float]:
    """User + system CPU seconds of this process and its descendants now, summed by role; the broker's and
    each stage's also by thread group (``<role>: <group>``, ``BROKER_THREADS``, ``STAGE_THREADS``)."""
    by_role: dict[str, float] = {}
    for pid in process_tree():
        seconds = cpu_seconds(f"/proc/{pid}/stat")
        if seconds is None:
            continue
        role = process_role(pid)
        by_role[role] = by_role.get(role, 0.0) + seconds
        groups = thread_groups(role)
        if groups:
            for group, threads in _threads_by_group(pid, groups).items():
                by_role[f"{role}: {group}"] = by_role.get(f"{role}: {group}", 0.0) + threads
    return by_role


def _threads_by_group(pid: int, groups_of: ThreadGroups) -> dict[str, float]:
    groups: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        seconds = cpu_seconds(str(task / "stat"))
        if seconds is None:
            continue
        group = _group_of(name, groups_of)
        groups[group] = groups.get(group, 0.0) + seconds
    return groups


def _run_queue_seconds(task: Path) -> float | None:
    """Seconds a thread has waited runnable for a core: the second field of its ``schedstat`` (ns)."""
    try:
        return int((task / "schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None  # exited meanwhile, or a kernel without schedstats


RunQueueReading = dict[tuple[int, str, str], tuple[tuple[str, ...], float]]
"""Per thread, keyed by (pid, tid, its start time): the role and thread group it counts under, and the seconds it
has waited runnable for a core so far (``run_queue_seconds``)."""


def run_queue_seconds() -> RunQueueReading:
    """Each thread of this process and its descendants now: the seconds it has waited runnable for a core, and where
    it counts (its role and, for the broker and each stage, ``<role>: <group>``, as ``cpu_seconds_by_role``)."""
    reading: RunQueueReading = {}
    for pid in process_tree():
        role = process_role(pid)
        groups = thread_groups(role)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                started = _start_time((task / "stat").read_text())
            except (OSError, IndexError):
                continue
            seconds = _run_queue_seconds(task)
            if seconds is None:
                continue
            group = _group_of(name, groups)
            reading[(pid, task.name, started)] = ((role, f"{role}: {group}") if groups else (role,), seconds)
    return reading


def run_queue_seconds_between(earlier: RunQueueReading, later: RunQueueReading) -> dict[str, float]:
    """Seconds the threads waited runnable for a core between two readings, by role and thread group. A thread in
    both counts its difference, one started meanwhile all of it; one that exited meanwhile is missing (its wait
    since the earlier reading is unknown), unlike its CPU, which ``/proc/<pid>/stat`` keeps."""
    by_role: dict[str, float] = {}
    for thread, (roles, seconds) in later.items():
        waited = seconds - earlier[thread][1] if thread in earlier else seconds
        for role in roles:
            by_role[role] = by_role.get(role, 0.0) + waited
    return by_role


def _clear_peak_rss(pid: int) -> bool:
    """Reset a process's VmHWM to its RSS now; False where the kernel refuses (another user's process)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ProcessTreePeaks:
    """Peak RSS of this process and all its descendants, sampled every ``interval`` s while
    running. At each sample the processes alive then are summed, each at its VmHWM so far (VmHWM
    only grows: an upper bound of what it held at that moment); the peak is the largest such sum,
    split by role (benchmark, broker, stage <name>, other) as at that sample. Processes that never
    run at the same time are not added up: Apache Kafka's storage format step is a JVM of ~120 MiB
    that exits before the broker starts. A process that exits between two samples is counted with
    its VmHWM at the last one. Entering it resets this process's own VmHWM (``/proc/self/clear_refs``)
    so that an earlier phase of the same run is not counted."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peaks: dict[tuple[int, str], tuple[str, int]] = {}  # (pid, start time) -> (role, KiB)
        self._peak_roles: dict[str, int] = {}  # KiB by role at the sample whose sum was the largest
        self.self_reset = False
        self.load_at_start = os.getloadavg()[0]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "ProcessTreePeaks":
        self.self_reset = _clear_peak_rss(os.getpid())
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def restart(self) -> None:
        """Start over from now, as if entered now: what ran before (a broker's warm-up, ``warm_broker``) is not
        counted, neither its processes that exited nor the peaks of those still running (their VmHWM is reset to
        what they hold now, ``/proc/<pid>/clear_refs``); the load average at start is read again (its 1-minute figure still
        shows what ran before)."""
        with self._lock:
            for pid in process_tree():
                _clear_peak_rss(pid)
            self.peaks.clear()
            self._peak_roles = {}
            self.load_at_start = os.getloadavg()[0]
        self.sample()

    def sample(self) -> None:
        """Read VmHWM of every process in the tree now (call it before stopping processes too)."""
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        alive: dict[str, int] = {}
        for pid in process_tree():
            hwm = _status_kib(pid, "VmHWM")
            if hwm is None:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    started = _start_time(f.read())
            except (OSError, IndexError):
                continue
            key = (pid, started)
            role = self.peaks[key][0] if key in self.peaks else process_role(pid)
            self.peaks[key] = (role, max(hwm, self.peaks.get(key, (role, 0))[1]))
            alive[role] = alive.get(role, 0) + self.peaks[key][1]
        if sum(alive.values()) > sum(self._peak_roles.values()):
            self._peak_roles = alive

    def by_role_mib(self) -> dict[str, float]:
        """The peak (:meth:`total_mib`) by role, MiB."""
        return {role: kib / 1024 for role, kib in sorted(self._peak_roles.items())}

    def total_mib(self) -> float:
        """The largest sum over the processes alive at one sample, MiB."""
        return sum(self._peak_roles.values()) / 1024


def markdown_table(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A markdown table: the first column names the row, then one column per ``columns``."""
    widths = [max(len(name) for name, _ in rows)] + [
        max(len(col), *(len(values[i]) for _, values in rows)) for i, col in enumerate(columns)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"
    out = [line(["", *columns]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([name, *values]) for name, values in rows]
    return "\n".join(out)
