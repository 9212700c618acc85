"""The Avro codecs: round trips, foreign fingerprints, random and damaged bytes, earlier schemas."""

import dataclasses
import io
import re

import fastavro
import numpy as np
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.document import Document, validate_document
from processors.exceptions import InvalidDocumentError
from processors.index.staging import without_blobs
from streams.exceptions import DecodeLimitError, SerdeError
from streams.wire.codec import (
    DOCUMENT,
    PARTIAL_RESULT,
    REQUEST,
    SEARCH_REPLY,
    SERVING_VERSION,
    STAGE_STATUS,
    STORED_DOCUMENT,
    STORED_FORMAT,
    VERSION_BUILD,
)
from streams.wire.documents import doc_from_avro, doc_to_avro
from streams.wire.headers import SCHEMA
from streams.wire.limits import DECODE_LIMITS
from streams.wire.prescan import Cuts, prescan
from streams.wire.scan_nodes import compile_scan
from streams.wire.records import PartialResult, Request, SearchReply
from streams.wire.schemas import load_earlier
from tests.streams.wire.fixtures import documents, tree, varint


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
            # pass, but for what the Avro spec forbids and fastavro lets through: negative indexes and
            # lengths (it takes branch -1 as the last one), a negative block size or one running past the
            # record's end (it skips the size unread), a varint over 10 bytes (it reads on).
            buffer = io.BytesIO(damaged)
            try:
                doc_from_avro(fastavro.schemaless_reader(buffer, DOCUMENT.schema, None))
            except Exception:
                return
            if buffer.tell() == len(damaged):
                assert re.search(r"(union branch|enum symbol|a length of|a block of) -\d|runs over 10 bytes"
                                 r"|a block of \d+ bytes at byte \d+ with \d+ bytes left", str(refused)), refused


class TestStoredFormCut:
    """A shard's stored document is cut from the record it read instead of encoded again; it must be what
    encoding would have stored (no embedding, no blob at any node) whatever the record holds."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(doc=documents())
    def test_the_cut_record_is_the_encoded_stored_document(self, doc: Document) -> None:
        data = DOCUMENT.encode(doc)
        cuts = Cuts()  # the scan alone: hypothesis's ids and texts are not all ones validation lets in
        prescan(data, compile_scan(DOCUMENT.schema), DECODE_LIMITS, "Document", cuts)
        decoded = STORED_DOCUMENT.decode(STORED_FORMAT + data)
        stored = STORED_DOCUMENT.cut(data, cuts)
        assert stored == STORED_DOCUMENT.encode(without_blobs(decoded))
        assert STORED_DOCUMENT.decode(stored) == without_blobs(_without_embeddings(decoded))

    def test_each_embedding_and_blob_is_cut_and_nothing_else(self) -> None:
        doc = tree()
        doc.blob = b"root bytes"
        doc.chunks[0].chunks = [Document(id="d/0/0", embedding=np.ones(4, np.float32), blob=b"leaf")]
        data = DOCUMENT.encode(doc)
        _, cuts = DOCUMENT.decode_record_cuts(data, {SCHEMA: DOCUMENT.fingerprint.encode()})
        assert cuts is not None and len(cuts) == 5  # root blob, 2 embeddings, the leaf's blob, the match's blob
        cut = [data[start:end] for start, end in cuts]
        assert cut[1].endswith(doc.chunks[0].embedding.tobytes()) and cut[0].endswith(b"root bytes")
        assert STORED_DOCUMENT.decode(STORED_DOCUMENT.cut(data, cuts)).chunks[0].text == "chunk"

    def test_a_record_of_the_earlier_schema_has_no_cuts(self) -> None:
        earlier = load_earlier("document-1")
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, earlier, doc_to_avro(Document(id="d", embedding=np.ones(2, np.float32))))
        header = fingerprint(to_parsing_canonical_form(earlier), "CRC-64-AVRO").encode()
        doc, cuts = DOCUMENT.decode_record_cuts(buffer.getvalue(), {SCHEMA: header})
        assert cuts is None and doc.embedding.tolist() == [1.0, 1.0]

    def test_a_block_of_chunks_written_with_its_size_is_encoded_not_cut(self) -> None:
        """Avro lets a writer give a block a negative count and its size in bytes (Java's blocking encoder
        does): cutting an embedding out of it would leave that size wrong, and the shard unable to read
        the document back."""
        chunk = DOCUMENT.encode(Document(id="d/0", embedding=np.ones(8, np.float32)))
        plain = DOCUMENT.encode(Document(id="d", chunks=[Document(id="d/0", embedding=np.ones(8, np.float32))]))
        before_chunks = plain.index(chunk) - 1  # the count byte of the one block: 1, zigzag 02
        sized = plain[:before_chunks] + varint(-1) + varint(len(chunk)) + chunk + plain[before_chunks + 1 + len(chunk):]
        doc, cuts = DOCUMENT.decode_record_cuts(sized, {})
        assert cuts is None and doc.chunks[0].embedding.tolist() == [1.0] * 8
        assert DOCUMENT.decode_record_cuts(plain, {})[1] is not None
        stored = STORED_DOCUMENT.encode(doc)  # what the shard stores instead: readable
        assert STORED_DOCUMENT.decode(stored).chunks[0].id == "d/0"

    def test_a_damaged_embedding_is_refused_as_before(self) -> None:
        data = DOCUMENT.encode(Document(id="d", embedding=np.ones(8, np.float32)))
        for damaged in (data[:-40], data[:20] + b"\x7f" + data[21:]):
            with pytest.raises(SerdeError, match="malformed"):
                DOCUMENT.decode_record_cuts(damaged, {})


def _without_embeddings(doc: Document) -> Document:
    return dataclasses.replace(doc, embedding=None, chunks=[_without_embeddings(c) for c in doc.chunks],
                               matches=[_without_embeddings(m) for m in doc.matches])


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
        earlier = load_earlier("document-1")
        old = Document(id="d", text="t", tags={"minutes": "10"}, chunks=[Document(id="d/0", tags={"field": "t"})])
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, earlier, doc_to_avro(old))
        header = fingerprint(to_parsing_canonical_form(earlier), "CRC-64-AVRO")
        assert DOCUMENT.decode(buffer.getvalue(), header) == old  # <flow>.ingest / .encoded from before
        assert STORED_DOCUMENT.decode(buffer.getvalue()) == old  # a shard's store from before


def test_every_reply_field_is_in_the_schema_and_survives_the_wire() -> None:
    """A new reply field is a schema line and a dataclass field; the mapping between them is derived, not listed."""
    import dataclasses

    schema_fields = [f["name"] for f in SEARCH_REPLY.schema["fields"]]
    assert sorted(schema_fields) == sorted(f.name for f in dataclasses.fields(SearchReply))
    reply = SearchReply(request_id="r1", docs=[Document(id="q", text="x")], partial=True, missing_shards=[1],
                        stale_shards=[2], errors=["e"], restoring_shards=[3], warnings=["w"], version=4)
    value, headers = SEARCH_REPLY.encode_record(reply, [])
    back = SEARCH_REPLY.decode_record(value, dict(headers))
    assert dataclasses.replace(back, docs=[]) == dataclasses.replace(reply, docs=[])
    assert [d.id for d in back.docs] == ["q"]
