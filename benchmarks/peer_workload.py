"""The peers' workload (``benchmarks/peers.py``), the same for every system, through the small
``System`` protocol: insert in acknowledged batches, wait until all is searchable, sequential
queries with recall, concurrent clients, queries during a bulk ingest, write->found.

Needs numpy and the standard library only: milvus-lite and Jina run it in their own virtualenvs
(``peer_milvus.py``, ``peer_jina.py``) and print its ``Figures`` as JSON.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from setup import DIM, percentiles, recall_at, unit_vectors

__all__ = ["WARM_UP_QUERIES", "Dataset", "ExactIndex", "Figures", "System", "Workload", "child_main", "measure",
           "warm_up_queries"]

WARM_UP_QUERIES = 1000
"""Untimed queries before the timed ones, for every system alike. A fresh broker's JVM is still compiling
its hot paths (its C2 compiler thread took 10 % of a core 40 s into a run): 2 shards on Apache Kafka,
100,000 vectors, 300 queries, runs in turns on one machine, end to end p50 13.8-14.0 ms after 20
warm-up queries, 7.5-11.5 ms after 2,000 (``query_hops.py``, 2026-12-05)."""

Token = Any
"""What an acknowledged insert returns, for a read-your-writes search (a receipt; None where every
acknowledged write is searchable at once)."""


@dataclass(frozen=True)
class Workload:
    """The knobs of one run, the same for every system (a child reads them from ``workload.json``)."""

    top_k: int = 10
    batch: int = 1000
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    qps_queries: int = 200
    """Queries per concurrency level (the first ones of the set): a level of 1,000 takes milvus-lite
    minutes at 100,000 vectors, and 200 already fill 32 clients several times over."""
    freshness_samples: int = 200
    freshness_per_s: float = 20.0
    bulk: int = 0
    """Documents re-upserted while queries run (query p99 during a bulk ingest); 0 skips it."""
    warm_up: int = WARM_UP_QUERIES
    """Queries asked and not timed before the sequential ones: steady state, not a cold start, is what
    a running system serves (``WARM_UP_QUERIES``)."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Workload:
        raw = json.loads(path.read_text())
        return cls(**{**raw, "concurrency": tuple(raw["concurrency"])})


@dataclass
class Figures:
    """One system's row. None: not measured for this system (printed as "-")."""

    system: str
    startup_s: float | None = None
    insert_per_s: float = 0.0
    searchable_s: float = 0.0
    searchable_per_s: float = 0.0
    """Vectors over the seconds from the first insert until all are searchable: issue 17's "end to end"."""
    query_p50_ms: float = 0.0
    query_p99_ms: float = 0.0
    recall: float = 0.0
    max_qps: float = 0.0
    qps_clients: int = 0
    qps_recall: float = 0.0
    ingest_query_p99_ms: float | None = None
    """Over the whole bulk: from its first insert until all of it is searchable."""
    ingest_queries: int = 0
    inserting_query_p99_ms: float | None = None
    """Over the queries that ran while the client was still inserting (the figure before 2026-12-07)."""
    inserting_queries: int = 0
    found_p50_ms: float | None = None
    found_p99_ms: float | None = None
    found_missed: int = 0
    rss_mib: float = 0.0
    rss_by_role: dict[str, float] = field(default_factory=dict)
    load_before: float = 0.0
    load_after: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Figures:
        return cls(**json.loads(text))


class System(Protocol):
    """A search system under test. ``search`` may be called from several threads at once, and while
    another thread inserts when ``upserts`` (a re-insert of an existing id replaces it)."""

    name: str
    upserts: bool

    def start(self) -> float:
        """Start in a fresh state; return the seconds until the first insert could start (or, for a
        flow, until it answers)."""

    def insert(self, ids: np.ndarray, vectors: np.ndarray, *, upsert: bool = False) -> Token:
        """Write one batch and return once the system acknowledged it."""

    def wait_searchable(self, tokens: Sequence[Token], probe: np.ndarray) -> None:
        """Return once every acknowledged write in ``tokens`` is searchable."""

    def search(self, vector: np.ndarray, k: int, after: Token | None = None) -> list[int]:
        """The ids of the top ``k`` by inner product; with ``after``, reading that write."""

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Dataset:
    vectors: np.ndarray
    queries: np.ndarray
    exact: np.ndarray
    """Exact top-k ids of each query (numpy), for recall."""

    def save(self, folder: Path) -> None:
        for name in ("vectors", "queries", "exact"):
            np.save(folder / f"{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path) -> Dataset:
        return cls(*(np.load(folder / f"{name}.npy") for name in ("vectors", "queries", "exact")))


class ExactIndex:
    """Exact inner-product search over one growing float32 matrix, row = id (ids are small integers):
    what the numpy peer and the Jina executor hold. A search during an upsert from another thread
    sees the rows before or after it."""

    def __init__(self) -> None:
        self.rows, self.count = np.empty((0, DIM), dtype=np.float32), 0

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        end = int(ids.max()) + 1
        if end > len(self.rows):
            grown = np.empty((max(end, 2 * len(self.rows)), DIM), dtype=np.float32)
            grown[: self.count] = self.rows[: self.count]
            self.rows = grown
        self.rows[ids] = vectors
        self.count = max(self.count, end)

    def top(self, vector: np.ndarray, k: int) -> list[int]:
        rows = self.rows  # one reading: a concurrent upsert may replace it
        scores = rows[: min(self.count, len(rows))] @ vector
        best = np.argpartition(-scores, k)[:k]
        return best[np.argsort(-scores[best])].tolist()


def warm_up_queries(count: int) -> np.ndarray:
    """``count`` random unit vectors, none of them a timed query (a system that cached answers would
    otherwise be timed on its cache)."""
    return unit_vectors(count, seed=12345)


def batches(n: int, size: int, start: int = 0) -> Iterator[np.ndarray]:
    for first in range(start, start + n, size):
        yield np.arange(first, min(first + size, start + n))


def measure(system: System, data: Dataset, workload: Workload) -> Figures:
    """Run the whole workload on a started-anew ``system``; stops it at the end."""
    k, vectors, queries = workload.top_k, data.vectors, data.queries
    figures = Figures(system.name, load_before=os.getloadavg()[0])
    try:
        figures.startup_s = system.start()
        started = time.perf_counter()
        tokens = [system.insert(ids, vectors[ids]) for ids in batches(len(vectors), workload.batch)]
        acknowledged = time.perf_counter()
        figures.insert_per_s = len(vectors) / (acknowledged - started)
        system.wait_searchable(tokens, queries[0])
        searchable = time.perf_counter()
        figures.searchable_s = searchable - acknowledged
        figures.searchable_per_s = len(vectors) / (searchable - started)

        for query in warm_up_queries(workload.warm_up):
            system.search(query, k)
        latencies, found = [], []
        for query in queries:
            begun = time.perf_counter()
            found.append(system.search(query, k))
            latencies.append(time.perf_counter() - begun)
        figures.query_p50_ms, figures.query_p99_ms = percentiles(latencies)
        figures.recall = recall_at(found, data.exact, k)

        for clients in workload.concurrency:
            count = min(workload.qps_queries, len(queries))
            qps, recall = concurrent_qps(system, queries[:count], data.exact[:count], k, clients)
            if qps > figures.max_qps:
                figures.max_qps, figures.qps_clients, figures.qps_recall = qps, clients, recall

        if workload.bulk and system.upserts:
            whole, inserting = queries_during_ingest(system, data, workload)
            figures.ingest_query_p99_ms, figures.ingest_queries = whole
            figures.inserting_query_p99_ms, figures.inserting_queries = inserting

        figures.found_p50_ms, figures.found_p99_ms, figures.found_missed = write_to_found(
            system, len(vectors), workload)
    finally:
        system.stop()
    figures.load_after = os.getloadavg()[0]
    return figures


def concurrent_qps(system: System, queries: np.ndarray, exact: np.ndarray, k: int,
                   clients: int) -> tuple[float, float]:
    """All ``queries`` spread over ``clients`` threads: queries per second and recall@k."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        started = time.perf_counter()
        found = list(pool.map(lambda query: system.search(query, k), queries))
        elapsed = time.perf_counter() - started
    return len(queries) / elapsed, recall_at(found, exact, k)


def queries_during_ingest(system: System, data: Dataset,
                          workload: Workload) -> tuple[tuple[float, int], tuple[float, int]]:
    """Sequential queries while another thread re-upserts the first ``bulk`` documents (same ids,
    same vectors: the index keeps its content) and then waits until they are all searchable; p99 in ms and
    the number of queries, over that whole window and over the queries that started while the client was
    still inserting. The window runs to "searchable" because a system that applies behind its inserts is still
    ingesting then, and its queries still share the cores with that work; it also holds about twice the
    queries, for a steadier p99."""
    tokens: list[Token] = []
    failed: list[BaseException] = []
    inserted = threading.Event()

    def ingest() -> None:
        try:
            for ids in batches(min(workload.bulk, len(data.vectors)), workload.batch):
                tokens.append(system.insert(ids, data.vectors[ids], upsert=True))
            inserted.set()
            system.wait_searchable(tokens, data.queries[0])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failed.append(exc)

    writer = threading.Thread(target=ingest, name="bulk-ingest")
    latencies: list[float] = []
    while_inserting = 0
    writer.start()
    queries = data.queries
    while writer.is_alive():
        query = queries[len(latencies) % len(queries)]
        inserting = not inserted.is_set()
        begun = time.perf_counter()
        system.search(query, workload.top_k)
        latencies.append(time.perf_counter() - begun)
        while_inserting += inserting
    writer.join()
    if failed:
        raise failed[0]
    whole = (percentiles(latencies)[1] if latencies else 0.0), len(latencies)
    early = latencies[:while_inserting]  # sequential: the queries begun while inserting come first
    return whole, ((percentiles(early)[1] if early else 0.0), len(early))


def write_to_found(system: System, first_id: int, workload: Workload) -> tuple[float, float, int]:
    """Index one new document, then search for its own vector reading that write; paced at
    ``freshness_per_s``. p50 and p99 in ms from the write to the answer, and how many answers missed
    the document."""
    fresh = np.random.default_rng(3).standard_normal((workload.freshness_samples, DIM), dtype=np.float32)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    period = 1.0 / workload.freshness_per_s
    latencies, missed = [], 0
    next_at = time.perf_counter()
    for i, vector in enumerate(fresh):
        time.sleep(max(0.0, next_at - time.perf_counter()))
        next_at += period
        doc_id = first_id + i
        begun = time.perf_counter()
        token = system.insert(np.array([doc_id]), vector[None, :])
        found = system.search(vector, workload.top_k, after=token)
        latencies.append(time.perf_counter() - begun)
        missed += doc_id not in found
    p50, p99 = percentiles(latencies)
    return p50, p99, missed


def child_main(system: System) -> None:
    """The entry of a peer run in its own virtualenv: ``python peer_X.py DATA_DIR`` reads the
    dataset and ``workload.json`` there and prints the figures as one JSON line."""
    import sys

    folder = Path(sys.argv[1])
    figures = measure(system, Dataset.load(folder), Workload.load(folder / "workload.json"))
    print(figures.to_json(), flush=True)
