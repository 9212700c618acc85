"""milvus-lite (pymilvus ``MilvusClient`` on a local .db file), a FLAT inner-product index: the
peers' workload (``peer_workload.py``) in the ``.bench/milvus`` virtualenv, which ``peers.py``
creates and runs this in; prints the figures as one JSON line.

    .bench/milvus/bin/python benchmarks/peer_milvus.py DATA_DIR
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_workload import Token, child_main
from setup import DIM

COLLECTION = "vectors"


class MilvusLite:
    """Searches without ``after`` use the Bounded consistency level, Milvus's default; a search that
    must read a write (``after``, all searchable) uses Strong."""

    upserts = True

    def __init__(self, folder: Path) -> None:
        self.name = f"milvus-lite {version('milvus-lite')}, FLAT"
        self.path = folder / "milvus.db"
        self.client = None

    def start(self) -> float:
        from pymilvus import DataType, MilvusClient

        started = time.perf_counter()
        self.client = MilvusClient(str(self.path))
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(COLLECTION, schema=schema, index_params=index)
        return time.perf_counter() - started

    def insert(self, ids: np.ndarray, vectors: np.ndarray, *, upsert: bool = False) -> Token:
        rows = [{"id": int(i), "vector": v} for i, v in zip(ids, vectors)]
        (self.client.upsert if upsert else self.client.insert)(COLLECTION, rows)
        return True  # read back with the Strong consistency level

    def wait_searchable(self, tokens: Sequence[Token], probe: np.ndarray) -> None:
        # Seal the inserts into segments, as a Milvus user does after a bulk load: unflushed rows are
        # searched by copying the memtable on every query (over 0.7 s a query at 20,000 rows here).
        self.client.flush(COLLECTION)
        self.search(probe, 1, after=True)

    def search(self, vector: np.ndarray, k: int, after: Token | None = None) -> list[int]:
        hits = self.client.search(COLLECTION, data=[vector], limit=k, output_fields=["id"],
                                  search_params={"metric_type": "IP"},
                                  consistency_level="Strong" if after is not None else "Bounded")
        return [hit["id"] for hit in hits[0]]

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


if __name__ == "__main__":
    child_main(MilvusLite(Path(sys.argv[1])))
