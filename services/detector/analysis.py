"""The detection of one decoded photo that ``POST /detect`` returns: the item
boxes and, for each person box, the wearer probabilities; and the model
description that ``GET /info`` returns.

The service and the in-process pipeline of the evaluation both call
``analyse_photo`` and ``describe_models``, so a search gets the same
detections and input size either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from shared import taxonomy
from shared.boxes import expand_box
from shared.inference import Classifier, Detector


def describe_models(detector: Detector, wearer: Classifier) -> dict[str, Any]:
    """Return the detector's input size and classes and both models' versions."""
    return {
        "input_width": detector.input_width,
        "input_height": detector.input_height,
        "classes": detector.classes,
        "model_versions": {"detector": detector.version, "wearer": wearer.version},
    }


def wearer_probabilities(wearer: Classifier, image: Image.Image, boxes: list[np.ndarray], margin: float) -> list[dict[str, float]]:
    """Return man/woman/boy/girl probabilities for each person box of a photo."""
    if not boxes:
        return []
    crops = np.stack([wearer.crop(image, expand_box(box, margin, image.width, image.height)) for box in boxes])
    probabilities = wearer.run(crops).probabilities["wearer"]
    return [{name: round(float(p), 4) for name, p in zip(taxonomy.WEARER_CLASSES, row)} for row in probabilities]


def analyse_photo(
    detector: Detector, wearer: Classifier, image: Image.Image, score_threshold: float | None, person_margin: float,
) -> dict[str, Any]:
    """Detect items and people in one photo and name each person's wearer class."""
    detections = detector.detect([image], score_threshold)[0]
    persons = [d for d in detections if d.label == taxonomy.PERSON]
    wearers = wearer_probabilities(wearer, image, [p.box for p in persons], person_margin)
    return {
        "width": image.width,
        "height": image.height,
        "items": [
            {"box": [round(float(v), 1) for v in d.box], "label": d.label, "score": round(d.score, 4)}
            for d in detections if d.label != taxonomy.PERSON
        ],
        "persons": [
            {"box": [round(float(v), 1) for v in p.box], "score": round(p.score, 4), "wearer": w}
            for p, w in zip(persons, wearers)
        ],
        "model_versions": {"detector": detector.version, "wearer": wearer.version},
    }
