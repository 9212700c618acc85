"""How a shard's RocksDB is tuned: memtable sizes and the process's budget for them, bloom filters, compression
and cache use per column family. ``store.py`` opens the database with these; what each setting saved was measured
where it is declared."""

from __future__ import annotations

from rocksdict import BlockBasedOptions, DBCompressionType, Options, ReadOptions, WriteBufferManager

__all__ = ["BLOOM_BITS_PER_KEY", "PROCESS_WRITE_BUFFERS", "WRITE_BUFFERS_BYTES", "WRITE_BUFFER_BYTES", "db_options",
           "family_options", "table_options", "vector_family_options", "vector_reads"]

WRITE_BUFFER_BYTES = 16 << 20
"""RocksDB's memtable size per column family (its default is 64 MiB, and two can be held while one flushes):
every vector passes through it, and a shard process peaked 46 MiB lower at 100,000 384-d vectors with
16 MiB, at the same apply rate (71 against 72 us per document, applied in one process). Both families are
flushed together when one is full (``atomic_flush``), so the documents' rarely holds much."""

WRITE_BUFFERS_BYTES = 64 << 20
"""The memtables of every shard of a process together (``PROCESS_WRITE_BUFFERS``): past 90 % of it in mutable
memtables, RocksDB flushes the shard being written to (both families: ``atomic_flush``). One or two shards stay
under it (``WRITE_BUFFER_BYTES`` a family); a process of 8 shards (``replicas: 1`` for 8 partitions) held up to 16
memtables of 16 MiB, twice that while they flush. In-process, 8 shards of 12,500 384-d vectors written through the
handler, then upserted again, peaked 285 MiB above the process's start against 340 (2026-12-07); on 1 and 2
shards neither the index stage's peak nor its CPU a vector moved (``peers.py``, ``insert_cpu.py``). Kafka Streams
bounds its stores' memtables the same way (``BoundedMemoryRocksDBConfig``: one ``WriteBufferManager`` for every
store of an instance)."""

PROCESS_WRITE_BUFFERS = WriteBufferManager(WRITE_BUFFERS_BYTES, False)
"""One budget for the memtables of every shard this process opens; it never stalls a write (``allow_stall``
False: a shard's loop must not wait for another shard's flush)."""

BLOOM_BITS_PER_KEY = 10
"""RocksDB's bloom filter size per key (its wiki's usual setting, about 1 % false positives): every
upsert first looks its document up, and for a new document that lookup misses in every file."""


def family_options() -> Options:
    """A column family's options: raw keys, ``WRITE_BUFFER_BYTES`` memtables within the process's
    ``PROCESS_WRITE_BUFFERS``, ``table_options``."""
    options = Options(raw_mode=True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_write_buffer_manager(PROCESS_WRITE_BUFFERS)
    options.set_block_based_table_factory(table_options())
    return options


def db_options() -> Options:
    """The database's options, also the default family's: ``family_options``, both families flushed together when
    one memtable is full (``atomic_flush``: ``store_flush.py`` says why), the vectors' family created if missing."""
    options = family_options()
    options.set_atomic_flush(True)
    options.create_missing_column_families(True)
    return options


def vector_family_options() -> Options:
    """The vectors family's options: ``family_options``, uncompressed. An embedding's float32 values (their mantissas
    above all) leave a compressor nothing to take, and Snappy still tried every block at each flush and
    compaction (a block that does not shrink by an eighth is stored as it was)."""
    options = family_options()
    options.set_compression_type(DBCompressionType.none())
    return options


def vector_reads() -> ReadOptions:
    """Reads of the vectors' family leave RocksDB's block cache as it was. A float16 search reads its candidates'
    float32 vectors there (2k + 16 random vectors a shard), and those reads filled each shard's 32 MiB block cache
    within 1,000 queries, for few hits (a block is rarely a later query's candidate again): in-process, 2 shards of
    50,000 384-d vectors held 461 MiB after 2,000 queries, 415 without filling it, and the stage's answer to one
    query for both shards took 4.68 and 5.16 ms p50 against 4.88 and 4.94 (``benchmarks/shard_search.py``, 1,000
    queries, in turns, 2026-12-07). What a cache would keep, the kernel's page cache of the same files holds."""
    reads = ReadOptions()
    reads.fill_cache(False)
    return reads


def table_options() -> BlockBasedOptions:
    """Block-based tables with a full-key bloom filter (not the older per-block one). Files written
    before it simply have none: readers of the same shard need no migration, and files written from
    then on have one (compaction rewrites the older)."""
    table = BlockBasedOptions()
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    return table


