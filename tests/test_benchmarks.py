"""The benchmarks run end to end at a small size (no figure is asserted: timings move with the
machine's load). The peers' benchmark with its in-process systems only (the others need a broker, a
model or a virtualenv, and run in the full benchmark); the query hops on their own Apache Kafka broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_peers_prints_a_row_per_system_with_exact_recall() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--docs", "300", "--queries", "20", "--batch", "100",
         "--concurrency", "1,2", "--freshness", "5", "--systems", "numpy,faiss"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"numpy in-process (exact)", "FAISS IndexFlatIP in-process"}, done.stdout
    for line in (rows["numpy in-process (exact)"], rows["FAISS IndexFlatIP in-process"]):
        cells = [cell.strip() for cell in line.split("|")[2:-1]]
        assert cells[5] == "1.0000", line  # recall@10 of exact search
        assert "missed" not in cells[8], line  # every write found by the search that reads it
        insert, end_to_end = float(cells[1].replace(",", "")), float(cells[3].replace(",", ""))
        assert 0 < end_to_end <= insert, line  # from the first insert until all is searchable: never above the inserts
    assert "failed" not in done.stdout, done.stdout


@pytest.mark.parametrize(("bulk", "fresh"), [(0, False), (3000, False), (0, True)])
def test_query_hops_times_every_hop_of_every_query_from_its_records(bulk: int, fresh: bool) -> None:
    """Each query's records are found on every topic it crosses (matched by request id), so each hop
    row counts all the queries, also those asked while a bulk upsert runs (``--bulk``: as many as ran
    meanwhile) and those that each read a write of their own (``--fresh``: the benchmark fails if one misses
    its document); the benchmark starts its own Apache Kafka broker."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "query_hops.py"), "--vectors", "3000", "--queries", "20",
         "--bulk", str(bulk), *(["--fresh"] if fresh else [])], capture_output=True, text=True, timeout=600,
        check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in done.stdout.splitlines() if line.startswith("| ") and "p50 ms" not in line}
    hops = ["client -> query topic (broker append)", "join: fan out", "shard: fetch + search + rank",
            "join: fetch + merge + reply", "client: read and decode the reply", "**end to end**"]
    assert ("client: write one document, acknowledged" in rows) == fresh, done.stdout
    hops += ["client: write one document, acknowledged"] if fresh else []
    asked = int(rows["**end to end**"][2])
    assert all(rows[hop][2] == str(asked) for hop in hops), done.stdout
    assert asked == 20 if not bulk else asked >= 1, done.stdout
    assert ("while 3,000 of them are upserted again" in done.stdout) == bool(bulk), done.stdout
    assert float(rows["**end to end**"][0]) > 0, done.stdout


def test_catch_up_times_an_index_stage_started_after_the_writes_by_its_malloc_setting() -> None:
    """Both settings' rows, in turns, each on its own Apache Kafka broker, beside the in-process handler."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "catch_up.py"), "--vectors", "3000",
                           "--malloc-huge-pages", "--settle", "3"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [float(cell.replace(",", "")) for cell in line.split("|")[2:-1]]
            for line in done.stdout.splitlines() if line.startswith("| ") and "caught up" not in line}
    assert [label.split(",")[0] for label in rows] == ["collapsed once writes pause (the default)",
                                                     "malloc huge pages (glibc.malloc.hugetlb=1)"], done.stdout
    for seconds, rate, main_thread, stage, huge in rows.values():
        assert seconds > 0 and rate > 0 and huge >= 0, done.stdout
        assert 0 < main_thread <= stage, done.stdout  # its loop is one of the stage's threads
    assert "baseline: the handler in-process applies them in" in done.stdout


def test_insert_cpu_splits_both_rounds_by_process() -> None:
    """Every process of the flow is found and charged its CPU in each round; the benchmark starts its
    own Apache Kafka broker."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "insert_cpu.py"), "--vectors", "2000", "--batch", "500"],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in done.stdout.splitlines() if line.startswith("| ")}
    for role in ("broker", "stage index", "stage join", "benchmark", "all processes"):
        cells = rows[f"{role} (µs of CPU per vector)"]
        assert len(cells) == 2, done.stdout
        # CPU time is counted in clock ticks (10 ms): the join's ~3 µs per vector over 2,000 vectors is
        # under one tick, so it may read 0; every other process does far more work than a tick per round
        least = 0 if role == "stage join" else 1e-9
        assert all(float(cell.replace(",", "")) >= least for cell in cells), done.stdout
    groups = [f"broker: {group} (µs of CPU per vector)" for group in
              ("JIT compiler", "garbage collector", "network and request handlers", "other")]
    tick = 1e6 / os.sysconf("SC_CLK_TCK") / 2000  # one clock tick, in µs per vector of this run
    for column in range(2):
        # The broker's threads by group add up to the broker: not exactly, as each of its ~100 threads is
        # rounded down to a tick, threads that ended between two readings are in the process's total only,
        # and the process and its threads are read at slightly different moments.
        parts = sum(float(rows[group][column].replace(",", "")) for group in groups if group in rows)
        broker = float(rows["broker (µs of CPU per vector)"][column].replace(",", ""))
        assert abs(parts - broker) <= max(0.25 * broker, 10 * tick), done.stdout
    assert float(rows[groups[2]][0].replace(",", "")) > 0, done.stdout  # a JVM broker's request handlers are found
    stage = [f"stage index: {group} (µs of CPU per vector)" for group in ("RocksDB", "librdkafka", "other")]
    for column in range(2):  # the index stage's threads by library add up to the stage, as the broker's do
        parts = sum(float(rows[group][column].replace(",", "")) for group in stage if group in rows)
        index = float(rows["stage index (µs of CPU per vector)"][column].replace(",", ""))
        assert abs(parts - index) <= max(0.25 * index, 10 * tick), done.stdout
    assert float(rows[stage[2]][0].replace(",", "")) > 0, done.stdout  # its Python threads: the loop's work
    assert "baseline: FAISS flat in-process" in done.stdout
    # Then, per round, the cores each process used and waited runnable for, in both phases: every process is
    # there, and no process's figure is negative (a thread that exits between two readings, as a JVM's compiler
    # threads do, once lowered its role's wait below what it was before). A thread group's CPU may drop when one of
    # its threads exits: the groups' waits are checked, not their CPU.
    phases = done.stdout.split("cores used / cores' worth of threads waiting runnable for one")[1:]
    assert len(phases) == 2, done.stdout
    for phase in phases:
        cells = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
                 for line in phase.splitlines() if line.startswith("| ") and "while inserting" not in line}
        assert {"benchmark", "broker", "broker: JIT compiler", "stage index", "stage index: other", "stage join"} \
            <= set(cells), phase
        pairs = {role: [[float(part) for part in cell.split(" / ")] for cell in row] for role, row in cells.items()}
        assert all(len(row) == 2 and all(len(pair) == 2 for pair in row) for row in pairs.values()), phase
        assert all(pair[1] >= 0 and (":" in role or pair[0] >= 0) for role, row in pairs.items() for pair in row), phase


def test_shard_apply_times_both_shapes_beside_the_in_process_floor_and_the_stages_malloc_settings() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shard_apply.py"), "--docs", "600",
                           "--malloc-huge-pages"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [float(cell.replace(",", "")) for cell in line.split("|")[2:-1]]
            for line in done.stdout.splitlines() if line.startswith("| ") and "handler" not in line}
    assert [row[0] for row in rows.values()] == [600, 60, 600, 600], done.stdout
    assert all(cell > 0 for row in rows.values() for cell in row), done.stdout
    shapes, settings = list(rows)[:2], list(rows)[2:]
    assert all(rows[shape][2] <= rows[shape][1] * rows[shape][0] / 1000 + 1 for shape in shapes)  # whole ms, printed
    assert [label.split()[0] for label in settings] == ["glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=0"]
    assert all(rows[label][4] < 2048 for label in settings), done.stdout  # the child's own peak, not its parent's


def test_shard_search_times_the_handler_beside_the_scans_it_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shard_search.py"), "--vectors", "2000",
                           "--queries", "20", "--flat-scan", "float16"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [float(cell) for cell in line.split("|")[2:-1]]
            for line in done.stdout.splitlines() if line.startswith("| ") and "p50 ms" not in line}
    assert len(rows) == 4 and all(0 < p50 <= p99 for p50, p99 in rows.values()), done.stdout
    assert "top 10 documents of 50 vectors (chunk_oversample 5)" in done.stdout


def test_encoder_compares_count_budget_and_int8_each_against_the_first() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encoder.py"), "--docs", "12", "--rounds", "1",
                           "--batch-tokens", "512", "--burst-load"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in done.stdout.splitlines() if line.startswith("| by ")}
    assert list(rows) == ["by count (32 texts a pass)", "by tokens (512 a pass)", "by tokens (2048 a pass), int8"]
    assert rows["by count (32 texts a pass)"] == [cell.split()[0] + " (1.00×)" for cell in rows["by count (32 texts a pass)"]]
    assert all(float(cell.split()[0]) > 0 for row in rows.values() for cell in row), done.stdout
    assert "beside a neighbour" in done.stdout


def test_peak_rss_adds_up_only_processes_alive_at_the_same_time() -> None:
    """Two children that hold 200 MiB each, one after the other: the peak counts one of them, not both
    (as it counted Apache Kafka's storage-format JVM beside the broker that starts after it exits)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from setup import ProcessTreePeaks

    hold = "import sys; b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); print('held', flush=True); sys.stdin.read()"
    with ProcessTreePeaks(interval=3600) as peaks:  # sampled here only, while each child holds its memory
        for _ in range(2):
            child = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None and child.stdout.readline() == "held\n"
            peaks.sample()
            child.communicate("")
    other = peaks.by_role_mib()["other"]
    assert 200 <= other < 400, peaks.by_role_mib()
    assert peaks.total_mib() == sum(peaks.by_role_mib().values())


@pytest.mark.parametrize(("grid", "settings"), [((), 40), (("bm25",), 120)])
def test_fusion_quality_ranks_every_setting_of_the_grid_on_training_queries(
        tmp_path: Path, grid: tuple[str, ...], settings: int) -> None:
    """``--select`` scores a grid (the 40 fusions, or BM25's constants with 5 fusions) on the queries of the split
    it is given (here a corpus with only training judgements, so reading the test split would fail) and ranks the
    settings best first."""
    corpus = tmp_path / "data" / "tiny"
    (corpus / "qrels").mkdir(parents=True)
    topics = ["insulin resistance in muscle", "sleep deprivation and memory", "vitamin D and bone density",
              "statins lower cholesterol", "exercise improves mood", "coffee and heart rhythm"]
    (corpus / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": topic, "text": f"study {i} of {topic}"}) + "\n"
        for i, topic in enumerate(topics * 3)), encoding="utf-8")
    (corpus / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": topic}) + "\n" for i, topic in enumerate(topics)), encoding="utf-8")
    (corpus / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(len(topics))), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fusion_quality.py"), "--select", *grid, "--split", "train",
         "--corpus", "tiny", "--data", str(tmp_path / "data"), "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny train: 6 queries" in done.stdout, done.stdout
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in done.stdout.splitlines()
            if line.startswith("| ") and "candidates" in line]
    assert len(rows) == settings and len({row[0] for row in rows}) == settings, done.stdout
    assert all(("BM25 k1=" in row[0]) == bool(grid) for row in rows), done.stdout
    means = [float(row[1]) for row in rows]
    assert means == sorted(means, reverse=True) and 0.0 < means[0] <= 1.0, done.stdout
