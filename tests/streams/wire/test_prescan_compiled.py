"""The compiled walk and reader (``streams/wire/_avro.c``) against their references: the Python walk
(``prescan.py``) and fastavro's reader.

Every record here, valid or damaged, goes through both walks: they must accept and refuse the same
records, and report the same cut ranges and sized flag for those they accept; every record they accept
is read by both readers, which must give equal values of the same types (or both fail). The damaged
records are every truncation and every byte of each valid record set to the values that change a
varint's meaning, then seeded random damage and random bytes.
"""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.document import Direction, Document
from streams.exceptions import DecodeLimitError, SerdeError
from streams.wire import codec as codecs
from streams.wire import prescan as scan
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST, Codec
from streams.wire.limits import DECODE_LIMITS, DecodeLimits
from streams.wire.prescan import Cuts
from streams.wire.program import COMPILED
from streams.wire.records import PartialResult, Request
from streams.wire.scan_nodes import ScanNode, compile_scan, program_of
from tests.streams.wire.fixtures import DEFAULT_PREFIX, documents, nested, nested_docs, tree, varint

ROOT = Path(__file__).resolve().parents[3]
CODECS: list[Codec[Any]] = [value for value in vars(codecs).values() if isinstance(value, Codec)]
WRITERS: list[tuple[Any, ScanNode]] = [pair for codec in CODECS
                                       for pair in ((codec.schema, codec._scan_root), *codec._earlier.values())]
"""Every writer schema a codec reads, the current ones and the earlier ones, with its pre-scan tree."""
ROOTS: list[ScanNode] = [root for _, root in WRITERS]
RAW_READERS = {id(root): program_of(compile_scan(schema)) for schema, root in WRITERS}
"""Each writer schema's program without the codecs' record constructors: its reader makes what fastavro's makes."""
CODEC_OF = {id(codec._scan_root): codec for codec in CODECS}
SIGNIFICANT = (0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0x81, 0xFE, 0xFF)
"""Byte values that end or continue a varint, flip its sign, or name a union branch past the last."""


def python_verdict(data: bytes, root: ScanNode, limits: DecodeLimits) -> tuple[list[tuple[int, int]], bool] | None:
    cuts = Cuts()
    try:
        scan.prescan_python(data, root, limits, "record", cuts)
    except (SerdeError, DecodeLimitError):
        return None
    return list(cuts), cuts.sized


def compiled_verdict(data: bytes, root: ScanNode, limits: DecodeLimits) -> tuple[list[tuple[int, int]], bool] | None:
    cuts = Cuts()
    if not scan._compiled_accepts(program_of(root), data, limits, cuts):
        assert not cuts and not cuts.sized  # a refusal leaves nothing behind
        return None
    return list(cuts), cuts.sized


def agree(data: bytes, root: ScanNode, limits: DecodeLimits = DECODE_LIMITS, *, read: bool = True) -> bool:
    """Assert both walks decide alike on ``data``, and both readers read what they accept alike; return
    whether they accepted it."""
    expected = python_verdict(data, root, limits)
    assert compiled_verdict(data, root, limits) == expected, data.hex()
    if expected is not None and read:
        read_alike(data, next(schema for schema, r in WRITERS if r is root), root)
        if id(root) in CODEC_OF:
            decoded_alike(CODEC_OF[id(root)], data)
    return expected is not None


def outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` returns, or the exception it raises (the readers must fail alike, whatever they raise)."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001
        return exc


def read_alike(data: bytes, schema: Any, root: ScanNode) -> None:
    expected = outcome(lambda: fastavro.schemaless_reader(io.BytesIO(data), schema, None))
    read = outcome(lambda: RAW_READERS[id(root)].read(data))
    if isinstance(expected, Exception) or isinstance(read, Exception):
        assert type(read) is type(expected) and str(read) == str(expected), (data.hex(), read, expected)
    else:
        assert same(read, expected), (data.hex(), read, expected)


def decoded_alike(codec: Codec[Any], data: bytes) -> None:
    """The codec's value made by the compiled reader's constructors equals the one made from fastavro's dicts:
    the same type, and the same bytes when encoded again (or the same error)."""
    made = outcome(lambda: codec._from_avro(codec._program.read(data)))
    expected = outcome(lambda: codec._from_avro(codec._read_fastavro(data, codec.schema)))
    if isinstance(expected, Exception) or isinstance(made, Exception):
        # Both refuse (the codec says SerdeError either way); with two faults in a record they may name
        # different ones: the constructors meet them in byte order, fastavro's dicts all strings first.
        assert isinstance(made, Exception) and isinstance(expected, Exception), (data.hex(), made, expected)
        return
    assert type(made) is type(expected)
    assert same_encoding(codec, made, expected), data.hex()


def same_encoding(codec: Codec[Any], a: Any, b: Any) -> bool:
    first, second = outcome(lambda: codec.encode(a)), outcome(lambda: codec.encode(b))
    if isinstance(first, Exception) or isinstance(second, Exception):
        return type(first) is type(second) and str(first) == str(second)
    return first == second


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, in the same order, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def damaged(record: bytes) -> list[bytes]:
    """Every truncation, one byte past the end, and every byte set to each ``SIGNIFICANT`` value."""
    out = [record[:end] for end in range(len(record))] + [record + b"\x00", record + b"\x02"]
    for pos in range(len(record)):
        out += [record[:pos] + bytes([value]) + record[pos + 1:] for value in SIGNIFICANT if value != record[pos]]
    return out


def embedded(doc_id: str, chunks: int) -> Document:
    rng = np.random.default_rng(len(doc_id) + chunks)
    return Document(id=doc_id, text="root", blob=b"\x01\x02", chunks=[
        Document(id=f"{doc_id}/{i}", parent_id=doc_id, text="chunk", embedding=rng.random(4, dtype=np.float32),
                 blob=b"x" if i % 2 else None) for i in range(chunks)])


def sized_chunks() -> bytes:
    """A Document whose chunks block is written with a negative count and its size in bytes."""
    chunk = DOCUMENT.encode(Document(id="d/0", embedding=np.ones(2, np.float32)))
    plain = DOCUMENT.encode(Document(id="d", chunks=[Document(id="d/0", embedding=np.ones(2, np.float32))]))
    count = plain.index(chunk) - 1
    return plain[:count] + varint(-1) + varint(len(chunk)) + chunk + plain[count + 1 + len(chunk):]


VALID_DOCUMENTS = {
    "tree": DOCUMENT.encode(tree()),
    "nested 4": DOCUMENT.encode(nested_docs(4)),
    "embeddings and blobs": DOCUMENT.encode(embedded("e", 3)),
    "all defaults, 3 deep": nested(3),
    "a sized block": sized_chunks(),
}


def test_the_install_built_the_compiled_walk_and_reader() -> None:
    """``pip install`` builds them here (a C compiler is on these machines); without them every other test
    of this file would fail to find a program."""
    assert COMPILED and all(program_of(root) is not None for root in ROOTS)


@pytest.mark.parametrize("name", VALID_DOCUMENTS)
def test_every_damage_to_a_document_is_decided_alike(name: str) -> None:
    record = VALID_DOCUMENTS[name]
    assert agree(record, DOCUMENT._scan_root)
    refused = sum(not agree(data, DOCUMENT._scan_root) for data in damaged(record))
    assert refused > len(record)  # every truncation at least


def test_cut_ranges_and_the_sized_flag_are_reported_alike() -> None:
    cuts, sized = compiled_verdict(VALID_DOCUMENTS["embeddings and blobs"], DOCUMENT._scan_root, DECODE_LIMITS)
    assert len(cuts) == 5 and not sized  # the root's blob, 3 embeddings, 1 chunk's blob
    assert compiled_verdict(VALID_DOCUMENTS["a sized block"], DOCUMENT._scan_root, DECODE_LIMITS)[1]


def test_envelopes_and_their_damage_are_decided_alike() -> None:
    docs = [embedded("a", 2), tree()]
    records = [
        REQUEST.encode(Request("r1", "search", docs, "replies", 5, {"top_k": 3}, {0: 7})),
        PARTIAL_RESULT.encode(PartialResult("r1", 0, [0, 1], "replies", 5, {}, docs, error=None, warning="short")),
    ]
    roots = (REQUEST._scan_root, PARTIAL_RESULT._scan_root)
    for record, root in zip(records, roots):
        assert agree(record, root)
        for data in damaged(record):
            for other in ROOTS:  # also read as every other schema: wrong headers are hostile input too
                agree(data, other)


@pytest.mark.parametrize("depth, documents", [(1, 1), (2, 3), (3, 3), (3, 4), (4, 100), (2**70, 2**70)])
def test_the_caps_are_decided_alike(depth: int, documents: int) -> None:
    limits = DecodeLimits(max_document_depth=depth, max_documents=documents)
    for record in (nested(3), DOCUMENT.encode(nested_docs(4)), DOCUMENT.encode(embedded("e", 2))):
        agree(record, DOCUMENT._scan_root, limits)


def test_seeded_random_damage_is_decided_alike() -> None:
    rng = random.Random(17)
    records = [*VALID_DOCUMENTS.values(), DOCUMENT.encode(embedded("big", 40))]
    for _ in range(3000):
        data = bytearray(rng.choice(records))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[at] = rng.randrange(256)
            elif action == 1:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 3)))
            else:
                del data[at:at + rng.randint(1, 3)]
        agree(bytes(data), rng.choice(ROOTS))


@settings(max_examples=300, deadline=None)
@given(documents())
def test_any_document_is_accepted_alike(doc: Document) -> None:
    assert agree(DOCUMENT.encode(doc), DOCUMENT._scan_root)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64).map(lambda tail: DEFAULT_PREFIX[:12] + tail) | st.binary(max_size=64),
       st.sampled_from(ROOTS))
def test_any_bytes_are_decided_alike(data: bytes, root: ScanNode) -> None:
    agree(data, root)


def test_a_document_nested_far_past_the_cap_is_refused_without_recursion() -> None:
    """The compiled walk keeps its stack on the heap: 100,000 levels under a cap that allows them all."""
    limits = DecodeLimits(max_document_depth=200_000, max_documents=200_000)
    assert agree(nested(100_000), DOCUMENT._scan_root, limits, read=False)  # fastavro's reader would crash
    assert not agree(nested(100_000)[:-1], DOCUMENT._scan_root, limits)
    for program in (program_of(DOCUMENT._scan_root), RAW_READERS[id(DOCUMENT._scan_root)]):
        with pytest.raises(RecursionError):  # the compiled reader stops at a bound instead
            program.read(nested(100_000))


def test_the_reader_stops_at_its_own_depth_bound_whatever_the_recursion_limit() -> None:
    """Past ~13,800 levels the reader overflowed an 8 MiB C stack when Python's recursion limit had been
    raised (found by fuzzing under AddressSanitizer); it now stops at 2,000 records and arrays. In a child,
    so that a regression kills the child and not pytest."""
    child = textwrap.dedent("""
        import sys
        from streams.wire.codec import DOCUMENT
        from streams.wire.scan_nodes import program_of
        from tests.streams.wire.fixtures import nested
        sys.setrecursionlimit(1_000_000)
        program = program_of(DOCUMENT._scan_root)
        try:
            program.read(nested(20_000))
        except RecursionError as exc:
            print(exc)
        print(program.read(nested(900)).id == "")  # 1,800 levels: under the bound
    """)
    ran = subprocess.run([sys.executable, "-c", child], check=False, capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.splitlines() == ["an Avro record nested over 2000 records and arrays deep", "True"]


def test_a_block_count_of_the_smallest_long_is_refused_by_the_reader_alone() -> None:
    """-2**63 has no positive count (negating it overflowed); the walk refuses it, and so does the reader
    called without the walk."""
    record = DOCUMENT.encode(Document(id="x"))
    tags = 2 + 3 + 11 + 4  # id "x"; parent_id, granularity, adjacency; mime type; text, blob, uri, embedding
    assert record[tags - 14:tags - 4] == b"text/plain" and record[tags] == 0  # the empty tags map's count
    smallest = record[:tags] + b"\xff" * 9 + b"\x01" + record[tags + 1:]  # zigzag of -2**63: ten bytes
    assert not agree(smallest, DOCUMENT._scan_root, read=False)
    with pytest.raises(ValueError, match="truncated"):
        RAW_READERS[id(DOCUMENT._scan_root)].read(smallest)


def test_a_header_that_is_not_utf8_is_a_serde_error() -> None:
    with pytest.raises(SerdeError, match="record written with schema"):
        DOCUMENT.decode_record_cuts(DOCUMENT.encode(Document(id="x")), {"ss-schema": b"\xff"})


@pytest.mark.parametrize("length, accepted", [
    (b"\x82" + b"\x80" * 8 + b"\x00", True),  # 1, written in 10 bytes
    (b"\x82" + b"\x80" * 9 + b"\x00", False),  # in 11: over the limit
    (b"\xff" * 9 + b"\x7f", False),  # 70 bits: no record is that long
])
def test_varints_of_ten_bytes_and_more_are_decided_alike(length: bytes, accepted: bool) -> None:
    record = DOCUMENT.encode(Document(id="x"))
    assert record[:2] == b"\x02x"
    assert agree(length + record[1:], DOCUMENT._scan_root) is accepted
    assert record[2:4] == b"\x00\x00"  # parent_id null, then granularity 0
    assert agree(record[:3] + b"\xff" * 9 + b"\x7f" + record[4:], DOCUMENT._scan_root)  # a long of 70 bits: skipped


def test_the_codecs_reader_makes_documents_directly() -> None:
    """``RECORD_CONSTRUCTORS``: the compiled reader returns the Document tree, not dicts for doc_from_avro."""
    made = DOCUMENT._program.read(DOCUMENT.encode(tree()))
    assert type(made) is Document and type(made.chunks[0]) is Document
    assert made.chunks[0].embedding.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert made.chunks[0].scores["score"].direction is Direction.DISTANCE
    assert DOCUMENT.encode(made) == DOCUMENT.encode(tree())
