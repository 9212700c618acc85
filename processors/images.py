"""Image bytes as the image processors read them: decoded with Pillow inside limits, or refused with a reason.

Hostile input is normal input: a blob that is not an image, is truncated, declares more pixels than the
limit (a decompression bomb: a few kilobytes of PNG can declare 20,000 × 20,000 pixels, 1.2 GB decoded),
or is over the byte limit raises :class:`~processors.exceptions.InvalidDocumentError` naming the document,
which a stage dead-letters while it goes on with the next. Pillow checks sizes from the header, before it
allocates, so the check costs nothing for a bomb.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from processors.exceptions import InvalidDocumentError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_FORMATS", "IMAGE_LIMITS", "ImageLimits", "decode_image", "encode_jpeg", "encode_png",
           "sniff_mime_type"]

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
"""What Pillow may decode here (its format names); others (EPS, which runs Ghostscript, among them) are refused."""


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What one image may cost to decode.

    :param max_bytes: the encoded image's size.
    :param max_pixels: width × height, checked from the header before decoding. 40 megapixels is a
        7,000 × 5,700 photograph; Pillow's own bomb guard warns at 89 and refuses at 179.
    :param max_side: the longer side, so that a 1 × 40,000,000 strip is refused too.
    """

    max_bytes: int = 32 << 20
    max_pixels: int = 40_000_000
    max_side: int = 20_000


IMAGE_LIMITS = ImageLimits()


def decode_image(data: bytes | None, where: str, limits: ImageLimits = IMAGE_LIMITS,
                 draft_size: int | None = None) -> Image.Image:
    """Decode an image to RGB, fully (a truncated file fails here, not later).

    :param data: the encoded bytes (a Document's ``blob``).
    :param where: names the document and node in errors, e.g. ``document 'cats/1.png'``.
    :param draft_size: a JPEG may be decoded at a reduced scale no smaller than this (Pillow's ``draft``):
        an encoder reading 224 × 224 need not decode 24 megapixels.
    :returns: an RGB image (an animated one's first frame; transparency composited on white).
    :raises InvalidDocumentError: for no bytes, too many bytes or pixels, a format not in
        :data:`IMAGE_FORMATS`, or bytes Pillow cannot decode; the message says which.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidDocumentError(f"{where}: no image bytes (blob is empty)")
    if len(data) > limits.max_bytes:
        raise InvalidDocumentError(f"{where}: image is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
            width, height = image.size
            if width * height > limits.max_pixels or max(width, height) > limits.max_side:
                raise InvalidDocumentError(
                    f"{where}: image declares {width} × {height} pixels; the limits are {limits.max_pixels} pixels "
                    f"and {limits.max_side} a side (a decompression bomb is refused before it is decoded)")
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return _rgb(_upright(image))
    except InvalidDocumentError:
        raise
    except UnidentifiedImageError:
        raise InvalidDocumentError(f"{where}: not an image Pillow reads as one of {', '.join(IMAGE_FORMATS)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidDocumentError(f"{where}: decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:  # truncated, corrupt
        raise InvalidDocumentError(f"{where}: image cannot be decoded: {type(exc).__name__}: {exc}") from None


def _upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: a camera's EXIF orientation applied (a portrait photo is
    stored sideways with orientation 6)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) or image


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit grey image in 8 bits, scaled rather than clipped (Pillow's conversion clips,
    so every 16-bit grey above 255 of 65,535 turned white): 16-bit by 257, wider ones by their range."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.nan_to_num(scaled).clip(0, 255).astype(np.uint8), mode="L")


def _rgb(image: Image.Image) -> Image.Image:
    """Three channels: transparency over white (a transparent pixel's colour is arbitrary), grey spread."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":
        image = _eight_bit(image)

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """Compact bytes of an RGB image (a scaled copy, a thumbnail)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(image: Image.Image) -> bytes:
    """Lossless bytes of an image (a patch a segmenter cut), for a chunk's ``blob``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: patches are small and short-lived
    return buffer.getvalue()


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))


def sniff_mime_type(data: bytes) -> str | None:
    """The image MIME type its first bytes announce (PNG, JPEG, GIF, BMP, TIFF, WebP), or None: a label for
    a document, read without Pillow; decoding is what proves it an image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for signature, mime in _SIGNATURES if data.startswith(signature)), None)
