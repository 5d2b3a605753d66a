"""Detection and retrieval metrics in NumPy, shared by training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.boxes import iou_matrix


@dataclass
class Detections:
    """Predictions or ground truth of one photo: boxes (N, 4), labels (N,), scores (N,)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    ignore_boxes: np.ndarray | None = None


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision-recall curve with all-point interpolation
    (Pascal VOC 2010 onwards): precision is made monotone, then summed over
    the recall steps."""
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def precision_recall(
    predictions: list[Detections], truths: list[Detections], label: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (recall, precision, ground-truth count) for one label over many photos.

    A prediction matches the best unmatched ground-truth box of its label with
    IoU at least ``iou_threshold``; predictions centred inside an ignore box
    that match nothing are dropped instead of counted as false positives.
    """
    scored: list[tuple[float, bool]] = []
    total = 0
    for prediction, truth in zip(predictions, truths):
        truth_boxes = truth.boxes[truth.labels == label]
        total += len(truth_boxes)
        mask = prediction.labels == label
        boxes, scores = prediction.boxes[mask], prediction.scores[mask]
        order = np.argsort(-scores, kind="stable")
        matched = np.zeros(len(truth_boxes), dtype=bool)
        overlaps = iou_matrix(boxes[order], truth_boxes)
        for rank, index in enumerate(order):
            if len(truth_boxes):
                candidates = np.where(matched, -1.0, overlaps[rank])
                best = int(np.argmax(candidates))
                if candidates[best] >= iou_threshold:
                    matched[best] = True
                    scored.append((float(scores[index]), True))
                    continue
            if truth.ignore_boxes is not None and len(truth.ignore_boxes) and _centre_inside(boxes[index], truth.ignore_boxes):
                continue
            scored.append((float(scores[index]), False))
    if not scored:
        return np.zeros(0), np.zeros(0), total
    scored.sort(key=lambda pair: -pair[0])
    hits = np.array([hit for _, hit in scored], dtype=np.float64)
    true_positives = np.cumsum(hits)
    false_positives = np.cumsum(1 - hits)
    recall = true_positives / max(total, 1)
    precision = true_positives / np.maximum(true_positives + false_positives, 1e-9)
    return recall, precision, total


def _centre_inside(box: np.ndarray, regions: np.ndarray) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return bool(np.any((regions[:, 0] <= cx) & (cx <= regions[:, 2]) & (regions[:, 1] <= cy) & (cy <= regions[:, 3])))


def mean_average_precision(
    predictions: list[Detections], truths: list[Detections], labels: list[int], iou_threshold: float = 0.5
) -> tuple[float, dict[int, float]]:
    """Return (mean AP over labels that have ground truth, AP per such label)."""
    per_label = {}
    for label in labels:
        recall, precision, total = precision_recall(predictions, truths, label, iou_threshold)
        if total == 0:
            continue
        per_label[label] = average_precision(recall, precision) if len(recall) else 0.0
    mean = float(np.mean(list(per_label.values()))) if per_label else 0.0
    return mean, per_label


def map_50_95(predictions: list[Detections], truths: list[Detections], labels: list[int]) -> float:
    """COCO-style mAP averaged over IoU thresholds 0.50, 0.55, ..., 0.95."""
    thresholds = np.arange(0.5, 0.96, 0.05)
    return float(np.mean([mean_average_precision(predictions, truths, labels, t)[0] for t in thresholds]))


def precision_at_k(relevant: list[bool], k: int) -> float:
    """Share of the first k results that are relevant (missing results count as misses)."""
    return float(sum(relevant[:k])) / k


def reciprocal_rank(relevant: list[bool]) -> float:
    """1 / rank of the first relevant result, 0 when none is."""
    for rank, hit in enumerate(relevant, start=1):
        if hit:
            return 1.0 / rank
    return 0.0
