"""``freeze_startup_heap``: what a stage process built before it serves is never walked again by a full
collection, and garbage made afterwards is still collected. In a child interpreter: freezing is for good."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


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
