"""A long-running process's startup heap, set apart from the cyclic garbage collector.

A stage process imports numpy, FAISS, confluent-kafka, fastavro and rocksdict (an encode stage torch
and transformers too) and builds its stage before it serves: ~52,000 container objects for the index
stage, which live as long as the process. CPython's collector walks every one of them at each full
(generation 2) collection, and a full collection runs whenever the objects that survived younger
collections grew by a quarter: during a bulk ingest the index stage ran one every few seconds, each
16–26 ms on 2 busy cores (11 ms idle) and finding nothing to collect, and a search waits for it. Frozen
(``gc.freeze``, Python ≥ 3.7, the remedy its documentation and Instagram's "Dismissing Python Garbage
Collection at Instagram" give), they are never walked: a full collection of the index stage then takes
~0.01 ms. Only what the process built before it serves is frozen; garbage made later is collected as before.

The young generation is collected after ``YOUNG_COLLECTION_THRESHOLD`` net allocations of containers instead
of CPython's 700: decoding a document makes dozens (fastavro's dicts, the Document tree), so the index stage
ran a young collection every ~45 documents. With 10,000 the index stage's handler took 38.2–38.9 µs a
document against 39.8–41.5 (``benchmarks/shard_apply.py``'s handler, 100,000 documents, two runs each in
turns), 2.4 times fewer young collections; what they keep alive longer is at most the cycles of the last
10,000 allocations.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MALLOC_HUGE_PAGES", "MMAP_THRESHOLD_BYTES", "TRANSPARENT_HUGE_PAGES", "YOUNG_COLLECTION_THRESHOLD",
           "fix_mmap_threshold", "freeze_startup_heap", "huge_pages_mode", "report_huge_pages",
           "with_malloc_huge_pages"]

YOUNG_COLLECTION_THRESHOLD = 10_000
"""``gc.set_threshold``'s first value in a serving process (CPython's default: 700)."""

logger = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect once, then freeze every object alive (CPython's permanent generation); call it once in a
    process's entry point, after its imports and set-up and before it serves, never in a library a user's
    process imports (it is the process's choice); the young generation's threshold is raised with it
    (``YOUNG_COLLECTION_THRESHOLD``). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
    frozen = gc.get_freeze_count()
    logger.info("startup heap frozen", extra={"objects": frozen})
    return frozen


# -- huge pages --------------------------------------------------------------------------------

MALLOC_HUGE_PAGES = "glibc.malloc.hugetlb=1"
"""The glibc tunable (glibc >= 2.35) under which ``malloc`` asks the kernel for transparent huge pages
(``madvise(MADV_HUGEPAGE)``) on the memory it maps, so that where the kernel's mode is ``madvise`` (Debian's,
``TRANSPARENT_HUGE_PAGES``) a FAISS index's vectors sit in 2 MiB pages instead of 4 KiB ones. Why: a flat scan
reads every vector at each search, and in huge pages the same scan takes about a fifth less. FAISS flat inner
product over 100,000 384-d vectors in one thread, 300 single-vector searches, two runs each in turns
(2026-12-07): float32 p50 13.92/13.55 -> 10.59/10.45 ms, float16 9.14/9.02 -> 6.92/7.52 ms; appending vectors
32 at a time 2.04 -> 1.04 µs each (fewer page faults); peak RSS 487 -> 489 MiB. glibc reads tunables only
when a process starts, so the supervisor sets it in the environment of the stage kinds that hold vectors
(``StageKind.holds_vectors``); a process started otherwise (a container) sets ``GLIBC_TUNABLES`` itself."""

_HUGETLB = MALLOC_HUGE_PAGES.partition("=")[0] + "="
"""Any setting of the tunable (``=0`` off, ``=1`` ours, ``=2`` hugetlbfs): the user's, which we leave alone."""

TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")
"""The kernel's transparent huge page mode: ``always``, ``madvise`` or ``never``, the chosen one in brackets."""


def with_malloc_huge_pages(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``MALLOC_HUGE_PAGES`` added to ``GLIBC_TUNABLES``, unless it sets ``glibc.malloc.hugetlb``
    already: a user's own choice (``glibc.malloc.hugetlb=0`` turns it off) wins."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if _HUGETLB in tunables:
        return dict(env)
    return {**env, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, MALLOC_HUGE_PAGES]))}


def huge_pages_mode() -> str:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or ``unknown`` where it does
    not say (another kernel, a container without ``/sys``): what the start-up log reports beside the tunable."""
    try:
        text = TRANSPARENT_HUGE_PAGES.read_text()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else "unknown"


def report_huge_pages(wanted: bool) -> bool:
    """Log, once at a stage's start, whether its ``malloc`` was asked for huge pages (glibc < 2.35 and other libcs
    ignore the tunable) and the kernel's mode; where the stage's kind wants them (``wanted``), the kernel grants
    them only when asked (``madvise``) and the process was started without any ``glibc.malloc.hugetlb``, say how
    to add it. Returns whether the tunable is set."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    on = MALLOC_HUGE_PAGES in tunables.split(":")
    mode = huge_pages_mode()
    logger.info("malloc huge pages " + ("asked for" if on else "not asked for"),
                extra={"glibc_tunables": tunables, "transparent_hugepage": mode})
    if wanted and mode == "madvise" and _HUGETLB not in tunables:
        logger.info(f"this stage scans its vectors faster in huge pages: start it with {MALLOC_HUGE_PAGES} in "
                    f"GLIBC_TUNABLES (added after any others, ':' between; the supervisor of `streamsearch run` "
                    f"adds it)")
    return on


# -- the mmap threshold ------------------------------------------------------------------------

MMAP_THRESHOLD_BYTES = 4 << 20
"""What ``fix_mmap_threshold`` sets: ``malloc`` maps every block from 4 MiB up on its own, and ``free`` gives it
back to the kernel at once. Why: glibc raises its threshold to the size of each mapped block freed (up to 32 MiB,
``mallopt(3)``), so once a FAISS index has grown (its vectors are a ``std::vector`` that doubles: a new block,
the old one freed) or turned to float16 (the float32 index freed), the next such blocks come from the heap, and a
block freed there stays resident while anything lies above it. In-process, 2 shards of 50,000 384-d vectors
written through the handler (2026-12-07, with ``MALLOC_HUGE_PAGES``, as the stage runs) peaked 173 MiB above the
process's start with this and the float16 turn at 24 MiB (``faiss_flat.AUTO_FLOAT16_BYTES``), 203-219 with the
turn alone, 206-208 with neither. Not lower: at 1 MiB the index stage mapped and unmapped ~45 blocks of 1 MiB a
second during a bulk ingest (``strace``: 1 MiB and 4 KiB each, the size of a fetch response at librdkafka's
``max.partition.fetch.bytes``), each a fresh set of zeroed pages."""

_M_MMAP_THRESHOLD = -3
"""``mallopt``'s parameter number for the threshold (glibc's ``malloc.h``)."""

_MMAP_THRESHOLD_TUNABLE = "glibc.malloc.mmap_threshold="
"""The same threshold as a glibc tunable (``GLIBC_TUNABLES``): a user's own setting, which we leave alone."""


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc ``malloc``'s mmap threshold at ``threshold`` bytes (``MMAP_THRESHOLD_BYTES``; a fixed one no
    longer rises), in a process that holds vectors, after its imports and before it serves; never in a library a
    user's process imports. Left alone where ``GLIBC_TUNABLES`` sets it already. Returns whether it was set: False
    for another libc (musl has no ``mallopt`` or a stub, macOS none) or the user's own setting (the tunable, or
    glibc's older ``MALLOC_MMAP_THRESHOLD_``)."""
    if _MMAP_THRESHOLD_TUNABLE in os.environ.get("GLIBC_TUNABLES", "") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    fixed = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    logger.info("malloc mmap threshold " + ("fixed" if fixed else "left to the libc"), extra={"bytes": threshold})
    return fixed
