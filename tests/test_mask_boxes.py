"""Boxes derived from real clothing-co-parsing masks follow the box conventions."""

import numpy as np
import pytest

from shared import datasets
from shared.boxes import iou_matrix, mask_to_boxes


@pytest.fixture(scope="module")
def ccp():
    root = datasets.datasets_dir()
    return root, datasets.ccp_label_names(root)


def load(root, photo_id):
    return datasets.load_ccp_mask(root / datasets.CCP / "annotations" / "pixel-level" / f"{photo_id}.mat")


def test_shoes_become_one_box_each(ccp):
    root, names = ccp
    photo = datasets.read_ccp(root, ["0001"])[0]
    shoes = [item for item in photo.items if item.high_level == "footwear"]
    assert len(shoes) == 2
    left, right = sorted(shoes, key=lambda item: item.box[0])
    assert left.box[2] <= right.box[0]  # two separate feet, side by side
    assert iou_matrix(left.box[None], right.box[None])[0, 0] == 0


def test_coat_cut_in_two_stays_one_box(ccp):
    root, names = ccp
    label_map = load(root, "0004")
    coat = label_map == names.index("coat")
    from scipy import ndimage

    _, pieces = ndimage.label(coat)
    assert pieces >= 2  # the open coat's two halves are not connected
    boxes = mask_to_boxes(coat, "top")
    assert len(boxes) == 1
    rows, cols = np.nonzero(coat)
    # The one box spans both large halves.
    assert boxes[0][0] <= np.percentile(cols, 5)
    assert boxes[0][2] >= np.percentile(cols, 95)


def test_person_box_covers_every_label(ccp):
    root, _ = ccp
    photo = datasets.read_ccp(root, ["0004"])[0]
    person = [item for item in photo.items if item.high_level == "person"]
    assert len(person) == 1
    label_map = load(root, "0004")
    rows, cols = np.nonzero(label_map)
    x1, y1, x2, y2 = person[0].box
    assert x1 <= cols.min()
    assert x2 >= cols.max() + 1
    assert y1 <= rows.min()
    assert y2 >= rows.max() + 1


def test_colorful_shoe_boxes_are_ignore_regions():
    photos = datasets.read_colorful(datasets.datasets_dir(), ["100034"])
    assert len(photos[0].ignore_boxes) == 1
    assert "footwear" not in {item.high_level for item in photos[0].items}
    assert {"top", "bag", "bottom", "person"} <= {item.high_level for item in photos[0].items}
