"""Which partition a document id lives on: Kafka's default partitioner, murmur2 of the key.

Shard p applies partition p of ``<flow>.ingest`` (the index path is co-partitioned), so every
record of one id must be on one partition, whoever writes it. The one partitioner is the one
Kafka's Java producer (and so Kafka Streams, Connect, ...) uses for a keyed record: murmur2 of
the key bytes, made positive, modulo the partition count. librdkafka calls it ``murmur2_random``
(its default, ``consistent_random``, is CRC32 and puts many ids elsewhere). The first stage
that reads ingest dead-letters a record on another partition, naming this partitioner.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from streams.wire import _murmur2
except ImportError:  # installed without a C compiler
    _murmur2 = None

__all__ = ["LIBRDKAFKA_PARTITIONER", "murmur2", "murmur2_python", "partition_of"]

LIBRDKAFKA_PARTITIONER = "murmur2_random"
"""librdkafka's name for the Java producer's partitioner (same key, same partition)."""

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2_python(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` as an unsigned 32-bit value (Java's, bit for bit): the reference of
    ``_murmur2.c``, and what runs where it was not built."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


murmur2: Callable[[bytes], int] = _murmur2.murmur2 if _murmur2 is not None else murmur2_python
"""Kafka's ``Utils.murmur2``, compiled where the install built ``_murmur2.c`` (a UUID's 36 bytes: 4.4 µs in
Python, 80 ns compiled; the index stage's handler on 2 shards, UUID ids: 32.5/31.7 -> 24.4/24.1 µs a document)."""


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    if partitions == 1:  # the common one-shard flow: no hash to compute for every record
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % partitions
