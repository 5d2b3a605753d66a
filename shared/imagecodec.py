"""Photo decoding and validation: every check that turns bad input into a
clear client error before any model runs.

Handles JPEG, PNG, WebP, and HEIC/HEIF (through pillow-heif); applies the EXIF
orientation; converts greyscale, CMYK, palette and alpha images to RGB.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # the serving images install it; a bare dev setup may not
    HEIF_SUPPORTED = False

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "HEIF", "MPO"})


class InvalidImage(ValueError):
    """Raised for input that is not a usable photo; ``status`` is the HTTP status to return."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_bytes: int, max_pixels: int, min_side: int) -> Image.Image:
    """Decode photo bytes into an upright RGB image or raise ``InvalidImage``.

    The pixel count is checked from the header before any pixel is decoded, so
    a decompression bomb (a tiny file declaring a huge image) costs nothing.
    """
    if not data:
        raise InvalidImage("the request contains no image data")
    if len(data) > max_bytes:
        raise InvalidImage(f"the image is {len(data)} bytes, over the limit of {max_bytes} bytes", status=413)
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise InvalidImage("the data is not an image in a supported format (JPEG, PNG, WebP or HEIC)", status=415) from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidImage(f"the image declares too many pixels (limit {max_pixels})", status=413) from error

    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImage(f"image format {image.format} is not supported; send JPEG, PNG, WebP or HEIC", status=415)
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(f"the image is {width}x{height} pixels, over the limit of {max_pixels} pixels", status=413)
    if min(width, height) < min_side:
        raise InvalidImage(f"the image is {width}x{height} pixels; both sides must be at least {min_side} pixels")

    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(f"the image data is truncated or corrupt: {error}") from error
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparent pixels become white, like a catalog background."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # Greyscale, CMYK and opaque palette images convert directly; Pillow
    # already undoes the inverted CMYK of Adobe JPEGs while decoding.
    return image.convert("RGB")


def rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)
