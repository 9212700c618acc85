from pathlib import Path

import numpy as np
import pytest

from processors.document import Document
from processors.encoders.transformer import TransformerEncoder, TransformerEncoderConfig
from processors.exceptions import ConfigError, ModelNotFoundError


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
