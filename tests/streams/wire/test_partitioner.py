"""The one partitioner of ingest: Kafka's murmur2, bit for bit (no broker)."""

from __future__ import annotations

import pytest

from streams.wire.partitioner import murmur2, partition_of


@pytest.mark.parametrize("key, java", [  # Kafka's UtilsTest.testMurmur2 (Java's signed ints)
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_equals_the_java_clients(key: bytes, java: int) -> None:
    assert murmur2(key) == java & 0xFFFFFFFF


def test_a_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    assert partition_of(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert {partition_of(f"id-{i}".encode(), 4) for i in range(100)} == {0, 1, 2, 3}
