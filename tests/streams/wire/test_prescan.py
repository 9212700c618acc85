"""Bounded decoding: the pre-scan before fastavro's recursive reader."""

import io
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import fastavro
import pytest

from processors.document import Document
from processors.exceptions import InvalidDocumentError
from streams.exceptions import DecodeLimitError, FlowConfigError, SerdeError
from streams.wire.codec import DOCUMENT, REQUEST, SEARCH_REPLY, STORED_DOCUMENT, STORED_FORMAT
from streams.wire.documents import doc_from_avro
from streams.wire.limits import DECODE_LIMITS, DecodeLimits
from streams.wire.records import Request, SearchReply
from tests.streams.wire.fixtures import DEFAULT_PREFIX, nested, nested_docs, tree, varint

ROOT = Path(__file__).resolve().parents[3]


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
            from streams.wire.codec import DOCUMENT, REQUEST
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
        assert DecodeLimits.from_env({"STREAMSEARCH_MAX_DOCUMENT_DEPTH": "500"}).max_document_depth == 500
        with pytest.raises(FlowConfigError, match="STREAMSEARCH_MAX_DOCUMENT_DEPTH='5000': at most 500"):
            DecodeLimits.from_env({"STREAMSEARCH_MAX_DOCUMENT_DEPTH": "5000"})  # fastavro's reader crashed there
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
