"""``freeze_startup_heap``: what a stage process built before it serves is never walked again by a full
collection, and garbage made afterwards is still collected. In a child interpreter: freezing is for good.
``MALLOC_HUGE_PAGES``: a process started with it holds a large array in huge pages where the kernel grants them.
``fix_mmap_threshold``: a FAISS index that grew and was freed goes back to the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streams.runtime.heap import MALLOC_HUGE_PAGES, fix_mmap_threshold, huge_pages_mode, with_malloc_huge_pages


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


@pytest.mark.parametrize("given, expected", [
    (None, MALLOC_HUGE_PAGES),
    ("glibc.malloc.arena_max=2", f"glibc.malloc.arena_max=2:{MALLOC_HUGE_PAGES}"),
    ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # the user's choice wins
])
def test_the_tunable_is_added_to_the_environment_unless_it_names_hugetlb_already(given: str | None,
                                                                                  expected: str) -> None:
    env = {"PATH": "/bin"} | ({"GLIBC_TUNABLES": given} if given is not None else {})
    assert with_malloc_huge_pages(env) == {"PATH": "/bin", "GLIBC_TUNABLES": expected}


def _anonymous_huge_kib(env: dict[str, str]) -> int:
    """AnonHugePages of a child whose FAISS flat index grew to 64 MiB 1 MiB at a time, as /proc says. Not a numpy
    array of that size: numpy asks for huge pages itself (``madvise``) for its large arrays, FAISS's vectors do not."""
    script = ("import faiss, numpy; block = numpy.ones((1024, 256), dtype=numpy.float32); index = faiss.IndexFlatIP(256)\n"
              "for _ in range(64): index.add(block)\n"
              "print(next(int(line.split()[1]) for line in open('/proc/self/smaps_rollup') "
              "if line.startswith('AnonHugePages:')))")
    return int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env=env).stdout)


def _glibc_reads_the_tunable() -> bool:
    """glibc >= 2.35 knows ``glibc.malloc.hugetlb``; an older one, or another libc, ignores it."""
    name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    return name == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 35)


def _huge_pages_allowed_here() -> bool:
    """Whether this process may have transparent huge pages at all (``prctl(PR_SET_THP_DISABLE)`` says no)."""
    status = Path("/proc/self/status").read_text()
    return next((line.split()[1] != "0" for line in status.splitlines() if line.startswith("THP_enabled:")), True)


def test_a_process_started_with_the_tunable_holds_a_faiss_index_in_huge_pages_where_the_kernel_grants_them() -> None:
    plain = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    asked, not_asked = _anonymous_huge_kib(with_malloc_huge_pages(plain)), _anonymous_huge_kib(plain)
    mode = huge_pages_mode() if _huge_pages_allowed_here() else "never"
    granted = 16 << 10  # KiB: a quarter of the index, room for pages the kernel could not find whole
    if mode == "madvise":  # Debian's default: only what malloc asks for
        assert (asked >= granted if _glibc_reads_the_tunable() else asked == 0) and not_asked == 0, (asked, not_asked)
    elif mode == "always":  # asked for or not; only what is asked for is compacted for (defrag: madvise)
        assert asked >= granted, (asked, not_asked)
    else:  # never, or a kernel that does not say: none either way
        assert asked == not_asked == 0, (mode, asked, not_asked)


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
