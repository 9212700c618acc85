import dataclasses
import io
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.document import Direction, Document, Score, validate_document
from processors.exceptions import InvalidDocumentError
from streams.wire import serde
from streams.exceptions import DecodeLimitError, FlowConfigError, SerdeError
from streams.wire.serde import (DECODE_LIMITS, DOCUMENT, PARTIAL_RESULT, STORED_DOCUMENT, STORED_FORMAT, REQUEST, SEARCH_REPLY, SERVING_VERSION,
                           STAGE_STATUS, VERSION_BUILD, DecodeLimits, PartialResult, Request, SearchReply,
                           doc_from_avro)
from tests.fixtures import DEFAULT_PREFIX, nested


def tree() -> Document:
    chunk = Document(id="d/0", parent_id="d", granularity=1, text="chunk", offset=0, location=[0, 5],
                     embedding=np.arange(6, dtype=np.float32).reshape(2, 3), field_name="title",
                     scores={"score": Score(0.5, "faiss.flat_l2", Direction.DISTANCE)})
    match = Document(id="m", adjacency=1, blob=b"\x00\x01", uri="file:///x", tags={"k": "v"}, weight=0.25)
    return Document(id="d", text="root", chunks=[chunk], matches=[match], mime_type="text/plain", modality="text")


class TestSerde:
    def test_document_round_trip_keeps_the_whole_tree(self) -> None:
        doc = tree()
        back = DOCUMENT.decode(DOCUMENT.encode(doc), DOCUMENT.fingerprint)
        assert back.chunks[0].scores == doc.chunks[0].scores
        assert np.array_equal(back.chunks[0].embedding, doc.chunks[0].embedding)
        assert back.chunks[0].embedding.shape == (2, 3)
        back.chunks[0].embedding = doc.chunks[0].embedding = None
        assert back == doc

    def test_big_endian_embeddings_are_written_little_endian(self) -> None:
        doc = Document(id="x", embedding=np.array([1.5, -2.0], dtype=">f4"))
        back = DOCUMENT.decode(DOCUMENT.encode(doc))
        assert back.embedding.dtype.str == "<f4" and back.embedding.tolist() == [1.5, -2.0]

    def test_envelopes_round_trip(self) -> None:
        request = Request("r", "search", [tree()], "reply", 123, {"top_k": 3, "filter": {"a": [1]}}, {0: 5})
        assert REQUEST.decode(REQUEST.encode(request)).parameters == {"top_k": 3, "filter": {"a": [1]}}
        part = PartialResult("r", 1, [0, 1], "reply", 123, {}, [tree()], error=None, stale=True)
        assert PARTIAL_RESULT.decode(PARTIAL_RESULT.encode(part)).stale is True
        reply = SearchReply("r", [tree()], True, [1], [], ["boom"])
        assert SEARCH_REPLY.decode(SEARCH_REPLY.encode(reply)).missing_shards == [1]

    @pytest.mark.parametrize("garbage", [b"", b"\x07not avro", b"\xff" * 20])
    def test_malformed_bytes_raise_serde_error(self, garbage: bytes) -> None:
        with pytest.raises(SerdeError, match="malformed"):
            DOCUMENT.decode(garbage)

    def test_trailing_bytes_and_foreign_fingerprint_are_rejected(self) -> None:
        data = DOCUMENT.encode(Document(id="x"))
        with pytest.raises(SerdeError, match="left after decoding"):
            DOCUMENT.decode(data + b"\x00")
        with pytest.raises(SerdeError, match="expected streamsearch.Document"):
            DOCUMENT.decode(data, REQUEST.fingerprint)


# -- bounded decoding: the pre-scan before fastavro's recursive reader -----------------------------

ROOT = Path(__file__).resolve().parents[3]

def nested_docs(depth: int) -> Document:
    doc = Document(id=f"d{depth}", text="leaf")
    for level in range(depth - 1, 0, -1):
        doc = Document(id=f"d{level}", chunks=[doc], matches=[Document(id=f"m{level}")] if level % 2 else [])
    return doc


def varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def refuses_quickly(data: bytes, match: str) -> None:
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(SerdeError, match=match):
            DOCUMENT.decode(data)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 1 << 20, (elapsed, peak)


class TestDecodeLimits:
    def test_the_all_default_prefix_is_24_bytes_and_its_repetition_a_valid_document(self) -> None:
        assert len(DEFAULT_PREFIX) == 24
        doc = STORED_DOCUMENT.decode(STORED_FORMAT + nested(3))  # valid Avro...
        assert doc.chunks[0].chunks[0].chunks == [] and doc.mime_type == ""
        with pytest.raises(InvalidDocumentError, match="id must be a non-empty string"):
            DOCUMENT.decode(nested(3))  # ...but no Document a stage takes: its id is empty

    def test_a_document_nested_5000_deep_is_refused_in_a_process_that_survives(self) -> None:
        """Before the pre-scan this killed the process (SIGSEGV in fastavro's reader): run it in a
        child, so that a regression kills the child and not pytest."""
        child = textwrap.dedent(f"""
            import struct
            from streams.exceptions import DecodeLimitError
            from streams.wire.serde import DOCUMENT, REQUEST
            prefix = {DEFAULT_PREFIX!r}
            innermost = prefix[:-1] + b"\\x00\\x00"
            records = {{
                "issue, 135 KB": prefix * 5625,  # as reported: the prefix repeated, never closed
                "closed": prefix * 4999 + innermost + b"\\x00\\x00" * 4999,
            }}
            for name, data in records.items():
                try:
                    DOCUMENT.decode(data)
                except DecodeLimitError as exc:
                    print(name, len(data), exc)
                else:
                    raise SystemExit(name + " decoded")
            # the same Document inside a Request envelope (the query path)
            request = b"\\x02r\\x06\\x02" + records["closed"] + b"\\x00\\x00\\x02t\\x02\\x00"
            try:
                REQUEST.decode(request)
            except DecodeLimitError as exc:
                print("request", exc)
            else:
                raise SystemExit("request decoded")
            """)
        done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        lines = done.stdout.splitlines()
        assert [line.split(" ")[0] for line in lines] == ["issue,", "closed", "request"]
        assert lines[0].startswith("issue, 135 KB 135000 ")
        for line in lines:
            assert "Documents nested deeper than max_document_depth=32 (STREAMSEARCH_MAX_DOCUMENT_DEPTH)" in line

    def test_deep_but_allowed_documents_decode_as_before(self) -> None:
        raw = nested(32)
        assert STORED_DOCUMENT.decode(STORED_FORMAT + raw).chunks[0].chunks[0].mime_type == ""
        doc = nested_docs(32)
        data = DOCUMENT.encode(doc)
        back = STORED_DOCUMENT.decode(STORED_FORMAT + data)
        assert back == doc and DOCUMENT.encode(back) == data
        assert back == doc_from_avro(fastavro.schemaless_reader(io.BytesIO(data), DOCUMENT.schema, None))

    def test_one_level_over_the_cap_is_refused_and_the_cap_is_configurable(self) -> None:
        with pytest.raises(DecodeLimitError, match="max_document_depth=32"):
            STORED_DOCUMENT.decode(STORED_FORMAT + nested(33))
        with pytest.raises(DecodeLimitError, match="max_document_depth=32"):
            STORED_DOCUMENT.decode(STORED_FORMAT + DOCUMENT.encode(nested_docs(33)))
        assert STORED_DOCUMENT.decode(STORED_FORMAT + nested(33), limits=DecodeLimits(max_document_depth=33)).chunks
        with pytest.raises(DecodeLimitError, match="max_document_depth=4 "):
            STORED_DOCUMENT.decode(STORED_FORMAT + nested(5), limits=DecodeLimits(max_document_depth=4))

    def test_documents_in_envelopes_count_from_depth_one(self) -> None:
        deep = nested_docs(32)
        request = Request("r", "search", [deep], "reply", 1, {}, {})
        assert REQUEST.decode(REQUEST.encode(request)).docs[0] == deep
        reply = SearchReply("r", [nested_docs(33)], False, [], [], [])
        with pytest.raises(DecodeLimitError, match="streamsearch.SearchReply record refused"):
            SEARCH_REPLY.decode(SEARCH_REPLY.encode(reply))

    def test_the_document_count_is_capped(self) -> None:
        doc = Document(id="d", chunks=[Document(id=f"d/{i}") for i in range(10)],
                       matches=[Document(id="m", chunks=[Document(id="m/0")])])
        data = DOCUMENT.encode(doc)
        assert STORED_DOCUMENT.decode(STORED_FORMAT + data, limits=DecodeLimits(max_documents=13)) == doc
        with pytest.raises(DecodeLimitError, match="more than max_documents=12 Documents"):
            STORED_DOCUMENT.decode(STORED_FORMAT + data, limits=DecodeLimits(max_documents=12))

    def test_limits_come_from_the_environment_and_are_checked(self) -> None:
        assert DecodeLimits.from_env({}) == DecodeLimits(32, 100_000) == DECODE_LIMITS
        assert DecodeLimits.from_env({"STREAMSEARCH_MAX_DOCUMENT_DEPTH": "64", "STREAMSEARCH_MAX_DOCUMENTS": "10"}) \
            == DecodeLimits(max_document_depth=64, max_documents=10)
        for bad in ("0", "-1", "ten", "1.5"):
            with pytest.raises(FlowConfigError, match=f"STREAMSEARCH_MAX_DOCUMENTS={bad!r}: expected a positive integer"):
                DecodeLimits.from_env({"STREAMSEARCH_MAX_DOCUMENTS": bad})
        with pytest.raises(FlowConfigError, match="max_document_depth must be a positive integer"):
            DecodeLimits(max_document_depth=0)

    @pytest.mark.parametrize("data, match", [
        (varint(2**40) + b"abc", "a length of 1099511627776 at byte 6 with 3 bytes left"),
        (varint(-5) + b"abc", "a length of -5"),
        (b"\x00" * 6 + b"\x00\x02" + varint(2**31) + b"xx", "a length of 2147483648"),  # blob
        (b"\x00" * 12 + b"\x00" * 8 + b"\x00" + varint(2**40) + b"\x02" * 100, "a block of 1099511627776 items"),
        (b"\x00" * 20 + b"\x00\x00\x00" + varint(2**60) + b"\x00" * 100, "a block of 1152921504606846976 items"),
        (b"\x00" * 9 + varint(-(2**40)) + varint(2**40) + b"\x00" * 50, "a block of 1099511627776 bytes"),
        (b"\x00" * 9 + varint(-2) + varint(2**20) + b"\x00" * 50, "a block of 1048576 bytes"),
        (b"\x80" * 11, "runs over 10 bytes"),
        (b"\x00\x04", "union branch 2"),
    ])
    def test_huge_declared_lengths_are_refused_before_anything_is_allocated(self, data: bytes, match: str) -> None:
        refuses_quickly(data, match)

    def test_varints_written_longer_than_needed_are_read_as_fastavro_reads_them(self) -> None:
        canonical = DOCUMENT.encode(Document(id="x", text="t"))
        # id "x"; parent null; granularity, adjacency 0; mime "text/plain"; text: branch 1; blob, uri
        # null; embedding, tags, field_name, modality and every later array count 0 in two bytes
        longer = (b"\x82\x00x" + b"\x00" + b"\x80\x00\x00" + b"\x14text/plain" + b"\x82\x00\x02t"
                  + b"\x00\x00" + b"\x80\x00" * 4 + struct.pack("<d", 1.0) + b"\x00"
                  + b"\x80\x00" * 4)
        assert fastavro.schemaless_reader(io.BytesIO(longer), DOCUMENT.schema, None) == \
            fastavro.schemaless_reader(io.BytesIO(canonical), DOCUMENT.schema, None)
        assert STORED_DOCUMENT.decode(STORED_FORMAT + longer) == Document(id="x", text="t")

    def test_a_truncated_record_and_trailing_bytes_are_named(self) -> None:
        data = DOCUMENT.encode(tree())
        for cut in (1, 10, len(data) // 2, len(data) - 1):
            with pytest.raises(SerdeError, match="malformed streamsearch.Document record"):
                STORED_DOCUMENT.decode(STORED_FORMAT + data[:cut])
        with pytest.raises(SerdeError, match="1 bytes left after decoding"):
            STORED_DOCUMENT.decode(STORED_FORMAT + data + b"\x00")


def documents() -> st.SearchStrategy[Document]:
    text = st.text(max_size=8)
    leaf = st.builds(
        Document, id=text, text=st.none() | text, blob=st.none() | st.binary(max_size=8), granularity=st.integers(-3, 3),
        tags=st.dictionaries(text, text, max_size=2), location=st.lists(st.integers(-2**31, 2**31 - 1), max_size=3),
        weight=st.floats(allow_nan=False), offset=st.integers(0, 10**6),
        embedding=st.none() | st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=4).map(
            lambda v: np.asarray(v, dtype=np.float32)),
        scores=st.dictionaries(text, st.builds(Score, st.floats(allow_nan=False), text, st.sampled_from(Direction)),
                               max_size=2))
    return st.recursive(leaf, lambda children: st.builds(
        lambda doc, chunks, matches: dataclasses.replace(doc, chunks=chunks, matches=matches),
        leaf, st.lists(children, max_size=3), st.lists(children, max_size=2)), max_leaves=12)


CODECS = [DOCUMENT, REQUEST, PARTIAL_RESULT, SEARCH_REPLY, STAGE_STATUS, SERVING_VERSION, VERSION_BUILD]


class TestDecodeFuzz:
    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=300))
    def test_random_bytes_raise_only_serde_error(self, data: bytes) -> None:
        for codec in CODECS:
            try:
                codec.decode(data)
            except (SerdeError, InvalidDocumentError):  # not Avro of the type, or a value no stage takes
                pass

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(doc=documents())
    def test_any_valid_document_passes_the_pre_scan_and_decodes_the_same(self, doc: Document) -> None:
        data = DOCUMENT.encode(doc)
        assert DOCUMENT.encode(STORED_DOCUMENT.decode(STORED_FORMAT + data)) == data

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(doc=documents(), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from(
        ["set", "insert", "delete"])), min_size=1, max_size=4))
    def test_damaged_documents_raise_only_serde_error_and_nothing_the_reader_took_is_refused(
            self, doc: Document, edits: list[tuple[int, int, str]]) -> None:
        data = bytearray(DOCUMENT.encode(doc))
        for where, byte, edit in edits:
            i = where % (len(data) + 1)
            if edit == "insert":
                data.insert(i, byte)
            elif i < len(data):
                if edit == "set":
                    data[i] = byte
                else:
                    del data[i]
        damaged = bytes(data)
        try:
            STORED_DOCUMENT.decode(STORED_FORMAT + damaged)
        except DecodeLimitError:
            return
        except SerdeError as refused:
            # Small records nest shallowly, so fastavro may run here: what it reads whole, the scan must
            # pass, but for negative indexes and lengths (fastavro takes branch -1 as the last one).
            buffer = io.BytesIO(damaged)
            try:
                doc_from_avro(fastavro.schemaless_reader(buffer, DOCUMENT.schema, None))
            except Exception:
                return
            if buffer.tell() == len(damaged):
                assert re.search(r"(union branch|enum symbol|a length of) -\d", str(refused)), refused


class TestTypedTags:
    """Tags keep their JSON type on the wire; records of the schema before typed tags stay readable."""

    def test_typed_tags_round_trip(self) -> None:
        doc = Document(id="d", tags={"title": "Soup", "minutes": 10, "rating": 4.5, "vegan": True},
                       chunks=[Document(id="d/0", tags={"n": -(2**63)})])
        assert DOCUMENT.decode(DOCUMENT.encode(doc), DOCUMENT.header()[1]) == doc
        assert STORED_DOCUMENT.decode(STORED_DOCUMENT.encode(doc)) == doc

    def test_a_tag_the_wire_cannot_carry_is_refused(self) -> None:
        for value in (2**63, float("nan"), None, ["a"]):
            with pytest.raises(InvalidDocumentError, match=r"tags\['x'\]"):
                validate_document(Document(id="d", tags={"x": value}))  # type: ignore[dict-item]

    def test_records_of_the_earlier_schema_are_read(self) -> None:
        earlier = serde._load_earlier("document-1")
        old = Document(id="d", text="t", tags={"minutes": "10"}, chunks=[Document(id="d/0", tags={"field": "t"})])
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, earlier, serde.doc_to_avro(old))
        header = fingerprint(to_parsing_canonical_form(earlier), "CRC-64-AVRO")
        assert DOCUMENT.decode(buffer.getvalue(), header) == old  # <flow>.ingest / .encoded from before
        assert STORED_DOCUMENT.decode(buffer.getvalue()) == old  # a shard's store from before
