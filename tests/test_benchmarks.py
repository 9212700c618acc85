"""The peers' benchmark runs end to end at a small size (no figure is asserted: timings move with
the machine's load). Only the in-process systems here: the others need a broker, a model or a
virtualenv, and run in the full benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
        assert cells[4] == "1.0000", line  # recall@10 of exact search
        assert "missed" not in cells[7], line  # every write found by the search that reads it
    assert "failed" not in done.stdout, done.stdout
