"""Detection quality: mAP@0.5 per class (Pascal VOC all-point interpolation)
and mAP@0.5:0.95 (COCO thresholds, apparel classes) of a detector, or of the ensemble the
indexing job can use, on street photos with ground-truth boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared import datasets, taxonomy
from shared.inference import Detection
from shared.metrics import Detections, map_50_95, mean_average_precision, precision_recall


class PhotoDetector(Protocol):
    """A ``Detector`` or an ``EnsembleDetector``."""

    classes: list[str]

    def detect(self, images: list[Image.Image], score_threshold: float | None = None) -> list[list[Detection]]: ...


def evaluate_detector(detector: PhotoDetector, photos: list[datasets.StreetPhoto]) -> tuple[dict, list, list]:
    class_index = {name: i for i, name in enumerate(detector.classes)}
    predictions, truths = [], []
    for photo in tqdm(photos, desc="detection", mininterval=10):
        image = Image.open(photo.path).convert("RGB")
        found = detector.detect([image], score_threshold=0.05)[0]
        predictions.append(Detections(
            np.array([d.box for d in found], np.float32).reshape(-1, 4),
            np.array([class_index[d.label] for d in found], np.int64),
            np.array([d.score for d in found], np.float32),
        ))
        items = [item for item in photo.items if item.high_level in class_index]
        ignore = np.stack(photo.ignore_boxes) if photo.ignore_boxes else None
        truths.append(Detections(
            np.array([item.box for item in items], np.float32).reshape(-1, 4),
            np.array([class_index[item.high_level] for item in items], np.int64),
            ignore_boxes=ignore,
        ))
    # The overall figures cover the apparel classes: the person box serves
    # the wearer model, and its near-perfect AP would flatter the mean.
    labels = list(range(len(detector.classes)))
    apparel = [label for label in labels if detector.classes[label] != taxonomy.PERSON]
    _, per_label = mean_average_precision(predictions, truths, labels)
    overall, _ = mean_average_precision(predictions, truths, apparel)
    result = {
        "map50": overall,
        "map50_95": map_50_95(predictions, truths, apparel),
        "per_class": {detector.classes[label]: {"map50": ap} for label, ap in per_label.items()},
        "photos": len(photos),
    }
    for label in per_label:
        result["per_class"][detector.classes[label]]["instances"] = int(sum((t.labels == label).sum() for t in truths))
    return result, predictions, truths


def plot_precision_recall(detector: PhotoDetector, predictions, truths, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [i for i in range(len(detector.classes)) if any((t.labels == i).any() for t in truths)]
    columns = 4
    rows = (len(labels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax, label in zip(axes.ravel(), labels):
        recall, precision, total = precision_recall(predictions, truths, label, 0.5)
        ax.plot(recall, precision)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{detector.classes[label]} (n={total})", fontsize=9)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(labels):]:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
