"""A process's shards share one budget for RocksDB's memtables (``processors/index/store.py``): they stay within
``WRITE_BUFFERS_BYTES`` however many shards the process holds."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from processors.document import Document
from processors.index.base import Change
from processors.index.compound import CompoundIndexer, CompoundIndexerConfig
from processors.index.store_options import WRITE_BUFFER_BYTES, WRITE_BUFFERS_BYTES
from streams.wire.codec import STORED_DOCUMENT

DIM = 384
SHARDS = 6
SHARD_BYTES = 12 << 20
"""Vectors written to each shard: under its own memtable (``WRITE_BUFFER_BYTES``), past the budget for all six."""


def _memtables(index: CompoundIndexer) -> tuple[int, int]:
    """(bytes in the shard's memtables, flushes pending or running) over both column families."""
    shard = index._store._open_shard()
    families = (shard.db, shard.vectors)
    size = sum(family.property_int_value("rocksdb.cur-size-all-mem-tables") or 0 for family in families)
    busy = sum((family.property_int_value("rocksdb.num-running-flushes") or 0)
               + (family.property_int_value("rocksdb.mem-table-flush-pending") or 0) for family in families)
    return size, busy


def test_the_memtables_of_many_shards_stay_within_the_process_budget(tmp_path: Path) -> None:
    assert SHARD_BYTES < WRITE_BUFFER_BYTES and SHARDS * SHARD_BYTES > WRITE_BUFFERS_BYTES
    per_shard = SHARD_BYTES // (DIM * 4)
    vectors = np.random.default_rng(3).normal(size=(per_shard, DIM)).astype(np.float32)
    shards = []
    try:
        for number in range(SHARDS):
            index = CompoundIndexer(CompoundIndexerConfig(dim=DIM), path=tmp_path / f"shard-{number}",
                                    codec=STORED_DOCUMENT)
            index.warm_up()
            shards.append(index)
            for start in range(0, per_shard, 256):
                index.apply(changes=[Change(f"s{number}-{row}", Document(id=f"s{number}-{row}", embedding=vectors[row]))
                                     for row in range(start, min(per_shard, start + 256))],
                            checkpoint=str(start).encode())
        deadline = time.monotonic() + 30
        while any(_memtables(index)[1] for index in shards):  # the flushes the budget started, done
            assert time.monotonic() < deadline, [_memtables(index) for index in shards]
            time.sleep(0.05)
        held = sum(_memtables(index)[0] for index in shards)
        assert held < WRITE_BUFFERS_BYTES, (held, [_memtables(index) for index in shards])
    finally:
        for index in shards:
            index.close()
