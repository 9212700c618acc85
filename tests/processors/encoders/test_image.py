"""The image encoder on the packaged EfficientNet-Lite0 weights: unit vectors that keep an image nearer to
a resized copy of itself than to another picture; text nodes left alone; a bad image refused by name."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from processors.document import Document
from processors.encoders.image import ImageEncoder, ImageEncoderConfig
from processors.exceptions import ConfigError, DimensionMismatchError, InvalidDocumentError


def picture(kind: str, size: tuple[int, int] = (320, 240)) -> bytes:
    image = Image.new("RGB", size, (235, 235, 225))
    draw = ImageDraw.Draw(image)
    w, h = size
    if kind == "disc":
        draw.ellipse((w * 0.25, h * 0.2, w * 0.75, h * 0.8), fill=(200, 20, 20))
    else:  # stripes
        for x in range(0, w, max(1, w // 12)):
            draw.rectangle((x, 0, x + w // 24, h), fill=(20, 40, 180))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if size[0] > 300 else "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def encoder() -> ImageEncoder:
    encoder = ImageEncoder(ImageEncoderConfig(batch_size=2))
    encoder.warm_up()
    return encoder


def test_embeddings_are_unit_vectors_that_know_an_image_from_another(encoder: ImageEncoder) -> None:
    vectors = encoder.encode_images([picture("disc"), picture("disc", (160, 120)), picture("stripes")])
    assert vectors.shape == (3, encoder.output_dim) == (3, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, different = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.75 and similar > different + 0.3, (similar, different)  # measured 0.85 and 0.28
    again = encoder.encode_images([picture("stripes"), picture("disc")])  # batch order does not matter
    assert np.allclose(again, vectors[[2, 0]], atol=1e-5)
    probabilities = encoder.class_probabilities([picture("disc")])
    assert probabilities.shape == (1, 1000) and abs(float(probabilities.sum()) - 1.0) < 1e-4


def test_run_embeds_image_nodes_only_and_checks_given_vectors(encoder: ImageEncoder) -> None:
    docs = [Document(id="img", blob=picture("disc"), mime_type="image/jpeg"),
            Document(id="txt", text="a red disc"),
            Document(id="given", embedding=np.ones(1280, np.float32))]
    out = encoder.run(docs=docs).docs
    assert out[0].embedding is not None and out[0].embedding.shape == (1280,)
    assert out[1].embedding is None and docs[0].embedding is None  # a copy: the caller's documents unchanged
    assert out[2].embedding is docs[2].embedding or np.array_equal(out[2].embedding, docs[2].embedding)
    with pytest.raises(DimensionMismatchError, match="document 'bad'"):
        encoder.run(docs=[Document(id="bad", embedding=np.ones(3, np.float32))])


def test_a_blob_that_is_not_an_image_is_refused_naming_its_node(encoder: ImageEncoder) -> None:
    root = Document(id="album", chunks=[Document(id="album/0", blob=picture("disc")),
                                        Document(id="album/1", blob=b"GIF89a but not really")])
    with pytest.raises(InvalidDocumentError, match="document 'album' node 'album/1': not an image"):
        encoder.run(docs=[root], traversal_paths=["c"])


def test_settings_are_checked_without_loading_anything() -> None:
    with pytest.raises(ConfigError, match="model_name 'resnet'"):
        ImageEncoderConfig(model_name="resnet")
    with pytest.raises(ConfigError, match="give weights_path for efficientnet-lite2"):
        ImageEncoderConfig(model_name="efficientnet-lite2")
    assert ImageEncoder(ImageEncoderConfig(weights_path="/nowhere.pth")).output_dim == 1280  # no load


def test_a_long_thin_image_costs_its_centre_crop_only(encoder: ImageEncoder) -> None:
    """A 1 × 20,000 strip is within the decode limits; resizing it whole before the crop took gigabytes."""
    import resource

    buffer = io.BytesIO()
    Image.new("RGB", (1, 20_000), (10, 200, 10)).save(buffer, format="PNG")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    vector = encoder.encode_images([buffer.getvalue()])
    assert vector.shape == (1, 1280) and np.isfinite(vector).all()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: far under 4 GB
