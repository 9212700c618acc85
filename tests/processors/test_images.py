"""Hostile images are refused with a reason naming the document, before anything large is allocated."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from processors.exceptions import InvalidDocumentError
from processors.images import ImageLimits, decode_image, encode_png


def png(width: int = 40, height: int = 30, mode: str = "RGB", color: object = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")  # type: ignore[arg-type]
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width × height pixels, with one tiny compressed row: a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("data, message", [
    (b"", "no image bytes"),
    (None, "no image bytes"),
    (b"%PDF-1.4 not an image", "not an image Pillow reads"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image Pillow reads"),  # EPS would run Ghostscript
    (png()[:60], "cannot be decoded"),  # truncated
    (bomb_png(20_000, 20_000), "decompression bomb"),  # Pillow's own guard, at open: 400 megapixels
    (bomb_png(8_000, 8_000), "declares 8000 × 8000 pixels; the limits are 40000000"),  # ours: under Pillow's
    (bomb_png(1, 30_000), "declares 1 × 30000 pixels"),
], ids=["empty", "none", "pdf", "eps", "truncated", "bomb-400mp", "bomb-64mp", "strip"])
def test_a_hostile_image_is_refused_naming_the_document(data: bytes | None, message: str) -> None:
    with pytest.raises(InvalidDocumentError, match=f"document 'x'.*{message}"):
        decode_image(data, "document 'x'")


def test_over_the_byte_limit_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidDocumentError, match="image is .* bytes; the limit is 100"):
        decode_image(png(), "document 'x'", ImageLimits(max_bytes=100))


def test_modes_become_rgb_and_transparency_turns_white() -> None:
    assert decode_image(png(mode="L", color=7), "d").getpixel((0, 0)) == (7, 7, 7)
    assert decode_image(png(mode="RGBA", color=(0, 0, 0, 0)), "d").getpixel((3, 3)) == (255, 255, 255)
    assert decode_image(encode_png(Image.new("RGB", (5, 4), (1, 2, 3))), "d").size == (5, 4)


def test_sixteen_bit_grey_is_scaled_and_a_camera_orientation_applied() -> None:
    """Found by an attack: Pillow's own conversion clipped 16-bit grey to white, and EXIF was ignored."""
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray((np.ones((6, 6)) * 32768).astype(np.uint16)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), "d").getpixel((0, 0)) == (127, 127, 127)
    sideways = Image.new("RGB", (40, 10), (1, 2, 3))
    exif = sideways.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    buffer = io.BytesIO()
    sideways.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_image(buffer.getvalue(), "d").size == (10, 40)
