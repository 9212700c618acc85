import numpy as np
import pytest

from processors.document import Direction, Document, Score
from streams.exceptions import SerdeError
from streams.serde import DOCUMENT, PARTIAL_RESULT, REQUEST, SEARCH_REPLY, PartialResult, Request, SearchReply


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
