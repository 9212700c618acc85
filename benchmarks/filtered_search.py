"""Filtered search in one shard (``CompoundIndexer.search(filter=...)``): recall and latency by selectivity.

Data, synthetic and seeded but not uniform: ``--docs`` 384-d vectors drawn from a mixture of 200 gaussian
clusters (centres random unit vectors, uneven weights from a Dirichlet, each point its centre plus isotropic
noise of norm about 1, then normalised; inner product), and ``--queries`` query vectors drawn from the same
mixture. Each document, one vector, has two filterable tags independent of its vector: ``bucket`` (number,
uniform 0..999) and ``kind`` (keyword, one of 20). Selectivity is the share of documents a filter excludes:

    50 %    {"bucket": {"$lt": 500}}         99 %    {"bucket": {"$lt": 10}}
    90 %    {"bucket": {"$lt": 100}}         99.9 %  {"bucket": 0}
    90 %    {"kind": {"$in": ["k03", "k11"]}}   (a keyword filter)

The documents go through the real shard index (RocksDB in a temporary directory, applies of 1,000
documents), flat then HNSW (``index.build`` once after the load; config defaults M 32, efConstruction 200,
efSearch 128, ``exact_filter_limit`` 5,000). For each index type and filter: recall@10 against the exact
filtered top 10 (numpy over the allowed vectors, ties by id; a hit within 1e-5 of the 10th exact score
counts, a tie in float32 rounding), p50/p99 of one-query searches (top_k 10), and the baseline in the same
run: the unfiltered search of the same index type, asked in turn with every filter for each query so that
all meet the same load. ``answered by`` is the hits' ``op_name``: ``faiss.flat_ip`` is an exact scan. For
HNSW the path the shard did not choose is measured too (``exact_filter_limit`` swapped: the graph walk
with a selector where the shard scans exactly, and the reverse), to show where the limit sits. Last, the
filter alone: ``ScalarIndex.select`` over the same values, and building the FAISS selector of its ids.

Goals (issue 19): recall@10 >= 0.99 at every selectivity (flat: 1.0, and never a document the filter
excludes); p99 at 99 % selectivity <= 2x the unfiltered p99. The run exits 1 if one fails.

    python benchmarks/filtered_search.py [--docs 100000] [--queries 1000] [--index-types flat hnsw]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from setup import DIM, machine, markdown_table, peak_rss_mib, percentiles

from processors.document import Document
from processors.index.base import Change, SearchTuning
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from processors.index.scalar import ScalarIndex
from processors.index.types import INDEX_TYPES
from processors.query.filter import Filter, parse_filter, stored_values
from processors.query.limits import REQUEST_LIMITS
from streams.wire.codec import STORED_DOCUMENT

TOP_K = 10
CLUSTERS = 200
KINDS = [f"k{i:02d}" for i in range(20)]
SCHEMA = {"bucket": "number", "kind": "keyword"}
BATCH = 1000
TIE = 1e-5
"""A hit scoring within this of the 10th exact score counts as found: float32 sums differ in order."""
WARM = 20
UNFILTERED = "none"
GOAL_RECALL, GOAL_FLAT_RECALL, GOAL_P99_RATIO, GOAL_AT = 0.99, 1.0, 2.0, "99 %"

Tags = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """A filter, its selectivity's name and what it allows, computed from the tags by numpy (not by the
    library, whose answer is the thing under test)."""

    selectivity: str
    raw: dict[str, Any] | None
    accepts: Callable[[Tags], np.ndarray]


CASES = [
    Case("0 %", None, lambda t: np.ones(len(t["bucket"]), dtype=np.bool_)),
    Case("50 %", {"bucket": {"$lt": 500}}, lambda t: t["bucket"] < 500),
    Case("90 %", {"bucket": {"$lt": 100}}, lambda t: t["bucket"] < 100),
    Case("99 %", {"bucket": {"$lt": 10}}, lambda t: t["bucket"] < 10),
    Case("99.9 %", {"bucket": 0}, lambda t: t["bucket"] == 0),
    Case("90 %", {"kind": {"$in": ["k03", "k11"]}}, lambda t: np.isin(t["kind"], [3, 11])),
]


@dataclass
class Measured:
    """One (index type, filter, path): per query the hits' row numbers and the latency."""

    found: list[np.ndarray] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    op_names: set[str] = field(default_factory=set)
    excluded_hits: int = 0


def parse(raw: dict[str, Any] | None) -> Filter | None:
    return None if raw is None else parse_filter(raw, max_conditions=REQUEST_LIMITS.max_conditions,
                                                 max_in_items=REQUEST_LIMITS.max_in_items,
                                                 max_depth=REQUEST_LIMITS.max_filter_depth)


def label(case: Case) -> str:
    return "unfiltered" if case.raw is None else f"{case.selectivity} {_compact(case.raw)}"


def _compact(raw: Any) -> str:
    if isinstance(raw, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in raw.items()) + "}"
    return "[" + ", ".join(map(str, raw)) + "]" if isinstance(raw, list) else str(raw)


# -- data ----------------------------------------------------------------------------------------


def mixture(n: int, centres: np.ndarray, weights: np.ndarray, seed: int) -> np.ndarray:
    """``n`` unit vectors: a centre drawn by weight, plus gaussian noise of norm about 1, normalised."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, DIM), dtype=np.float32) / np.float32(np.sqrt(DIM))
    points += centres[rng.choice(len(centres), size=n, p=weights)]
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def workload(docs: int, queries: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Document vectors, query vectors, and the documents' tags (``kind`` as an index into KINDS)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.ones(CLUSTERS))
    tags = {"bucket": rng.integers(0, 1000, docs), "kind": rng.integers(0, len(KINDS), docs)}
    return mixture(docs, centres, weights, seed=1), mixture(queries, centres, weights, seed=2), tags


def document_tags(tags: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    return {"bucket": int(tags["bucket"][i]), "kind": KINDS[tags["kind"][i]]}


def exact_filtered(vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray) -> list[np.ndarray]:
    """Per query the rows of its exact top 10 among the allowed rows, best first, ties by row."""
    out: list[np.ndarray] = []
    subset = vectors[allowed]
    k = min(TOP_K, len(allowed))
    for start in range(0, len(queries), 100):
        scores = queries[start:start + 100] @ subset.T
        wide = min(len(allowed), 2 * k + 10)  # room for ties at the cut, ordered by id below
        part = np.argpartition(-scores, wide - 1, axis=1)[:, :wide] if wide < len(allowed) else \
            np.tile(np.arange(len(allowed)), (len(scores), 1))
        for row, cols in zip(scores, part):
            order = np.lexsort((allowed[cols], -row[cols]))[:k]
            out.append(allowed[cols[order]])
    return out


def recall(found: list[np.ndarray], truth: list[np.ndarray], vectors: np.ndarray, queries: np.ndarray) -> float:
    """Mean over queries of the share of the exact top 10 found; a hit tied with the 10th within TIE counts."""
    shares = []
    for hits, exact, query in zip(found, truth, queries):
        if not len(exact):
            shares.append(1.0 if not len(hits) else 0.0)
            continue
        cut = float(vectors[exact[-1]] @ query) - TIE
        wanted = set(exact.tolist())
        good = sum(1 for row in hits.tolist() if row in wanted or float(vectors[row] @ query) >= cut)
        shares.append(min(good, len(exact)) / len(exact))
    return float(np.mean(shares))


# -- the shard -----------------------------------------------------------------------------------


def load(index: CompoundIndexer, vectors: np.ndarray, tags: dict[str, np.ndarray]) -> float:
    """Apply every document in batches of BATCH; returns the seconds."""
    started = time.perf_counter()
    for start in range(0, len(vectors), BATCH):
        docs = [Document(id=f"d{i:06d}", embedding=vectors[i], tags=document_tags(tags, i))
                for i in range(start, min(start + BATCH, len(vectors)))]
        index.apply(changes=[Change(doc.id, doc) for doc in docs], checkpoint=str(start).encode())
    return time.perf_counter() - started


def other_path(config: CompoundIndexerConfig, allowed: int, docs: int) -> CompoundIndexerConfig:
    """The config under which the shard takes the path it does not take for ``allowed`` vectors: the walk
    (no count, no share scans exactly) where it scans, the scan (every count does) where it walks."""
    exact = allowed <= config.exact_filter_limit or allowed < config.exact_filter_share * docs
    return dataclasses.replace(config, exact_filter_limit=0, exact_filter_share=0.0) if exact else \
        dataclasses.replace(config, exact_filter_limit=docs)


def measure(index: CompoundIndexer, index_type: str, queries: np.ndarray, parsed: list[Filter | None],
            accepted: list[np.ndarray], swapped: list[CompoundIndexerConfig | None]
            ) -> dict[tuple[int, bool], Measured]:
    """Each query asked unfiltered and with every filter in turn (and by the other path where ``swapped``
    gives one), one query per search; keyed by (case number, other path)."""
    base = index.config
    runs: dict[tuple[int, bool], Measured] = {}
    for qi, query in enumerate(np.concatenate([queries[:WARM], queries])):
        for ci, (condition, accepts) in enumerate(zip(parsed, accepted)):
            for other, config in ((False, base), (True, swapped[ci])):
                if config is None:
                    continue
                index.config = config  # a search reads exact_filter_limit from here; nothing else changes
                started = time.perf_counter()
                hits = index.search(embeddings=query[None, :], top_k=TOP_K, index_type=index_type, filter=condition)[0]
                elapsed = time.perf_counter() - started
                index.config = base
                if qi < WARM:
                    continue
                run = runs.setdefault((ci, other), Measured())
                rows = np.array([int(hit.root.id[1:]) for hit in hits], dtype=np.int64)
                run.found.append(rows)
                run.latencies.append(elapsed)
                run.op_names.update(hit.score.op_name for hit in hits)
                run.excluded_hits += int((~accepts[rows]).sum())
    return runs


def filter_alone(parsed: list[Filter | None], tags: dict[str, np.ndarray],
                 repeats: int = 200) -> list[tuple[float, float, float]]:
    """Per filter: median µs of ``ScalarIndex.select`` over the same values as the shard's, of building
    the selector the search uses (``SearchTuning.selector``: a bitmap), and of a hash-set IDSelectorBatch."""
    scalars = ScalarIndex(SCHEMA)  # type: ignore[arg-type]
    for i in range(len(tags["bucket"])):
        scalars.add([i], {name: stored_values(SCHEMA[name], value)  # type: ignore[arg-type]
                          for name, value in document_tags(tags, i).items()})
    out = []
    for condition in parsed:
        if condition is None:
            out.append((0.0, 0.0, 0.0))
            continue
        allowed = scalars.select(condition)
        out.append((_median_us(partial(scalars.select, condition), repeats),
                    _median_us(SearchTuning(allowed=allowed).selector, repeats),
                    _median_us(partial(faiss.IDSelectorBatch, allowed), repeats)))
    return out


def _median_us(work: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--index-types", nargs="+", choices=INDEX_TYPES, default=["flat", "hnsw"])
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    vectors, queries, tags = workload(args.docs, args.queries)
    parsed = [parse(case.raw) for case in CASES]
    accepted = [case.accepts(tags) for case in CASES]
    allowed = [np.flatnonzero(mask) for mask in accepted]
    truth = [exact_filtered(vectors, queries, rows) for rows in allowed]
    config = CompoundIndexerConfig(dim=DIM, filterable=SCHEMA)  # type: ignore[arg-type]
    rows, failures, builds = [], [], []
    with tempfile.TemporaryDirectory(prefix="filtered-search-") as state:
        index = CompoundIndexer(config, path=Path(state), codec=STORED_DOCUMENT)
        index.warm_up()
        builds.append(f"load ({args.docs:,} documents, flat follows) {load(index, vectors, tags):.1f} s")
        for index_type in args.index_types:
            started = time.perf_counter()
            if not index.build(index_type):
                failures.append(f"{index_type}: too few vectors to build it")
                continue
            if index_type != "flat":
                builds.append(f"{index_type} build {time.perf_counter() - started:.1f} s")
            swapped = [other_path(config, len(rows_), args.docs) if index_type != "flat" and case.raw is not None
                       else None for case, rows_ in zip(CASES, allowed)]
            runs = measure(index, index_type, queries, parsed, accepted, swapped)
            base_p99 = percentiles(runs[(0, False)].latencies)[1]
            for (ci, other), run in sorted(runs.items()):
                case = CASES[ci]
                hit_rate = recall(run.found, truth[ci], vectors, queries)
                p50, p99 = percentiles(run.latencies)
                path = ", ".join(sorted(run.op_names)) or "-"
                if other:
                    changed = swapped[ci]
                    assert changed is not None
                    path += f" (exact_filter_limit {changed.exact_filter_limit:,}, share {changed.exact_filter_share:g})"
                rows.append((f"{index_type}{', other path' if other else ''}", [
                    label(case), f"{len(allowed[ci]):,}", path, f"{hit_rate:.4f}", f"{p50:.2f}", f"{p99:.2f}",
                    "-" if case.raw is None else f"{p99 / base_p99:.2f}"]))
                if other:
                    continue  # informational: not the path a shard takes
                wanted = GOAL_FLAT_RECALL if index_type == "flat" else GOAL_RECALL
                if hit_rate < wanted:
                    failures.append(f"{index_type} {label(case)}: recall@10 {hit_rate:.4f} < {wanted}")
                if run.excluded_hits:
                    failures.append(f"{index_type} {label(case)}: {run.excluded_hits} hits the filter excludes")
                if case.selectivity == GOAL_AT and case.raw is not None and p99 > GOAL_P99_RATIO * base_p99:
                    failures.append(f"{index_type} {label(case)}: p99 {p99:.2f} ms > {GOAL_P99_RATIO:g} x "
                                    f"unfiltered p99 {base_p99:.2f} ms")
        index.close()
    alone = filter_alone(parsed, tags)
    load_at_end = os.getloadavg()

    print(f"machine: {machine()}")
    print(f"load average (1/5/15 min): at start {' '.join(f'{x:.2f}' for x in load_at_start)}, "
          f"at end {' '.join(f'{x:.2f}' for x in load_at_end)}")
    print(f"workload: {args.docs:,} documents of one {DIM}-d vector ({CLUSTERS} gaussian clusters, normalised, "
          f"inner product), {args.queries:,} queries of the same mixture one at a time (after {WARM} to warm), "
          f"top_k {TOP_K}; hnsw M {config.hnsw_m} efConstruction {config.hnsw_ef_construction} efSearch "
          f"{config.hnsw_ef_search}; exact_filter_limit {config.exact_filter_limit:,}, exact_filter_share "
          f"{config.exact_filter_share:g}")
    print("; ".join(builds))
    print(markdown_table(["filter (selectivity)", "allowed", "answered by", "recall@10", "p50 ms", "p99 ms",
                          "p99 / unfiltered p99"], rows))
    print()
    print(markdown_table(["allowed", "ScalarIndex.select µs", "bitmap selector µs", "IDSelectorBatch µs"], [
        (label(case), [f"{len(rows_):,}", f"{a:,.0f}", f"{b:,.0f}", f"{c:,.0f}"])
        for case, rows_, (a, b, c) in zip(CASES, allowed, alone) if case.raw is not None]))
    print(f"peak RSS of this process: {peak_rss_mib():,.0f} MiB")
    print(f"goals: recall@10 >= {GOAL_RECALL} at every selectivity (flat {GOAL_FLAT_RECALL}), no hit the filter "
          f"excludes; p99 at {GOAL_AT} selectivity <= {GOAL_P99_RATIO:g} x unfiltered p99")
    print("goals met" if not failures else "GOALS FAILED:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
