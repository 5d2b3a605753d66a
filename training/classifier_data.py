"""Classifier training sets: catalog crops of the product's own item, each with
background-augmented copies rendered once and cached, plus street crops with
labels from their masks or boxes.

Street crop colours come from the mask: the median colour of the item's own
pixels named on the palette. colorful-fashion crops have no masks and so no
colour label.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared import datasets, taxonomy
from shared.boxes import expand_box
from shared.imaging import catalog_product_box, palette_colour, square_crop
from training.augment import BackgroundPool, blend_onto

log = logging.getLogger(__name__)

# Crops are cut with this margin around the box, as the gateway cuts them.
CROP_MARGIN = 0.08
IGNORE = -1


@dataclass
class CropSet:
    """Crops of one category (or the wearer set) with integer labels per task.

    ``images`` has shape (N, V, S, S, 3): V views per item, the first the plain
    crop and the rest background-augmented copies (street crops repeat the plain
    crop). ``labels`` maps task name to an (N,) array with -1 where unknown.
    """

    images: np.ndarray
    labels: dict[str, np.ndarray]
    source: np.ndarray          # "catalog" or "street" per item
    item_ids: list[str]


def encode(vocabulary: tuple[str, ...], value: str | None) -> int:
    return vocabulary.index(value) if value in vocabulary else IGNORE


def catalog_item_labels(row: datasets.CatalogRow, category: str) -> dict[str, int]:
    return {
        "type": encode(taxonomy.FINE_CLASSES[category], row.fine),
        "colour": encode(taxonomy.COLOURS, row.colour),
        "usage": encode(taxonomy.USAGES, row.usage),
        "pattern": encode(taxonomy.PATTERNS, row.pattern),
        "season": encode(taxonomy.SEASONS, row.season),
    }


def build_category_set(
    category: str, rows: list[datasets.CatalogRow], boxes: dict[str, tuple[list[float] | None, float | None]],
    street_photos: list[datasets.StreetPhoto], size: int, views: int, pool: BackgroundPool,
) -> CropSet:
    """Render the crops of one category: catalog rows first, then street items."""
    images, labels, sources, ids = [], {t: [] for t in ("type", "colour", "usage", "pattern", "season")}, [], []
    for row in tqdm(rows, desc=f"{category} catalog crops", mininterval=10):
        image = Image.open(row.path).convert("RGB")
        own_box, own_score = boxes.get(row.product_id, (None, None))
        box, _ = catalog_product_box(np.asarray(image), own_box, own_score)
        crop = square_crop(image, expand_box(box, CROP_MARGIN, image.width, image.height), size)
        augmented = [blend_onto(crop, pool.sample()) for _ in range(views - 1)]
        images.append(np.stack([crop, *augmented]))
        for task, value in catalog_item_labels(row, category).items():
            labels[task].append(value)
        sources.append("catalog")
        ids.append(row.product_id)

    for photo in street_photos:
        items = [item for item in photo.items if item.high_level == category and item.fine in taxonomy.FINE_CLASSES[category]]
        if not items:
            continue
        image = Image.open(photo.path).convert("RGB")
        label_map = datasets.load_ccp_mask(photo.mask_path) if photo.mask_path else None
        for item in items:
            crop = square_crop(image, expand_box(item.box, CROP_MARGIN, image.width, image.height), size)
            images.append(np.stack([crop] * views))
            colour = None
            if label_map is not None:
                colour = palette_colour(np.asarray(image)[np.isin(label_map, item.mask_label_ids)])
            labels["type"].append(encode(taxonomy.FINE_CLASSES[category], item.fine))
            labels["colour"].append(encode(taxonomy.COLOURS, colour))
            for task in ("usage", "pattern", "season"):
                labels[task].append(IGNORE)
            sources.append("street")
            ids.append(f"{photo.dataset}/{photo.photo_id}/{item.label}")
    return CropSet(
        np.stack(images) if images else np.zeros((0, views, size, size, 3), np.uint8),
        {task: np.asarray(values, dtype=np.int64) for task, values in labels.items()},
        np.asarray(sources), ids,
    )


def build_wearer_set(rows: list[datasets.CatalogRow], size: int, views: int, pool: BackgroundPool) -> CropSet:
    """Person crops of catalog photos of worn products, labelled with the
    product's gender (Unisex rows left out). The person box is the bounding box
    of the photo's non-white pixels."""
    from training.augment import foreground_mask
    from shared.boxes import mask_bbox

    images, labels, ids = [], [], []
    for row in tqdm(rows, desc="wearer crops", mininterval=10):
        wearer = taxonomy.GENDER_TO_WEARER[row.gender]
        # Only garments are photographed on a model; shoes, bags and watches
        # usually appear alone, where the gender label tells nothing about a person.
        if wearer is None or row.high_level not in taxonomy.WORN_ON_MODEL:
            continue
        image = Image.open(row.path).convert("RGB")
        pixels = np.asarray(image)
        box = mask_bbox(foreground_mask(pixels) > 0)
        if box is None:
            continue
        crop = square_crop(image, box, size)
        augmented = [blend_onto(crop, pool.sample()) for _ in range(views - 1)]
        images.append(np.stack([crop, *augmented]))
        labels.append(taxonomy.WEARER_CLASSES.index(wearer))
        ids.append(row.product_id)
    stacked = np.stack(images) if images else np.zeros((0, views, size, size, 3), np.uint8)
    return CropSet(stacked, {"wearer": np.asarray(labels, dtype=np.int64)}, np.asarray(["catalog"] * len(ids)), ids)


def save_crop_set(crop_set: CropSet, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=crop_set.images, source=crop_set.source, item_ids=np.asarray(crop_set.item_ids),
             **{f"label_{task}": values for task, values in crop_set.labels.items()})


def load_crop_set(path: Path) -> CropSet:
    data = np.load(path)
    labels = {key[len("label_"):]: data[key] for key in data.files if key.startswith("label_")}
    return CropSet(data["images"], labels, data["source"], list(data["item_ids"]))


def load_catalog_boxes(path: Path | None) -> dict[str, tuple[list[float] | None, float | None]]:
    """Map product id to (detected box, score) from ``training.catalog_boxes``;
    empty without that file, so crops fall back to the photos' non-white pixels."""
    if path is None or not path.exists():
        log.warning("no catalog boxes at %s: crops use each photo's non-white pixels", path)
        return {}
    records = json.loads(path.read_text())["records"]
    return {r["product_id"]: (r["box"], r["score"]) if r["box_source"] == "detected" else (None, None) for r in records}


def split_rows(rows: list[datasets.CatalogRow], seed: int) -> tuple[list, list, list]:
    """Split catalog rows into (train, validation, held-out) by the committed split;
    validation is a tenth of the rest, for model selection."""
    heldout_ids = datasets.heldout_ids(datasets.CATALOG)
    heldout = [r for r in rows if r.product_id in heldout_ids]
    rest = [r for r in rows if r.product_id not in heldout_ids]
    random.Random(seed).shuffle(rest)
    cut = len(rest) // 10
    return rest[cut:], rest[:cut], heldout
