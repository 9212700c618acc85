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

import gc
import logging

__all__ = ["YOUNG_COLLECTION_THRESHOLD", "freeze_startup_heap"]

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
