"""Pre-embedded documents and vector queries through the stage handlers, without a broker: the
client builds query documents from vectors, the encode stage's query and index paths carry a
given embedding through untouched (the model is never loaded for it), and one that does not fit
the model is rejected with a reason (error reply on the query path, dead letter on the index path)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from processors.document import Document
from processors.encoders.transformer import TransformerEncoder
from processors.exceptions import DimensionMismatchError, InvalidParameterError
from processors.query.parameters import SearchParameters
from streams.wire import headers as h
from streams.client import Client
from streams.client.queries import query_documents
from streams.kafka.settings import KafkaSettings
from streams.wire.partitioner import partition_of
from streams.stages.fanout import QueryFanout
from streams.wire.codec import DOCUMENT, PARTIAL_RESULT, REQUEST, SEARCH_REPLY
from streams.wire.records import Request
from streams.runtime.spec import Inbound
from streams.wire.topics import FlowTopics
from streams.stages.documents import DocumentTransform

DIM = 384
TOPICS = FlowTopics("vec", 2)


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def modelless_encoder(monkeypatch: pytest.MonkeyPatch) -> TransformerEncoder:
    """The real encoder, but loading or calling the model fails the test."""
    encoder = TransformerEncoder()

    def forbidden(*_: object) -> None:
        raise AssertionError("the model must not be loaded or called for pre-embedded documents")

    monkeypatch.setattr(encoder, "_warm", forbidden)
    monkeypatch.setattr(encoder, "encode_texts", forbidden)
    return encoder


class TestQueryDocuments:
    def test_vectors_become_query_documents_with_exact_float32_rows(self) -> None:
        vectors = unit_vectors(3)
        docs = query_documents(None, vectors)
        assert [d.id for d in docs] == ["q0", "q1", "q2"]
        assert all(d.text is None and d.embedding.dtype == np.dtype("<f4") for d in docs)
        assert b"".join(d.embedding.tobytes() for d in docs) == vectors.tobytes()

    def test_lists_and_float64_are_sent_as_float32(self) -> None:
        rows = [[0.25, -1.5, 3.0], [1.0, 2.0, 4.0]]
        docs = query_documents(None, rows)
        assert np.array_equal(np.stack([d.embedding for d in docs]), np.array(rows, np.float32))
        docs = query_documents(None, np.array(rows, np.float64))
        assert docs[0].embedding.dtype == np.float32

    def test_texts_as_before(self) -> None:
        assert [(d.id, d.text) for d in query_documents("one", None)] == [("q0", "one")]
        assert [d.text for d in query_documents(["a", "b"], None)] == ["a", "b"]

    def test_texts_and_vectors_together_make_queries_with_both(self) -> None:
        vectors = unit_vectors(2)
        docs = query_documents(["a", "b"], vectors)
        assert [(d.id, d.text) for d in docs] == [("q0", "a"), ("q1", "b")]
        assert b"".join(d.embedding.tobytes() for d in docs) == vectors.tobytes()

    @pytest.mark.parametrize("texts, vectors, message", [
        (None, None, "texts, vectors or images"),
        ("one", [[1.0], [2.0]], "one text per vector, got 1 texts and 2 vectors"),
        (["  "], [[1.0]], "query text 0 is empty"),
        (["fine"], [[float("nan")]], "finite"),
        ([], None, "at least one query text"),
        (["fine", "  "], None, "query text 1 is empty or only whitespace"),
        (["a\x00b"], None, "query text 0 contains NUL"),
        (None, np.ones(DIM, np.float32), r"2-D .* shape \(384,\); for one vector v pass \[v\]"),
        (None, np.ones((1, 2, DIM), np.float32), "2-D"),
        (None, np.ones((0, DIM), np.float32), "non-empty"),
        (None, np.ones((2, 0), np.float32), "non-empty"),
        (None, [], "2-D"),
        (None, [[1.0, 2.0], [3.0]], "2-D"),
        (None, [["a", "b"]], "numbers"),
        (None, [[True, False]], "numbers"),
        (None, [[1.0, float("nan")]], "finite"),
        (None, [[1.0, float("inf")]], "finite"),
        (None, np.array([[1e39, 0.0]]), "finite"),  # beyond float32
    ])
    def test_invalid_input_raises_value_error(self, texts: object, vectors: object, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            query_documents(texts, vectors)  # type: ignore[arg-type]

    def test_client_rejects_before_sending_anything(self) -> None:
        client = Client("nowhere", settings=KafkaSettings("127.0.0.1:9"))  # never contacted
        try:
            with pytest.raises(ValueError, match="2-D"):
                client.search(vectors=np.ones(DIM, np.float32))
            with pytest.raises(ValueError, match="one text per vector"):
                client.search_async("text", vectors=unit_vectors(2))
            assert client._replies is None  # no reply topic was even created
        finally:
            client.close()


def query_record(request: Request) -> Inbound:
    return Inbound(TOPICS.query, 0, 0, request.request_id.encode(), REQUEST.encode(request), {
        h.REQUEST_ID: request.request_id.encode(), h.REPLY_TO: b"vec.reply.t",
        h.DEADLINE_MS: str(request.deadline_ms).encode(), h.SCHEMA: REQUEST.header()[1]})


def search_request(docs: list[Document], request_id: str = "r1") -> Request:
    return Request(request_id, "search", docs, "vec.reply.t", int(time.time() * 1000) + 60_000, {}, {})


class TestQueryPath:
    def test_vector_queries_reach_every_shard_unchanged_without_the_model(
            self, modelless_encoder: TransformerEncoder) -> None:
        fanout = QueryFanout(encoder=modelless_encoder, topics=TOPICS, defaults=SearchParameters())
        vectors = unit_vectors(2)
        outputs = fanout.process([query_record(search_request(query_documents(None, vectors)))])
        searches = [o for o in outputs if o.topic == TOPICS.search]
        assert sorted(o.partition for o in searches) == [0, 1]
        for output in searches:
            sent = REQUEST.decode(output.value)
            assert [d.embedding.tobytes() for d in sent.docs] == [row.tobytes() for row in vectors]
        opening = PARTIAL_RESULT.decode(next(o for o in outputs if o.topic == TOPICS.partials).value)
        assert [d.id for d in opening.docs] == ["q0", "q1"] and all(d.embedding is None for d in opening.docs)

    @pytest.mark.parametrize("docs, error, message", [
        ([Document(id="q0", embedding=np.ones(128, np.float32))], InvalidParameterError,
         "a vector of 128 values; this flow's model produces 384-d vectors"),
        ([Document(id="q0")], InvalidParameterError, "neither text"),
        ([Document(id="q0", text=" \n\t")], InvalidParameterError, "whitespace does not count"),
    ])
    def test_a_query_that_does_not_fit_gets_an_error_reply(
            self, modelless_encoder: TransformerEncoder, docs: list[Document], error: type[Exception],
            message: str) -> None:
        fanout = QueryFanout(encoder=modelless_encoder, topics=TOPICS, defaults=SearchParameters())
        record = query_record(search_request(docs))
        with pytest.raises(error, match=message) as failure:
            fanout.process([record])
        [reply] = fanout.on_failure(record, failure.value)
        assert message in SEARCH_REPLY.decode(reply.value).errors[0]


    def test_a_text_query_to_an_image_only_encoder_gets_an_error_reply_naming_it(self) -> None:
        from processors.encoders.image import ImageEncoder

        fanout = QueryFanout(encoder=ImageEncoder(), topics=TOPICS, defaults=SearchParameters())  # never loads:
        record = query_record(search_request([Document(id="q0", text="a red disc")]))  # nothing to embed
        [reply] = fanout.process([record])  # the one request of the batch is answered, not searched
        assert reply.topic == "vec.reply.t"
        [error] = SEARCH_REPLY.decode(reply.value).errors
        assert "documents ['q0'] have nothing this flow's encoder (ImageEncoder) embeds" in error


def ingest_record(doc: Document, offset: int = 7) -> Inbound:
    partition = partition_of(doc.id.encode(), TOPICS.partitions)  # where the Client writes it
    return Inbound(TOPICS.ingest, partition, offset, doc.id.encode(), DOCUMENT.encode(doc), {h.SCHEMA: DOCUMENT.header()[1]})


class TestIndexPath:
    def test_a_pre_embedded_document_is_forwarded_with_its_exact_vector(
            self, modelless_encoder: TransformerEncoder) -> None:
        transform = DocumentTransform(run=lambda docs: modelless_encoder.run(docs=docs).docs,
                                      output_topic=TOPICS.encoded, ingest_topic=TOPICS.ingest,
                                      partitions=TOPICS.partitions)
        vector = unit_vectors(1)[0]
        [output] = transform.process([ingest_record(Document(id="pre", text="label", embedding=vector))])
        assert (output.topic, output.partition, output.key) == (TOPICS.encoded, partition_of(b"pre", 2), b"pre")
        encoded = DOCUMENT.decode(output.value)
        assert encoded.embedding.dtype == np.dtype("<f4") and encoded.embedding.tobytes() == vector.tobytes()

    def test_a_wrong_dimension_fails_the_record_with_its_reason(self, modelless_encoder: TransformerEncoder) -> None:
        transform = DocumentTransform(run=lambda docs: modelless_encoder.run(docs=docs).docs,
                                      output_topic=TOPICS.encoded, ingest_topic=TOPICS.ingest,
                                      partitions=TOPICS.partitions)
        record = ingest_record(Document(id="wide", embedding=np.ones(768, np.float32)))
        with pytest.raises(DimensionMismatchError, match=r"document 'wide': embedding has shape \(768,\).*384-d"):
            transform.process([record])
        [marker] = transform.on_failure(record, DimensionMismatchError("x"))  # the loop dead-letters the record
        assert marker.value is None and marker.partition == record.partition


class TestWithoutAModel:
    """A flow without ``stages.encode``: the fan-out has no encoder, and checks the vectors itself."""

    def test_vector_queries_fan_out_unchanged(self) -> None:
        fanout = QueryFanout(encoder=None, dim=DIM, topics=TOPICS, defaults=SearchParameters(), stage="join")
        vectors = unit_vectors(2, seed=3)
        outputs = fanout.process([query_record(search_request(query_documents(None, vectors)))])
        searches = [o for o in outputs if o.topic == TOPICS.search]
        assert sorted(o.partition for o in searches) == [0, 1]
        assert [d.embedding.tobytes() for d in REQUEST.decode(searches[0].value).docs] == [r.tobytes() for r in vectors]

    @pytest.mark.parametrize("doc, message", [
        (Document(id="q0", text="what is kafka?"), "has no encoder to embed its text .*no stages.encode"),
        (Document(id="q0", embedding=np.ones(12, np.float32)), "a vector of 12 values; this flow's vectors are 384-d"),
    ])
    def test_a_text_or_a_vector_that_does_not_fit_is_refused(self, doc: Document, message: str) -> None:
        fanout = QueryFanout(encoder=None, dim=DIM, topics=TOPICS, defaults=SearchParameters(), stage="join")
        with pytest.raises(InvalidParameterError, match=message):
            fanout.process([query_record(search_request([doc]))])

    def test_it_needs_the_dimension(self) -> None:
        with pytest.raises(ValueError, match="dimension"):
            QueryFanout(encoder=None, topics=TOPICS, defaults=SearchParameters())
