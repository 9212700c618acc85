"""Image chunks: the whole image and, optionally, a grid of overlapping patches, so that a search can match
a part of a picture (Jina's image hello-world cut 64 × 64 patches and ranked them back to their image)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from processors.document import Document
from processors.exceptions import ConfigError
from processors.images import IMAGE_LIMITS, ImageLimits, decode_image, encode_jpeg, encode_png, sniff_mime_type
from processors.segmenters.base import SegmentResult

__all__ = ["IMAGE_MODALITY", "THUMBNAIL_TAG", "ImagePatcher", "ImagePatcherConfig"]

IMAGE_MODALITY = "image"
"""The ``modality`` of an image chunk."""
THUMBNAIL_TAG = "thumbnail"
"""The root tag holding a small JPEG of the image as a ``data:`` URI: the shards keep no image bytes, so a
reply's matches show this (the search page does)."""


@dataclass(frozen=True, slots=True)
class ImagePatcherConfig:
    """How to cut an image.

    :param whole: the first chunk is the whole image (its bytes as they came).
    :param patch_size: the side of a square patch, in pixels of the image; 0 cuts none.
    :param stride: pixels between patches; None means half a patch (each overlaps its neighbours by half).
    :param max_patches: patches per image at most; past it the stride doubles until they fit, so a large
        image is sampled more coarsely: its patches no longer cover every pixel (64 patches of 64 cannot cover
        a megapixel), and the whole-image chunk stands for the rest.
    :param max_pixels: an image declaring more pixels is refused before it is decoded.
    :param whole_side: the whole-image chunk is the image's own bytes up to this longer side, else the
        image scaled to it (JPEG): the chunk travels beside the root's bytes, and the encoder reads 224 pixels.
    :param thumbnail: the longer side of the thumbnail put in the root's ``tags["thumbnail"]`` (about 3 KB
        at 96), unless the document has that tag already; 0 puts none.
    """

    whole: bool = True
    patch_size: int = 0
    stride: int | None = None
    max_patches: int = 64
    max_pixels: int = IMAGE_LIMITS.max_pixels
    whole_side: int = 512
    thumbnail: int = 96

    def __post_init__(self) -> None:
        if not self.whole and self.patch_size == 0:
            raise ConfigError("ImagePatcher: with whole: false, patch_size must be positive (or no chunk is cut)")
        if self.patch_size < 0 or self.max_patches < 1 or self.max_pixels < 1:
            raise ConfigError("ImagePatcher: patch_size must be 0 or positive, max_patches and max_pixels positive")
        if self.whole_side < 32:
            raise ConfigError(f"ImagePatcher: whole_side must be at least 32 pixels, got {self.whole_side}")
        if not 0 <= self.thumbnail <= 512:
            raise ConfigError(f"ImagePatcher: thumbnail must be in 0..512 pixels, got {self.thumbnail}")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"ImagePatcher: stride must be positive, got {self.stride}")


class ImagePatcher:
    """Gives each document with image bytes (``blob``) its image chunks, with ``location`` [x, y, width,
    height] in the image's pixels; documents without image bytes get none."""

    def __init__(self, config: ImagePatcherConfig | None = None) -> None:
        self.config = config or ImagePatcherConfig()
        self._limits = ImageLimits(max_pixels=self.config.max_pixels)

    @property
    def fields(self) -> tuple[str, ...]:
        return ()

    def warm_up(self) -> None:
        """Nothing to load."""

    def run(self, *, docs: Sequence[Document]) -> SegmentResult:
        """Chunk ids are ``<doc id>/<n>`` (the whole image first): deterministic, so a re-sent document
        replaces its chunks. Each chunk's ``weight`` is its share of the image's area.

        :raises InvalidDocumentError: for image bytes that do not decode within the limits, naming the document.
        """
        return SegmentResult(docs=tuple(self._segment(doc) if doc.blob is not None else doc for doc in docs))

    def _segment(self, doc: Document) -> Document:
        image = decode_image(doc.blob, f"document {doc.id!r}", self._limits)
        width, height = image.size
        chunks: list[Document] = []

        def add(blob: bytes, mime_type: str, box: tuple[int, int, int, int]) -> None:
            chunks.append(Document(id=f"{doc.id}/{len(chunks)}", parent_id=doc.id, granularity=doc.granularity + 1,
                                   mime_type=mime_type, blob=blob, modality=IMAGE_MODALITY,
                                   field_name=doc.field_name, offset=len(chunks), location=list(box),
                                   weight=box[2] * box[3] / (width * height)))

        if self.config.whole:
            side = self.config.whole_side
            if max(width, height) <= side:
                # the bytes' own type: a declared one may be wrong (a PNG sent as image/jpeg decodes all the same)
                add(doc.blob or b"", sniff_mime_type(doc.blob or b"") or "image/png",
                    (0, 0, width, height))
            else:  # the encoder reads 224 pixels: a second copy of a 6 MB photo would double the record
                small = image.copy()
                small.thumbnail((side, side))
                add(encode_jpeg(small), "image/jpeg", (0, 0, width, height))
        for left, top, side in self._grid(width, height):
            add(encode_png(image.crop((left, top, left + side, top + side))), "image/png", (left, top, side, side))
        tags = doc.tags
        if self.config.thumbnail and THUMBNAIL_TAG not in tags:
            tags = {**tags, THUMBNAIL_TAG: thumbnail_uri(image, self.config.thumbnail)}
        return dataclasses.replace(doc, chunks=chunks, modality=doc.modality or IMAGE_MODALITY, tags=tags)

    def _grid(self, width: int, height: int) -> list[tuple[int, int, int]]:
        """Patch corners and side: a grid from the top left, with a last row and column flush with the
        far edges, so that every pixel is in a patch while the stride is at most the patch side; none for
        an image smaller than a patch."""
        side = self.config.patch_size
        if side == 0 or width < side or height < side:
            return []
        stride = self.config.stride or max(1, side // 2)
        while True:
            xs, ys = _starts(width, side, stride), _starts(height, side, stride)
            if len(xs) * len(ys) <= self.config.max_patches or stride >= max(width, height):
                return [(x, y, side) for y in ys for x in xs][:self.config.max_patches]
            stride *= 2


def thumbnail_uri(image: object, side: int) -> str:
    """A ``data:image/jpeg;base64,...`` URI of the image scaled to fit ``side`` × ``side``."""
    import base64

    from PIL import Image

    assert isinstance(image, Image.Image)
    small = image.copy()
    small.thumbnail((side, side))
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(small, quality=70)).decode("ascii")


def _starts(extent: int, side: int, stride: int) -> list[int]:
    starts = list(range(0, extent - side + 1, stride))
    if starts[-1] != extent - side:
        starts.append(extent - side)
    return starts
