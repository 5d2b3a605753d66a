"""Background augmentation on a real catalog photo: product kept, background replaced."""

import cv2
import numpy as np
from PIL import Image

from shared import datasets
from training.augment import blend_onto, foreground_mask


def street_background(size):
    root = datasets.datasets_dir()
    photo = np.asarray(Image.open(root / datasets.CCP / "photos" / "0001.jpg").convert("RGB"))
    return np.asarray(Image.fromarray(photo[:300, :300]).resize(size))


def test_blend_keeps_product_and_replaces_background():
    root = datasets.datasets_dir()
    product = np.asarray(Image.open(root / datasets.CATALOG / "images" / "15970.jpg").convert("RGB"))
    background = street_background((product.shape[1], product.shape[0]))
    blended = blend_onto(product, background)
    assert blended.shape == product.shape

    mask = foreground_mask(product) > 0
    assert 0.05 < mask.mean() < 0.95  # a model on white: neither empty nor full
    interior = cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    outside = ~cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)

    # Outside the mask the street background replaces the white studio
    # (seamlessClone also smooths a few pixels next to the mask).
    white_to_street = np.abs(product[outside].astype(int) - background[outside]).mean()
    street_to_result = np.abs(blended[outside].astype(int) - background[outside]).mean()
    assert product[outside].mean() > 230
    assert white_to_street > 50
    assert street_to_result < white_to_street / 5

    # Inside, Poisson blending keeps the product's gradients (its pattern and
    # edges) while shifting its overall brightness towards the new background.
    def laplacian(pixels):
        return cv2.Laplacian(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F)

    assert np.corrcoef(laplacian(product)[interior], laplacian(blended)[interior])[0, 1] > 0.85
