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

__all__ = ["MMAP_THRESHOLD_BYTES", "YOUNG_COLLECTION_THRESHOLD", "fix_mmap_threshold", "freeze_startup_heap"]

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


# -- the mmap threshold ------------------------------------------------------------------------

MMAP_THRESHOLD_BYTES = 4 << 20
"""What ``fix_mmap_threshold`` sets: ``malloc`` maps every block from 4 MiB up on its own, and ``free`` gives it
back to the kernel at once. Why: glibc raises its threshold to the size of each mapped block freed (up to 32 MiB,
``mallopt(3)``), so once a FAISS index has grown (its vectors are a ``std::vector`` that doubles: a new block,
the old one freed) or turned to float16 (the float32 index freed), the next such blocks come from the heap, and a
block freed there stays resident while anything lies above it. In-process, 2 shards of 50,000 384-d vectors
written through the handler (2026-12-07, with malloc's huge pages, as the stage then ran) peaked 173 MiB above the
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
