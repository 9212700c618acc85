from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from processors.document import Document
from processors.encoders.transformer import TransformerEncoder, TransformerEncoderConfig
from processors.exceptions import BadDocumentError, ConfigError, DimensionMismatchError, ModelNotFoundError


@pytest.fixture(scope="module")
def encoder() -> TransformerEncoder:
    enc = TransformerEncoder(TransformerEncoderConfig(traversal_paths=("c",)))
    enc.warm_up()
    return enc


class TestTransformerEncoder:
    def test_embeddings_are_normalised_and_semantic(self, encoder: TransformerEncoder) -> None:
        vectors = encoder.encode_texts(["parse command line arguments", "Command-line parsing library",
                                        "a recipe for banana bread"])
        assert vectors.shape == (3, 384) and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3

    def test_order_is_kept_despite_length_sorted_batches(self, encoder: TransformerEncoder) -> None:
        texts = ["a much longer text than the others, with many words in it", "short", "medium length text"]
        together = encoder.encode_texts(texts)
        alone = np.stack([encoder.encode_texts([t])[0] for t in texts])
        assert np.allclose(together, alone, atol=1e-4)

    def test_traversal_paths_choose_what_is_embedded(self, encoder: TransformerEncoder) -> None:
        doc = Document(id="d", text="root text", chunks=[Document(id="d/0", text="chunk text")])
        chunked = encoder.run(docs=[doc]).docs[0]
        assert chunked.embedding is None and chunked.chunks[0].embedding is not None
        rooted = encoder.run(docs=[doc], traversal_paths=["r"]).docs[0]
        assert rooted.embedding is not None and rooted.chunks[0].embedding is None
        assert doc.chunks[0].embedding is None  # the caller's document is untouched

    def test_pooling_strategies_differ(self) -> None:
        text = ["streaming search on kafka"]
        pooled = {}
        for strategy in ("mean", "cls", "max"):
            enc = TransformerEncoder(TransformerEncoderConfig(pooling_strategy=strategy))
            pooled[strategy] = enc.encode_texts(text)[0]
        assert not np.allclose(pooled["mean"], pooled["cls"])
        assert not np.allclose(pooled["mean"], pooled["max"])

    def test_missing_model_and_bad_config_fail_clearly(self, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="no model"):
            TransformerEncoder(TransformerEncoderConfig(pretrained_model_name_or_path=str(tmp_path))).warm_up()
        with pytest.raises(ConfigError):
            TransformerEncoderConfig(pooling_strategy="median")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="batch_tokens"):
            TransformerEncoderConfig(batch_tokens=0)


class TestTokenBudget:
    """Forward passes are sized by padded tokens: many short texts per pass, few long ones."""

    TEXTS = ([f"note {i}" for i in range(40)]
             + [" ".join(f"word{i}x{j}" for j in range(60)) for i in range(6)])

    def passes(self, monkeypatch: pytest.MonkeyPatch, config: TransformerEncoderConfig) -> tuple[np.ndarray, list[tuple[int, int]]]:
        encoder = TransformerEncoder(config)
        encoder.warm_up()
        loaded = encoder._loaded
        assert loaded is not None
        model, shapes = loaded.model, []

        def recording(**batch):  # type: ignore[no-untyped-def]
            shapes.append(tuple(batch["input_ids"].shape))
            return model(**batch)  # type: ignore[operator]

        monkeypatch.setattr(loaded, "model", recording)
        return encoder.encode_texts(self.TEXTS), shapes

    def test_no_pass_exceeds_the_budget_and_the_vectors_do_not_change(self, monkeypatch: pytest.MonkeyPatch) -> None:
        by_count, count_shapes = self.passes(monkeypatch, TransformerEncoderConfig(batch_size=32, batch_tokens=10**6))
        by_tokens, token_shapes = self.passes(monkeypatch, TransformerEncoderConfig(batch_size=32, batch_tokens=256))
        assert [texts for texts, _ in count_shapes] == [32, 14]
        assert all(texts * length <= 256 or texts == 1 for texts, length in token_shapes)
        assert max(texts for texts, _ in token_shapes) == 32  # the short notes still fill a pass
        assert min(texts for texts, _ in token_shapes) < 4  # the long texts go a few at a time
        assert np.allclose(by_count, by_tokens, atol=1e-5)


class TestGivenEmbeddings:
    """Nodes that already carry an embedding are checked, never re-encoded; the model is not
    even loaded when nothing needs it (these tests use an encoder whose model never loads)."""

    @staticmethod
    def unloaded(monkeypatch: pytest.MonkeyPatch, **config: object) -> tuple[TransformerEncoder, list[list[str]]]:
        enc = TransformerEncoder(TransformerEncoderConfig(**config))  # type: ignore[arg-type]
        calls: list[list[str]] = []

        def fake_encode(texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
            calls.append(list(texts))
            return np.full((len(texts), 384), 0.5, np.float32), [1] * len(texts)

        def no_model() -> None:
            raise AssertionError("the model must not load")

        monkeypatch.setattr(enc, "encode_counted", fake_encode)
        monkeypatch.setattr(enc, "_warm", no_model)
        return enc, calls

    def test_pre_embedded_documents_skip_the_model_and_keep_their_bytes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        enc, calls = self.unloaded(monkeypatch)
        vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
        docs = [Document(id="v", text="has text too", embedding=vector), Document(id="only-vector", embedding=vector)]
        out = enc.run(docs=docs).docs
        assert calls == [] and enc._loaded is None
        assert all(d.embedding is not None and d.embedding.tobytes() == vector.tobytes() for d in out)
        assert out[0].embedding.dtype == np.float32

    def test_only_nodes_without_an_embedding_are_encoded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        enc, calls = self.unloaded(monkeypatch, traversal_paths=("c",))
        given = np.ones(384, np.float32) / np.sqrt(384)
        doc = Document(id="d", text="root", chunks=[Document(id="d/0", text="given", embedding=given),
                                                    Document(id="d/1", text="to encode")])
        out = enc.run(docs=[doc]).docs[0]
        assert calls == [["to encode"]]
        assert out.chunks[0].embedding.tobytes() == given.tobytes()
        assert np.allclose(out.chunks[1].embedding, 0.5)
        assert doc.chunks[1].embedding is None  # the caller's document is untouched

    def test_query_path_root_embeddings_skip_the_model(self, monkeypatch: pytest.MonkeyPatch) -> None:
        enc, calls = self.unloaded(monkeypatch, traversal_paths=("c",))
        queries = [Document(id=f"q{i}", embedding=np.eye(384, dtype=np.float32)[i]) for i in range(3)]
        out = enc.run(docs=queries, traversal_paths=["r"]).docs
        assert calls == [] and [int(np.argmax(q.embedding)) for q in out] == [0, 1, 2]

    @pytest.mark.parametrize("embedding, error, message", [
        (np.ones(383, np.float32), DimensionMismatchError, r"shape \(383,\).*384-d"),
        (np.ones((2, 384), np.float32), DimensionMismatchError, r"shape \(2, 384\)"),
        (np.full(384, np.nan, np.float32), BadDocumentError, "NaN or infinite"),
        (np.array(["x"] * 384), BadDocumentError, "numeric"),
    ])
    def test_a_given_embedding_that_does_not_fit_is_rejected_clearly(
            self, monkeypatch: pytest.MonkeyPatch, embedding: np.ndarray, error: type, message: str) -> None:
        enc, calls = self.unloaded(monkeypatch)
        with pytest.raises(error, match=rf"document 'bad'.*{message}"):
            enc.run(docs=[Document(id="ok", text="fine"), Document(id="bad", embedding=embedding)])
        assert calls == []  # checked before anything is encoded

    def test_a_row_vector_fits(self, monkeypatch: pytest.MonkeyPatch) -> None:
        enc, _ = self.unloaded(monkeypatch)
        row = np.ones((1, 384), np.float32)
        assert enc.run(docs=[Document(id="r", embedding=row)]).docs[0].embedding.shape == (1, 384)

    def test_the_dimension_is_the_loaded_models(self, encoder: TransformerEncoder) -> None:
        assert encoder.output_dim == encoder.dim == 384
        with pytest.raises(DimensionMismatchError):
            encoder.run(docs=[Document(id="bad", embedding=np.ones(768, np.float32))], traversal_paths=["r"])


class TestTruncation:
    """A text longer than max_length tokens is embedded from its start only, and reported."""

    LOG_LINE = "2026-11-30 10:51:06 INFO worker-3 processed batch 1234 from queue ingest in 12 ms"

    def test_a_root_text_over_max_length_is_reported_with_its_document(self) -> None:
        enc = TransformerEncoder(TransformerEncoderConfig(max_length=32))
        long_text = " ".join([self.LOG_LINE] * 25)
        result = enc.run(docs=[Document(id="log", text=long_text), Document(id="short", text="a short text")])
        [truncated] = result.truncated
        assert (truncated.doc_id, truncated.node_id, truncated.max_length) == ("log", "log", 32)
        assert truncated.tokens > 25 * 20  # the whole text's tokens, not the 32 read
        assert all(doc.embedding is not None for doc in result.docs)

    def test_chunks_are_reported_by_node_and_texts_that_fit_are_not(self, encoder: TransformerEncoder) -> None:
        doc = Document(id="d", chunks=[Document(id="d/0", text="fits easily"),
                                       Document(id="d/1", text=" ".join([self.LOG_LINE] * 25))])
        result = encoder.run(docs=[doc])
        assert [(t.doc_id, t.node_id) for t in result.truncated] == [("d", "d/1")]
        assert encoder.run(docs=[Document(id="e", chunks=[Document(id="e/0", text=self.LOG_LINE)])]).truncated == ()

    def test_a_sentencizer_window_fits_the_encoder(self, encoder: TransformerEncoder) -> None:
        """The flows' pairing (max_sent_len 300 characters, max_length 128 tokens) truncates no window
        of a long unpunctuated log line, so its last words are embedded too."""
        from processors.segmenters.sentence import Sentencizer, SentencizerConfig

        text = " ".join([self.LOG_LINE] * 24 + [self.LOG_LINE.replace("ingest", "whale")])
        segmented = Sentencizer(SentencizerConfig(min_sent_len=8, max_sent_len=300)).run(
            docs=[Document(id="log", text=text)]).docs
        narrow = TransformerEncoder(TransformerEncoderConfig(traversal_paths=("c",), max_length=128))
        result = narrow.run(docs=segmented)
        assert result.truncated == () and "whale" in result.docs[0].chunks[-1].text


def test_a_caller_waits_for_one_forward_pass_of_another_not_for_all_of_them() -> None:
    """The encode stage embeds queries while it embeds a long document: a query takes the next turn
    between two passes of the document, and both get the vectors they would get alone."""
    import threading
    import time

    encoder = TransformerEncoder(TransformerEncoderConfig(batch_size=1))
    encoder.warm_up()
    long_texts = [f"sentence number {i} of a long document about lighthouses" for i in range(60)]
    query = ["a lamp that guides ships"]
    alone = encoder.encode_texts(long_texts), encoder.encode_texts(query)
    done: list[str] = []
    results: dict[str, np.ndarray] = {}

    def encode(name: str, texts: list[str]) -> None:
        results[name] = encoder.encode_texts(texts)
        done.append(name)

    document = threading.Thread(target=encode, args=("document", long_texts))
    document.start()
    while encoder._lock._serving < 1:  # the document's first pass is over: it is mid-way
        time.sleep(0.001)  # polling interval of a condition
    passes_before = encoder._lock._serving
    encode("query", query)
    passes_during = encoder._lock._serving - passes_before
    document.join()
    assert done == ["query", "document"], "the query waited for the whole document"
    # The document's pass under way, then the query's own: counting its tokens takes no turn.
    assert passes_during <= 2, f"the query waited for {passes_during - 1} passes"
    assert np.array_equal(results["document"], alone[0]) and np.array_equal(results["query"], alone[1])
