"""Photo decoding: formats, EXIF orientation, colour modes and the size guards."""

import io

import numpy as np
import pytest
from PIL import Image

from shared import datasets
from shared.imagecodec import InvalidImage, decode_image

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000, "min_side": 32}


def street_photo() -> Image.Image:
    return Image.open(datasets.datasets_dir() / datasets.CCP / "photos" / "0001.jpg").convert("RGB")


def encode(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP", "HEIF"])
def test_supported_formats_decode_to_rgb(kind):
    photo = street_photo()
    decoded = decode_image(encode(photo, kind), **LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.size == photo.size


def test_exif_orientation_is_applied():
    photo = street_photo()  # portrait, 550 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    stored = photo.transpose(Image.ROTATE_90)
    decoded = decode_image(encode(stored, "JPEG", exif=exif), **LIMITS)
    assert decoded.size == photo.size


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_colour_modes_convert_to_rgb(mode):
    photo = street_photo().resize((64, 96))
    image = photo.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 256))
    kind = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(encode(image, kind), **LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.size == (64, 96)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    decoded = decode_image(encode(image, "PNG"), **LIMITS)
    assert decoded.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("data, status, word", [
    (b"", 400, "no image data"),
    (b"GIF89a not really", 415, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 415, "not an image"),
])
def test_bad_bytes_rejected(data, status, word):
    with pytest.raises(InvalidImage) as error:
        decode_image(data, **LIMITS)
    assert error.value.status == status
    assert word in str(error.value)


def test_limits_rejected():
    small = encode(Image.new("RGB", (20, 200)), "PNG")
    with pytest.raises(InvalidImage, match="at least 32"):
        decode_image(small, **LIMITS)
    big = encode(Image.new("RGB", (3000, 3000)), "PNG")
    with pytest.raises(InvalidImage, match="pixels") as error:
        decode_image(big, max_bytes=LIMITS["max_bytes"], max_pixels=1_000_000, min_side=32)
    assert error.value.status == 413
    with pytest.raises(InvalidImage, match="over the limit of 100 bytes"):
        decode_image(big, max_bytes=100, max_pixels=LIMITS["max_pixels"], min_side=32)
