"""The cross-modal encoder: ConSE's arithmetic, the joint space's shape, a text finding the pictures of its
label on a labelled set (Tux Paint's stamps, installed by ``make install``), hostile images refused with
their name, and the CLIP interface on a small CLIP written here (random weights: its shapes and plumbing,
not its quality)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from processors.document import Document
from processors.encoders.conse import conse_vectors, load_class_names
from processors.encoders.cross_modal import CrossModalEncoder, CrossModalEncoderConfig
from processors.exceptions import ConfigError, InvalidDocumentError, ModelNotFoundError
from streams.demo.stamps import LabelledImage, tuxpaint_stamps


@pytest.fixture(scope="module")
def encoder() -> CrossModalEncoder:
    encoder = CrossModalEncoder()
    encoder.warm_up()
    return encoder


@pytest.fixture(scope="module")
def stamps() -> list[LabelledImage]:
    """Five pictures each of birds, fruit, road signs and musical instruments."""
    chosen: dict[str, list[LabelledImage]] = {}
    for image in tuxpaint_stamps():
        if image.label in ("bird", "fruit", "road sign", "musical instrument"):
            chosen.setdefault(image.label, []).append(image)
    return [image for images in chosen.values() for image in images[::max(1, len(images) // 5)][:5]]


class TestConSE:
    def test_one_class_gives_that_class_s_vector(self) -> None:
        classes = np.eye(4, dtype=np.float32)
        probabilities = np.array([[0.1, 0.6, 0.2, 0.1]], np.float32)
        assert np.array_equal(conse_vectors(probabilities, classes, top=1), classes[[1]])

    def test_the_top_classes_mix_by_their_renormalised_probabilities(self) -> None:
        classes = np.eye(4, dtype=np.float32)
        probabilities = np.array([[0.1, 0.6, 0.2, 0.1]], np.float32)
        mixed = conse_vectors(probabilities, classes, top=2)[0]
        expected = np.array([0, 0.75, 0.25, 0]) / np.linalg.norm([0.75, 0.25])
        assert np.allclose(mixed, expected, atol=1e-6)

    def test_class_names_must_be_one_per_class(self, tmp_path: Path) -> None:
        (tmp_path / "names.json").write_text(json.dumps(["cat", "dog"]))
        with pytest.raises(ModelNotFoundError, match="1000 class names"):
            load_class_names(str(tmp_path / "names.json"))
        with pytest.raises(ModelNotFoundError, match="cannot read"):
            load_class_names(str(tmp_path / "missing.json"))

    def test_settings_out_of_range_are_refused(self) -> None:
        with pytest.raises(ConfigError, match="image_weight"):
            CrossModalEncoderConfig(image_weight=1.0)
        with pytest.raises(ConfigError, match="top_classes"):
            CrossModalEncoderConfig(top_classes=0)


class TestJointSpace:
    def test_images_and_texts_share_one_space_of_unit_vectors(
            self, encoder: CrossModalEncoder, stamps: list[LabelledImage]) -> None:
        docs = [Document(id="picture", blob=stamps[0].path.read_bytes()), Document(id="words", text="a bird")]
        picture, words = (doc.embedding for doc in encoder.run(docs=docs).docs)
        assert picture.shape == words.shape == (encoder.output_dim,) == (1280 + 384,)
        assert np.isclose(np.linalg.norm(picture), 1, atol=1e-5) and np.isclose(np.linalg.norm(words), 1, atol=1e-5)
        assert not words[:1280].any()  # a text has no image features: it meets pictures in the text part only

    def test_a_label_name_finds_the_pictures_of_that_label_above_the_others(
            self, encoder: CrossModalEncoder, stamps: list[LabelledImage]) -> None:
        docs = encoder.run(docs=[Document(id=s.id, blob=s.path.read_bytes()) for s in stamps]).docs
        matrix = np.stack([doc.embedding for doc in docs])
        labels = sorted({s.label for s in stamps})
        for label in labels:
            scores = matrix @ encoder.run(docs=[Document(id="q", text=label)]).docs[0].embedding
            ranked = [stamps[i].label for i in np.argsort(-scores, kind="stable")[:5]]
            assert ranked.count(label) >= 3, (label, ranked)  # a random ranking: 1.25 of 5
            mean = {other: scores[[i for i, s in enumerate(stamps) if s.label == other]].mean() for other in labels}
            assert max(mean, key=mean.__getitem__) == label, (label, mean)

    def test_a_picture_is_nearest_to_itself(self, encoder: CrossModalEncoder, stamps: list[LabelledImage]) -> None:
        vectors = np.stack([doc.embedding for doc in encoder.run(
            docs=[Document(id=s.id, blob=s.path.read_bytes()) for s in stamps[:6]]).docs])
        assert list(np.argmax(vectors @ vectors.T, axis=1)) == list(range(6))

    @pytest.mark.parametrize("blob, reason", [(b"%PDF-1.4 not an image", "not an image"), (b"", "no image bytes")])
    def test_a_hostile_image_is_refused_naming_its_node(self, encoder: CrossModalEncoder, blob: bytes, reason: str) -> None:
        with pytest.raises(InvalidDocumentError, match=f"document 'bad'.*{reason}"):
            encoder.run(docs=[Document(id="bad", blob=blob)])

    def test_a_long_text_is_reported_as_truncated(self, encoder: CrossModalEncoder) -> None:
        result = encoder.run(docs=[Document(id="long", text="bird " * 400)])
        assert [(t.doc_id, t.max_length) for t in result.truncated] == [("long", 256)]


def tiny_clip(folder: Path) -> Path:
    """A CLIP of two one-layer towers and random weights, saved as ``CLIPModel`` and ``CLIPProcessor`` do."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**tower, "vocab_size": len(vocab), "max_position_embeddings": 16},
                        vision_config={**tower, "image_size": 32, "patch_size": 8}, projection_dim=24)
    path = folder / "clip"
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(path)
    return path


class TestLocalCLIP:
    def test_a_local_clip_directory_replaces_conse(self, tmp_path: Path) -> None:
        from PIL import Image

        clip = CrossModalEncoder(CrossModalEncoderConfig(clip_model_path=str(tiny_clip(tmp_path))))
        assert clip.output_dim == 24  # from config.json, before any weight loads
        png = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(png, format="PNG")
        docs = [Document(id="picture", blob=png.getvalue()), Document(id="words", text="red " * 40)]
        result = clip.run(docs=docs)
        for doc in result.docs:
            assert doc.embedding.shape == (24,) and np.isclose(np.linalg.norm(doc.embedding), 1, atol=1e-5)
        assert [(t.doc_id, t.max_length) for t in result.truncated] == [("words", 16)]  # the text tower's positions

    def test_a_folder_that_is_not_a_clip_model_is_named(self, tmp_path: Path) -> None:
        clip = CrossModalEncoder(CrossModalEncoderConfig(clip_model_path=str(tmp_path)))
        with pytest.raises(ModelNotFoundError, match="projection_dim"):
            clip.output_dim  # noqa: B018 -- reading it is what fails
