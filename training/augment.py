"""Background augmentation of catalog photos, as Tran et al. (2019) describe it:
mask the product by thresholding away near-white pixels and dilating, then
blend it onto a random patch of a street background with Poisson image
editing (OpenCV ``seamlessClone``), so the classifiers learn products off
their white studio background."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from shared import datasets
from shared.imaging import NEAR_WHITE

DILATION_PIXELS = 3


def foreground_mask(pixels: np.ndarray) -> np.ndarray:
    """Return the uint8 0/255 mask of non-white pixels, dilated."""
    mask = (pixels.min(axis=2) < NEAR_WHITE).astype(np.uint8) * 255
    kernel = np.ones((2 * DILATION_PIXELS + 1, 2 * DILATION_PIXELS + 1), np.uint8)
    return cv2.dilate(mask, kernel)


def blend_onto(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Poisson-blend the foreground of an RGB photo onto a same-size background."""
    mask = foreground_mask(pixels)
    # seamlessClone needs the mask to stay clear of the border of the image.
    mask[:2, :] = 0
    mask[-2:, :] = 0
    mask[:, :2] = 0
    mask[:, -2:] = 0
    if mask.max() == 0:
        return background.copy()
    height, width = pixels.shape[:2]
    ys, xs = np.nonzero(mask)
    # The source is pasted centred on its mask's bounding box, so the product stays in place.
    centre = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    blended = cv2.seamlessClone(
        np.ascontiguousarray(pixels[:, :, ::-1]), np.ascontiguousarray(background[:, :, ::-1]), mask, centre, cv2.NORMAL_CLONE
    )
    return blended[:, :, ::-1].copy()


class BackgroundPool:
    """Random patches of street-photo background: clothing-co-parsing pixels
    labelled 0 (``null``), taken from photos outside the held-out split."""

    def __init__(self, size: int, count: int = 400, seed: int = 0, max_photos: int = 200):
        rng = random.Random(seed)
        root = datasets.datasets_dir()
        heldout = datasets.heldout_ids(datasets.CCP)
        mask_dir = root / datasets.CCP / "annotations" / "pixel-level"
        photo_ids = sorted(p.stem for p in mask_dir.glob("*.mat") if p.stem not in heldout)
        rng.shuffle(photo_ids)
        self.patches: list[np.ndarray] = []
        for photo_id in photo_ids[:max_photos]:
            label_map = datasets.load_ccp_mask(mask_dir / f"{photo_id}.mat")
            photo = np.asarray(Image.open(root / datasets.CCP / "photos" / f"{photo_id}.jpg").convert("RGB"))
            self.patches.extend(_background_patches(photo, label_map == 0, size, rng, tries=12))
            if len(self.patches) >= count:
                break
        if not self.patches:
            raise RuntimeError("no street background patch found; check the clothing-co-parsing folder")
        self.rng = rng

    def sample(self) -> np.ndarray:
        patch = self.patches[self.rng.randrange(len(self.patches))]
        return patch[:, ::-1].copy() if self.rng.random() < 0.5 else patch


def _background_patches(photo: np.ndarray, background: np.ndarray, size: int, rng: random.Random, tries: int) -> list[np.ndarray]:
    """Square patches (side a quarter to a half of the photo width) that are at
    least 95% background, resized to ``size``."""
    height, width = background.shape
    patches = []
    for _ in range(tries):
        side = rng.randint(width // 4, width // 2)
        x, y = rng.randint(0, width - side), rng.randint(0, height - side)
        if background[y : y + side, x : x + side].mean() >= 0.95:
            patch = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
            patches.append(np.asarray(patch))
    return patches


def save_example_sheet(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Write a sheet of (original, augmented) crops side by side for review."""
    rows = [np.concatenate([original, augmented], axis=1) for original, augmented in pairs]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
