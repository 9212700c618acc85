"""What both benchmarks share: the SciFact texts, the flow they run, and RSS readings."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.corpora import load_beir  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
FLOW = ROOT / "deploy" / "flows" / "beir.yml"


def scifact(limit: int):  # type: ignore[no-untyped-def]
    """The first ``limit`` SciFact documents (title + text) and the test queries."""
    dataset = load_beir(SCIFACT)
    return dataset.corpus[:limit], list(dataset.queries.values())


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident set size of this process (or of its largest finished child), in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def machine() -> str:
    import os
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
