"""Detector training samples: street photos with boxes, plus catalog photos
with pseudo-boxes, letterboxed to the detector's input size."""

from __future__ import annotations

import json
import logging
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared import datasets, taxonomy
from shared.imaging import PAD_VALUE, letterbox, normalise
from training.nets import NORMALISATION

log = logging.getLogger(__name__)

CLASS_INDEX = {name: index for index, name in enumerate(taxonomy.DETECTOR_CLASSES)}


@dataclass
class DetectionSample:
    """One training photo: boxes in original pixels and detector class indices."""

    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    source: str = ""
    photo_id: str = ""
    product_class: str = ""  # catalog photos: the product's high-level class


def street_samples(cache_dir: Path) -> dict[str, list[DetectionSample]]:
    """Return the samples of both street sets, keyed by dataset, cached on disk
    because deriving boxes from 854 masks takes most of a minute."""
    root = datasets.datasets_dir()
    cache = cache_dir / "street_samples.pkl"
    if cache.exists():
        with open(cache, "rb") as handle:
            cached = pickle.load(handle)
        if cached.get("root") == str(root):
            return cached["samples"]
    samples: dict[str, list[DetectionSample]] = {}
    for name, photos in ((datasets.CCP, datasets.read_ccp(root)), (datasets.COLORFUL, datasets.read_colorful(root))):
        samples[name] = [photo_to_sample(photo) for photo in photos]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache, "wb") as handle:
        pickle.dump({"root": str(root), "samples": samples}, handle)
    return samples


def photo_to_sample(photo: datasets.StreetPhoto) -> DetectionSample:
    """Keep the items of classes the detector outputs."""
    kept = [item for item in photo.items if item.high_level in CLASS_INDEX]
    boxes = np.stack([item.box for item in kept]).astype(np.float32) if kept else np.zeros((0, 4), np.float32)
    labels = np.array([CLASS_INDEX[item.high_level] for item in kept], dtype=np.int64)
    ignore = np.stack(photo.ignore_boxes).astype(np.float32) if photo.ignore_boxes else np.zeros((0, 4), np.float32)
    return DetectionSample(photo.path, boxes, labels, ignore, photo.dataset, photo.photo_id)


def catalog_samples(pseudo_path: Path) -> list[DetectionSample]:
    """Read catalog pseudo-boxes written by ``training.pseudo_boxes``."""
    records = json.loads(pseudo_path.read_text())["records"]
    root = datasets.datasets_dir()
    samples = []
    for record in records:
        boxes = np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4)
        classes = list(record["classes"])
        # The product's own box may score below the pseudo-box threshold; it
        # is still the item this photo is about, so it is always kept.
        if record["box_source"] == "detected" and record["high_level"] not in classes and record["high_level"] in CLASS_INDEX:
            boxes = np.concatenate([boxes, np.asarray([record["box"]], dtype=np.float32)])
            classes.append(record["high_level"])
        path = root / datasets.CATALOG / "images" / f"{record['product_id']}.jpg"
        if record["box_source"] != "detected" and taxonomy.PERSON not in classes and record["high_level"] in CLASS_INDEX:
            # A product shown alone on white (shoes, a belt, a watch): its
            # non-white pixels are the product, so their bounding box is its box.
            box = product_alone_box(path)
            if box is None:
                continue
            boxes = np.concatenate([boxes, box[None]])
            classes.append(record["high_level"])
        if not classes:
            continue
        labels = np.array([CLASS_INDEX[name] for name in classes], dtype=np.int64)
        samples.append(DetectionSample(path, boxes, labels, source=datasets.CATALOG, photo_id=record["product_id"], product_class=record["high_level"]))
    return samples


def product_alone_box(path: Path) -> np.ndarray | None:
    """Return the bounding box of a catalog photo's non-white pixels, or None
    when they fill nearly the whole photo (then it is not a product alone)."""
    from shared.boxes import mask_bbox
    from training.augment import foreground_mask

    pixels = np.asarray(Image.open(path).convert("RGB"))
    box = mask_bbox(foreground_mask(pixels) > 0)
    if box is None:
        return None
    area = (box[2] - box[0]) * (box[3] - box[1])
    return None if area > 0.9 * pixels.shape[0] * pixels.shape[1] else box


class DetectionDataset(torch.utils.data.Dataset):
    """Letterboxed, normalised photos with targets in torchvision's format.

    Training adds a horizontal flip and a random crop keeping 75-100% of each
    side, which also varies the item scale.
    """

    def __init__(self, samples: list[DetectionSample], input_width: int, input_height: int, train: bool):
        self.samples = samples
        self.input_width = input_width
        self.input_height = input_height
        self.train = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = Image.open(sample.path).convert("RGB")
        boxes, ignore = sample.boxes.copy(), sample.ignore_boxes.copy()

        if len(ignore):
            # Regions whose boxes follow another convention are greyed out, so
            # they teach neither positives nor negatives.
            pixels = np.asarray(image).copy()
            for x1, y1, x2, y2 in ignore.astype(int):
                pixels[max(0, y1) : y2, max(0, x1) : x2] = PAD_VALUE
            image = Image.fromarray(pixels)

        if self.train:
            image, boxes = self._random_crop(image, boxes)
            if random.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
                boxes = boxes.copy()
                boxes[:, [0, 2]] = image.width - boxes[:, [2, 0]]

        canvas, geometry = letterbox(image, self.input_width, self.input_height)
        tensor = torch.from_numpy(normalise(canvas, NORMALISATION["mean"], NORMALISATION["std"], NORMALISATION["scale"])[0])
        input_boxes = geometry.to_input(boxes) if len(boxes) else boxes
        keep = (input_boxes[:, 2] - input_boxes[:, 0] >= 2) & (input_boxes[:, 3] - input_boxes[:, 1] >= 2) if len(boxes) else np.zeros(0, bool)
        target = {
            "boxes": torch.from_numpy(input_boxes[keep].astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(sample.labels[keep]),
        }
        return tensor, target

    @staticmethod
    def _random_crop(image: Image.Image, boxes: np.ndarray) -> tuple[Image.Image, np.ndarray]:
        scale = random.uniform(0.75, 1.0)
        crop_width, crop_height = int(image.width * scale), int(image.height * scale)
        left = random.randint(0, image.width - crop_width)
        top = random.randint(0, image.height - crop_height)
        cropped = image.crop((left, top, left + crop_width, top + crop_height))
        if not len(boxes):
            return cropped, boxes
        moved = boxes - np.array([left, top, left, top], dtype=np.float32)
        clipped = moved.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, crop_width)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, crop_height)
        # A box cut to less than half its area is left out: too little of the item shows.
        area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
        kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        visible = kept_area >= 0.5 * np.maximum(area, 1e-6)
        clipped[~visible] = 0
        return cropped, clipped


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)
