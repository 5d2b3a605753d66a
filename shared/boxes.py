"""Box geometry shared by the detector service, training and evaluation.

Boxes are float arrays ``[x1, y1, x2, y2]`` in pixels, with x2 > x1 and y2 > y1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Classes whose items come in separate pieces, one box each (one box per shoe,
# per wrist, per ear). Every other class gets one box per photo, so a garment
# cut in two by an arm or a bag stays one item.
SPLIT_CLASSES = frozenset({"footwear", "wristwear", "earring"})

# A mask component smaller than this share of the class's largest component is
# taken as stray labelling and left out of the box.
_MIN_COMPONENT_SHARE = 0.15
# A separate piece (a shoe) smaller than this share of the photo is left out.
_MIN_PIECE_SHARE = 0.0005


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Return the area of each box of an (N, 4) array."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the (len(a), len(b)) intersection-over-union matrix."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    intersection = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - intersection
    return (intersection / np.maximum(union, 1e-9)).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Return the indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while len(order):
        best = order[0]
        keep.append(int(best))
        if len(order) == 1:
            break
        overlaps = iou_matrix(boxes[best : best + 1], boxes[order[1:]])[0]
        order = order[1:][overlaps <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Run NMS per label; return kept indices sorted by descending score."""
    keep: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.append(members[nms(boxes[members], scores[members], iou_threshold)])
    if not keep:
        return np.zeros(0, dtype=np.int64)
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="stable")]


def mask_bbox(mask: np.ndarray) -> np.ndarray | None:
    """Return the tight box around the true pixels of a 2-D mask, or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def mask_to_boxes(mask: np.ndarray, high_level: str) -> list[np.ndarray]:
    """Turn the mask of one high-level class into its item boxes.

    Pieces of a split class (shoes) become one box each; any other class
    becomes one box around all its sizeable pieces.
    """
    components, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = ndimage.sum_labels(mask, components, index=np.arange(1, count + 1))

    if high_level in SPLIT_CLASSES:
        min_size = max(_MIN_PIECE_SHARE * mask.size, _MIN_COMPONENT_SHARE * sizes.max())
        boxes = []
        for component_id in np.flatnonzero(sizes >= min_size) + 1:
            box = mask_bbox(components == component_id)
            if box is not None:
                boxes.append(box)
        return boxes

    sizeable = np.flatnonzero(sizes >= _MIN_COMPONENT_SHARE * sizes.max()) + 1
    box = mask_bbox(np.isin(components, sizeable))
    return [] if box is None else [box]


@dataclass(frozen=True)
class Letterbox:
    """The scale and padding that fit a photo into a fixed network input."""

    scale: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Map boxes from network-input pixels back to the original photo, clipped."""
        out = boxes.copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Map boxes from original-photo pixels into network-input pixels."""
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale + self.pad_y
        return out


def letterbox_geometry(width: int, height: int, input_width: int, input_height: int) -> Letterbox:
    """Return the scale and centring padding that fit a photo into the input size."""
    scale = min(input_width / width, input_height / height)
    new_width, new_height = width * scale, height * scale
    return Letterbox(scale, (input_width - new_width) / 2, (input_height - new_height) / 2)


def expand_box(box: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """Grow a box by ``margin`` of its size on every side, clipped to the photo."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return np.array(
        [max(0.0, x1 - dx), max(0.0, y1 - dy), min(float(width), x2 + dx), min(float(height), y2 + dy)],
        dtype=np.float32,
    )
