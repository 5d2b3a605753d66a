"""Image preprocessing shared by the services, training and evaluation, so a
model gets the same pixels at training and at serving time."""

from __future__ import annotations

import numpy as np
from PIL import Image

from shared import taxonomy
from shared.boxes import Letterbox, letterbox_geometry

# Letterbox padding: mid-grey, which the (x / 255 - 0.5) / 0.5 scaling maps to about 0.
PAD_VALUE = 127


def letterbox(image: Image.Image, input_width: int, input_height: int) -> tuple[np.ndarray, Letterbox]:
    """Scale an RGB photo to fit the input size, keep its aspect, pad with grey.

    Returns the HxWx3 uint8 canvas and the geometry to map boxes back.
    """
    geometry = letterbox_geometry(image.width, image.height, input_width, input_height)
    new_width = max(1, round(image.width * geometry.scale))
    new_height = max(1, round(image.height * geometry.scale))
    resized = image.resize((new_width, new_height), Image.BILINEAR)
    canvas = np.full((input_height, input_width, 3), PAD_VALUE, dtype=np.uint8)
    left, top = int(geometry.pad_x), int(geometry.pad_y)
    canvas[top : top + new_height, left : left + new_width] = np.asarray(resized)[: input_height - top, : input_width - left]
    return canvas, Letterbox(geometry.scale, float(left), float(top))


def shrink_to_fit(image: Image.Image, input_width: int, input_height: int) -> Image.Image:
    """Scale a photo down to the size ``letterbox`` gives it inside the input
    size; a photo that already fits is returned as it is. A caller can so send
    the detector a quarter of the pixels of a street photo."""
    geometry = letterbox_geometry(image.width, image.height, input_width, input_height)
    if geometry.scale >= 1:
        return image
    new_width = max(1, round(image.width * geometry.scale))
    new_height = max(1, round(image.height * geometry.scale))
    return image.resize((new_width, new_height), Image.BILINEAR)


def normalise(pixels: np.ndarray, mean: list[float], std: list[float], scale: float) -> np.ndarray:
    """Turn HxWx3 (or NxHxWx3) uint8 pixels into float32 NCHW network input."""
    array = pixels.astype(np.float32) * scale
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))


def square_crop(image: Image.Image, box: np.ndarray, size: int) -> np.ndarray:
    """Crop a box, pad it to a square with grey (keeping the item's aspect), resize."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    crop = image.crop((x1, y1, x2, y2))
    canvas, _ = letterbox(crop, size, size)
    return canvas


# A catalog pixel is studio background when every channel is at least this bright.
NEAR_WHITE = 235
# Below this score the detector's box on a catalog photo is not trusted: on
# white studio photos its low-scoring boxes are often parts of the product.
CONFIDENT_PRODUCT_SCORE = 0.5


def foreground_box(pixels: np.ndarray) -> np.ndarray | None:
    """Return the bounding box of the non-white pixels of a catalog photo, or None."""
    rows = np.flatnonzero((pixels.min(axis=2) < NEAR_WHITE).any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero((pixels.min(axis=2) < NEAR_WHITE).any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def catalog_product_box(pixels: np.ndarray, own_box: np.ndarray | None, own_score: float | None) -> tuple[np.ndarray, str]:
    """Choose the crop box of a catalog product: the detector's box of the
    product's class when it is confident, else the box of the photo's non-white
    pixels (which is the product when it is shown alone), else the whole photo.

    Returns the box and its source: "detected", "foreground" or "whole photo".
    """
    height, width = pixels.shape[:2]
    if own_box is not None and own_score is not None and own_score >= CONFIDENT_PRODUCT_SCORE:
        return np.asarray(own_box, dtype=np.float32), "detected"
    box = foreground_box(pixels)
    if box is not None and (box[2] - box[0]) >= 8 and (box[3] - box[1]) >= 8:
        return box, "foreground"
    return np.array([0, 0, width, height], dtype=np.float32), "whole photo"


def palette_colour(pixels: np.ndarray) -> str | None:
    """Name the median colour of an (N, 3) pixel array on the palette, or None
    when there are too few pixels to tell."""
    if len(pixels) < 50:
        return None
    median = np.median(pixels.astype(np.float32), axis=0)
    names = list(taxonomy.COLOUR_RGB)
    reference = np.array([taxonomy.COLOUR_RGB[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((reference - median) ** 2).sum(axis=1)))]
