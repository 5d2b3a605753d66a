"""ONNX Runtime wrappers for the detector and the classifiers.

The services, the indexing job and the evaluation all run the models through
these classes, so pre- and post-processing exist once. Input size,
normalisation, classes and thresholds come from each model's ``card.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from shared.boxes import batched_nms
from shared.imaging import letterbox, normalise, square_crop

log = logging.getLogger(__name__)

# Execution providers in order of preference; the first one this ONNX Runtime
# build offers is used (the CUDA one exists only in onnxruntime-gpu).
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class ModelLoadError(RuntimeError):
    """Raised when a model folder lacks its card or ONNX file, or they disagree."""


def load_card(folder: Path) -> dict[str, Any]:
    card_path = folder / "card.json"
    if not card_path.exists():
        raise ModelLoadError(f"model card {card_path} not found; run `make models` or check the model path setting")
    card = json.loads(card_path.read_text())
    if not (folder / card["file"]).exists():
        raise ModelLoadError(f"model file {folder / card['file']} named by {card_path} not found")
    return card


def create_session(path: Path, threads: int) -> ort.InferenceSession:
    """Open an ONNX Runtime session on the best available provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    providers = [p for p in PREFERRED_PROVIDERS if p in available]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own untyped errors for corrupt files
        raise ModelLoadError(f"could not load ONNX model {path}: {error}") from error
    log.info("loaded %s on %s with %d threads", path.name, session.get_providers()[0], threads)
    return session


@dataclass
class Detection:
    """One detected item: box in original-photo pixels, class name and score."""

    box: np.ndarray
    label: str
    score: float


class Detector:
    """The apparel detector: letterbox, run, threshold, per-class NMS."""

    def __init__(self, folder: Path, threads: int = 1):
        self.card = load_card(folder)
        self.session = create_session(folder / self.card["file"], threads)
        self.version: str = self.card["version"]
        self.classes: list[str] = self.card["classes"]
        self.input_width: int = self.card["input"]["width"]
        self.input_height: int = self.card["input"]["height"]
        self.postprocess: dict[str, Any] = self.card["postprocess"]

    def preprocess(self, image: Image.Image):
        canvas, geometry = letterbox(image, self.input_width, self.input_height)
        norm = self.card["input"]["normalisation"]
        return normalise(canvas, norm["mean"], norm["std"], norm["scale"])[0], geometry

    def detect(self, images: list[Image.Image], score_threshold: float | None = None) -> list[list[Detection]]:
        """Detect items in RGB photos; returns each photo's detections, best first."""
        if not images:
            return []
        prepared = [self.preprocess(image) for image in images]
        batch = np.stack([tensor for tensor, _ in prepared])
        boxes, scores = self.session.run(["boxes", "scores"], {"images": batch})
        threshold = self.postprocess["score_threshold"] if score_threshold is None else score_threshold
        return [
            self._postprocess(boxes[i], scores[i], geometry, image.width, image.height, threshold)
            for i, ((_, geometry), image) in enumerate(zip(prepared, images))
        ]

    def _postprocess(self, boxes, scores, geometry, width, height, threshold) -> list[Detection]:
        locations, labels = np.nonzero(scores > threshold)
        if len(locations) == 0:
            return []
        candidate_scores = scores[locations, labels]
        top = np.argsort(-candidate_scores)[: self.postprocess["pre_nms_top_k"]]
        locations, labels, candidate_scores = locations[top], labels[top], candidate_scores[top]
        candidate_boxes = geometry.to_original(boxes[locations], width, height)
        valid = (candidate_boxes[:, 2] - candidate_boxes[:, 0] >= 1) & (candidate_boxes[:, 3] - candidate_boxes[:, 1] >= 1)
        candidate_boxes, labels, candidate_scores = candidate_boxes[valid], labels[valid], candidate_scores[valid]
        keep = batched_nms(candidate_boxes, candidate_scores, labels, self.postprocess["nms_iou"])[: self.postprocess["max_detections"]]
        return [Detection(candidate_boxes[i], self.classes[labels[i]], float(candidate_scores[i])) for i in keep]


@dataclass
class ClassifierOutput:
    """Per-crop outputs: task probabilities, L2-normalised (and centred, where the
    card gives a centre) embeddings, and task features."""

    probabilities: dict[str, np.ndarray]
    embeddings: np.ndarray
    task_features: np.ndarray

    def split(self, counts: list[int]) -> list["ClassifierOutput"]:
        """Cut a batch's outputs into consecutive parts of the given sizes."""
        parts, start = [], 0
        for count in counts:
            end = start + count
            parts.append(ClassifierOutput(
                {task: values[start:end] for task, values in self.probabilities.items()},
                self.embeddings[start:end], self.task_features[start:end],
            ))
            start = end
        return parts


class Classifier:
    """A multi-task classifier (a category's classifier or the wearer model)."""

    def __init__(self, folder: Path, threads: int = 1):
        self.card = load_card(folder)
        self.session = create_session(folder / self.card["file"], threads)
        self.version: str = self.card["version"]
        self.input_size: int = self.card["input"]["width"]
        self.tasks: dict[str, list[str]] = self.card["tasks"]
        self.embedding_size: int = self.card["embedding_size"]
        # Subtracting the category's mean embedding spreads apart products that
        # the raw pooled features place close together (see the card).
        center = self.card.get("embedding_center")
        self.embedding_center = np.asarray(center, dtype=np.float32) if center is not None else None

    def crop(self, image: Image.Image, box: np.ndarray) -> np.ndarray:
        """Cut a box out of an RGB photo as this model's square uint8 input."""
        return square_crop(image, box, self.input_size)

    def run(self, crops: np.ndarray) -> ClassifierOutput:
        """Classify and embed an (N, S, S, 3) uint8 batch of crops."""
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"crops must have shape (N, {self.input_size}, {self.input_size}, 3), got {crops.shape}")
        norm = self.card["input"]["normalisation"]
        batch = normalise(crops, norm["mean"], norm["std"], norm["scale"])
        names = [f"{task}_probabilities" for task in self.tasks] + ["embedding", "task_features"]
        outputs = self.session.run(names, {"images": batch})
        probabilities = dict(zip(self.tasks, outputs[: len(self.tasks)]))
        embeddings = outputs[-2]
        if self.embedding_center is not None:
            embeddings = embeddings - self.embedding_center
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return ClassifierOutput(probabilities, embeddings.astype(np.float32), outputs[-1])
