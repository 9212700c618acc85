"""The one partitioner of ingest: Kafka's murmur2, bit for bit, compiled and in Python (no broker)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.wire import _murmur2
from streams.wire.partitioner import murmur2, murmur2_python, partition_of

IMPLEMENTATIONS = [pytest.param(_murmur2.murmur2, id="compiled"), pytest.param(murmur2_python, id="python")]


@pytest.mark.parametrize("key, java", [  # Kafka's UtilsTest.testMurmur2 (Java's signed ints)
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_murmur2_equals_the_java_clients(key: bytes, java: int, implementation: Callable[[bytes], int]) -> None:
    assert implementation(key) == java & 0xFFFFFFFF


def test_the_partitioner_runs_the_compiled_murmur2() -> None:
    assert murmur2 is _murmur2.murmur2  # the install built it (pyproject.toml's ext-modules)


@given(st.binary(max_size=300))
def test_the_compiled_murmur2_equals_the_python_reference_on_any_bytes(key: bytes) -> None:
    assert _murmur2.murmur2(key) == murmur2_python(key)


@pytest.mark.parametrize("buffer", [bytearray(b"a-little-bit-long-string"), memoryview(b"a-little-bit-long-string")])
def test_the_compiled_murmur2_reads_any_buffer_and_refuses_what_is_not_one(buffer: bytearray | memoryview) -> None:
    assert _murmur2.murmur2(buffer) == -985981536 & 0xFFFFFFFF
    with pytest.raises(TypeError):
        _murmur2.murmur2("a-little-bit-long-string")  # type: ignore[arg-type]


def test_a_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    assert partition_of(b"21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert {partition_of(f"id-{i}".encode(), 4) for i in range(100)} == {0, 1, 2, 3}
