"""The per-crop results of ``POST /classify``, built from a classifier's outputs.

The service and the in-process pipeline of the evaluation both call
``describe_crops``, so a search sees the same fine classes and vectors either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.inference import Classifier, ClassifierOutput
from shared.wire import encode_vector


def describe_crops(model: Classifier, output: ClassifierOutput) -> list[dict[str, Any]]:
    """Return, per crop, the fine classes by probability, the best value of
    each attribute, and the embedding and task features as base64 float32."""
    results = []
    for index in range(len(output.embeddings)):
        type_probabilities = output.probabilities["type"][index]
        order = np.argsort(-type_probabilities)
        attributes = {}
        for task, vocabulary in model.tasks.items():
            if task == "type":
                continue
            row = output.probabilities[task][index]
            best = int(np.argmax(row))
            attributes[task] = {"value": vocabulary[best], "probability": round(float(row[best]), 4)}
        results.append({
            "fine_classes": [
                {"name": model.tasks["type"][i], "probability": round(float(type_probabilities[i]), 4)} for i in order
            ],
            "attributes": attributes,
            "embedding": encode_vector(output.embeddings[index]),
            "task_features": encode_vector(output.task_features[index]),
        })
    return results
