"""``freeze_startup_heap``: what a stage process built before it serves is never walked again by a full
collection, and garbage made afterwards is still collected. In a child interpreter: freezing is for good.
``fix_mmap_threshold``: a FAISS index that grew and was freed goes back to the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from streams.runtime.heap import fix_mmap_threshold


def test_the_startup_heap_is_frozen_and_later_cycles_are_still_collected() -> None:
    script = textwrap.dedent("""
        import gc, json, weakref
        import numpy, faiss  # a stage's imports: tens of thousands of objects that live as long as it
        from streams.runtime.heap import YOUNG_COLLECTION_THRESHOLD, freeze_startup_heap

        class Node:
            def __init__(self): self.me = self

        tracked = len(gc.get_objects())
        frozen = freeze_startup_heap()
        walked = len(gc.get_objects(generation=2))
        cycles = [weakref.ref(Node()) for _ in range(1000)]  # made after start-up: only a collection frees them
        gc.collect()
        print(json.dumps({"threshold": gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD > 700,
                          "tracked": tracked, "frozen": frozen, "count": gc.get_freeze_count(),
                          "walked": walked, "left": sum(ref() is not None for ref in cycles)}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    figures = json.loads(out)
    assert figures["frozen"] == figures["count"] >= 0.9 * figures["tracked"] > 10_000
    assert figures["walked"] < 100  # a full collection no longer walks them
    assert figures["left"] == 0
    assert figures["threshold"]  # young collections are rarer than CPython's default


def _resident_mib_after_freed_indexes() -> list[tuple[int, int]]:
    """(grown, after freeing) resident MiB above a child's start, for three FAISS flat indexes grown to 40 MiB
    1 MiB at a time and freed one after the other, in a child started without glibc tunables that fixes the
    threshold first."""
    script = textwrap.dedent("""
        import json, faiss, numpy
        from streams.runtime.heap import fix_mmap_threshold
        assert fix_mmap_threshold()
        def rss(): return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) >> 10
        block = numpy.ones((1024, 256), dtype=numpy.float32)
        start, rounds = rss(), []
        for _ in range(3):
            index = faiss.IndexFlatIP(256)
            for _ in range(40):
                index.add(block)  # FAISS's vectors double as they grow: a new block, the old one freed
            grown = rss() - start
            del index
            rounds.append((grown, rss() - start))
        print(json.dumps(rounds))
    """)
    env = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_")}
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, env=env)
    assert child.returncode == 0, child.stderr
    return [tuple(pair) for pair in json.loads(child.stdout)]


@pytest.mark.skipif(not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc "),
                    reason="the threshold is glibc's malloc's")
def test_a_faiss_index_grown_and_freed_goes_back_to_the_kernel_with_the_threshold_fixed() -> None:
    """Left to glibc, the threshold rose with the first index's freed blocks, and the second index's doublings came
    from the heap and stayed there: 31 MiB resident after it was freed (glibc 2.36)."""
    rounds = _resident_mib_after_freed_indexes()
    assert all(grown >= 35 and after <= 4 for grown, after in rounds), rounds


@pytest.mark.parametrize("name, value", [("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536"),
                                         ("MALLOC_MMAP_THRESHOLD_", "65536")])
def test_the_threshold_is_left_to_a_users_own_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert fix_mmap_threshold() is False
