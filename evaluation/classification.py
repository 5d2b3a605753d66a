"""Classification quality: fine-type accuracy of each category's classifier on
catalog crops and on street crops, with confusion matrices, and the wearer
model's accuracy on catalog photos.

Catalog crops are cut as the indexing job cuts them (the detector's box of
the product's class when confident, else the photo's non-white pixels).
Street crops are the ground-truth boxes of items whose label names one fine
class, cut as the gateway cuts a box.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from services.gateway.settings import GatewaySettings
from services.indexer.job import BOX_MARGIN, choose_box
from shared import datasets, taxonomy
from shared.boxes import expand_box
from shared.imaging import foreground_box, square_crop
from shared.inference import Classifier, Detector

log = logging.getLogger(__name__)

BATCH = 32


def _confusion(truth: list[int], predicted: list[int], classes: int) -> list[list[int]]:
    matrix = np.zeros((classes, classes), np.int64)
    for t, p in zip(truth, predicted):
        matrix[t, p] += 1
    return matrix.tolist()


def catalog_crops(rows: list[datasets.CatalogRow], detector: Detector, classifier: Classifier, score_floor: float = 0.2) -> np.ndarray:
    """Crop each catalog row's product the way the indexing job does."""
    crops = []
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        images = [Image.open(row.path).convert("RGB") for row in batch]
        for row, image, found in zip(batch, images, detector.detect(images, score_threshold=score_floor)):
            box, _ = choose_box(found, row.high_level, score_floor, np.asarray(image))
            crops.append(classifier.crop(image, expand_box(box, BOX_MARGIN, image.width, image.height)))
    return np.stack(crops)


def street_crops(photos: list[datasets.StreetPhoto], category: str, size: int, margin: float) -> tuple[np.ndarray, list[int]]:
    """Crop the street items of one category that carry a fine class."""
    fines = taxonomy.FINE_CLASSES[category]
    crops, labels = [], []
    for photo in photos:
        items = [item for item in photo.items if item.high_level == category and item.fine in fines]
        if not items:
            continue
        image = Image.open(photo.path).convert("RGB")
        for item in items:
            crops.append(square_crop(image, expand_box(item.box, margin, image.width, image.height), size))
            labels.append(fines.index(item.fine))
    return (np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)), labels


def predict_types(classifier: Classifier, crops: np.ndarray) -> list[int]:
    predicted: list[int] = []
    for start in range(0, len(crops), BATCH):
        predicted.extend(classifier.run(crops[start : start + BATCH]).probabilities["type"].argmax(axis=1).tolist())
    return predicted


def evaluate_classifiers(
    models: Path, detector: Detector, rows: list[datasets.CatalogRow], street: list[datasets.StreetPhoto],
    categories: list[str] | None = None,
) -> dict[str, Any]:
    """Return per category the catalog and street type accuracy, counts and confusion matrices."""
    margin = GatewaySettings().crop_margin
    by_category: dict[str, list[datasets.CatalogRow]] = defaultdict(list)
    for row in rows:
        by_category[row.high_level].append(row)

    results: dict[str, Any] = {}
    for category in tqdm(categories or list(taxonomy.CLASSIFIER_CATEGORIES), desc="classification", mininterval=10):
        folder = models / "classifiers" / category
        if not (folder / "card.json").exists():
            continue
        classifier = Classifier(folder, threads=2)
        fines = list(classifier.tasks["type"])
        entry: dict[str, Any] = {"classes": fines}

        catalog_rows = [row for row in by_category.get(category, []) if row.fine in fines]
        if catalog_rows:
            truth = [fines.index(row.fine) for row in catalog_rows]
            predicted = predict_types(classifier, catalog_crops(catalog_rows, detector, classifier))
            entry["catalog_accuracy"] = float(np.mean(np.array(truth) == np.array(predicted)))
            entry["catalog_count"] = len(truth)
            entry["catalog_confusion"] = _confusion(truth, predicted, len(fines))
        else:
            entry["catalog_accuracy"], entry["catalog_count"] = None, 0

        crops, truth = street_crops(street, category, classifier.input_size, margin)
        if truth:
            predicted = predict_types(classifier, crops)
            entry["street_accuracy"] = float(np.mean(np.array(truth) == np.array(predicted)))
            entry["street_count"] = len(truth)
            entry["street_confusion"] = _confusion(truth, predicted, len(fines))
        else:
            entry["street_accuracy"], entry["street_count"] = None, 0
        results[category] = entry
    return results


def evaluate_wearer(models: Path, rows: list[datasets.CatalogRow]) -> dict[str, Any]:
    """Accuracy of the wearer model on person crops of catalog garment photos:
    the box of the photo's non-white pixels, labelled with the product's
    gender (unisex rows left out)."""
    wearer = Classifier(models / "wearer", threads=2)
    crops, truth = [], []
    for row in rows:
        target = taxonomy.GENDER_TO_WEARER.get(row.gender)
        if target is None or row.high_level not in taxonomy.WORN_ON_MODEL:
            continue
        image = Image.open(row.path).convert("RGB")
        box = foreground_box(np.asarray(image))
        if box is None:
            continue
        crops.append(wearer.crop(image, box))
        truth.append(taxonomy.WEARER_CLASSES.index(target))
    if not truth:
        return {"catalog_accuracy": None, "catalog_count": 0}
    predicted = []
    for start in range(0, len(crops), BATCH):
        predicted.extend(wearer.run(np.stack(crops[start : start + BATCH])).probabilities["wearer"].argmax(axis=1).tolist())
    return {
        "catalog_accuracy": float(np.mean(np.array(truth) == np.array(predicted))),
        "catalog_count": len(truth),
        "classes": list(taxonomy.WEARER_CLASSES),
        "catalog_confusion": _confusion(truth, predicted, len(taxonomy.WEARER_CLASSES)),
    }


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    """Draw a confusion matrix with row-normalised shading and raw counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(3.0, 0.45 * len(classes) + 1.5)
    figure, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, column), value in np.ndenumerate(counts):
        if value:
            ax.text(column, row, int(value), ha="center", va="center", fontsize=6, color="white" if shares[row, column] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
