"""Image chunks: the whole image, then a grid of patches that covers every pixel, within max_patches."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from processors.document import Document
from processors.exceptions import ConfigError, InvalidDocumentError
from processors.images import decode_image
from processors.segmenters.image import IMAGE_MODALITY, ImagePatcher, ImagePatcherConfig


def png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_wrong_declared_mime_type_is_corrected_from_the_bytes() -> None:
    """A PNG declared as JPEG (or as text) decodes by its content; its chunk is labelled by what it is."""
    for declared in ("image/jpeg", "text/plain"):
        [whole] = ImagePatcher().run(docs=[Document(id="p", blob=png(40, 30), mime_type=declared)]).docs[0].chunks
        assert whole.mime_type == "image/png" and whole.location == [0, 0, 40, 30]


def test_the_whole_image_then_patches_covering_every_pixel() -> None:
    blob = png(200, 130)
    doc = ImagePatcher(ImagePatcherConfig(patch_size=64)).run(docs=[Document(id="p", blob=blob,
                                                                             mime_type="image/png")]).docs[0]
    whole, *patches = doc.chunks
    assert whole.blob == blob and whole.location == [0, 0, 200, 130] and whole.weight == 1.0
    assert [c.id for c in doc.chunks] == [f"p/{i}" for i in range(len(doc.chunks))]
    assert all(c.parent_id == "p" and c.modality == IMAGE_MODALITY and c.granularity == 1 for c in doc.chunks)
    covered = np.zeros((130, 200), bool)
    original = np.asarray(decode_image(blob, "p"))
    for patch in patches:
        x, y, w, h = patch.location
        assert (w, h) == (64, 64) and 0 <= x <= 200 - 64 and 0 <= y <= 130 - 64
        assert np.array_equal(np.asarray(decode_image(patch.blob, "patch")), original[y:y + h, x:x + w])
        covered[y:y + h, x:x + w] = True
    assert covered.all()
    assert len({tuple(p.location) for p in patches}) == len(patches)


@pytest.mark.parametrize("max_patches", [1, 3, 10])
def test_a_large_image_is_covered_more_coarsely_within_max_patches(max_patches: int) -> None:
    config = ImagePatcherConfig(whole=False, patch_size=32, max_patches=max_patches)
    doc = ImagePatcher(config).run(docs=[Document(id="big", blob=png(900, 700))]).docs[0]
    assert 1 <= len(doc.chunks) <= max_patches


def test_documents_without_image_bytes_pass_unchanged_and_a_bad_image_is_named() -> None:
    text = Document(id="t", text="no picture")
    assert ImagePatcher().run(docs=[text]).docs[0] is text
    with pytest.raises(InvalidDocumentError, match="document 'broken'"):
        ImagePatcher().run(docs=[Document(id="broken", blob=png(10, 10)[:40])])
    with pytest.raises(ConfigError, match="patch_size must be positive"):
        ImagePatcherConfig(whole=False)


def test_the_root_gets_a_small_thumbnail_unless_it_has_one() -> None:
    import base64

    doc = ImagePatcher().run(docs=[Document(id="t", blob=png(640, 480))]).docs[0]
    uri = doc.tags["thumbnail"]
    assert isinstance(uri, str) and uri.startswith("data:image/jpeg;base64,") and len(uri) < 8_000
    assert decode_image(base64.b64decode(uri.split(",", 1)[1]), "thumb").size == (96, 72)
    kept = ImagePatcher().run(docs=[Document(id="t", blob=png(64, 64), tags={"thumbnail": "mine"})]).docs[0]
    assert kept.tags["thumbnail"] == "mine"
    assert "thumbnail" not in ImagePatcher(ImagePatcherConfig(thumbnail=0)).run(
        docs=[Document(id="t", blob=png(64, 64))]).docs[0].tags


def test_a_large_image_s_whole_chunk_is_a_scaled_copy_not_a_second_original() -> None:
    """The whole-image chunk travels beside the root's bytes: a second copy of a large photo doubled the
    record past the flow's payload limit (found by an attack)."""
    blob = png(1600, 1200)
    whole = ImagePatcher().run(docs=[Document(id="big", blob=blob)]).docs[0].chunks[0]
    assert whole.mime_type == "image/jpeg" and len(whole.blob or b"") < len(blob) // 4
    assert decode_image(whole.blob, "whole").size == (512, 384) and whole.location == [0, 0, 1600, 1200]
