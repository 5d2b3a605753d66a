"""ONNX export with fp16 weight storage, and the model cards beside each file.

Weights are stored as float16 initializers followed by a Cast to float32, so
files are half size while ONNX Runtime still computes in float32 (it folds the
casts once when the session starts).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from shared import taxonomy
from training.nets import NORMALISATION

log = logging.getLogger(__name__)

OPSET = 17
WEIGHTS_FP16 = "float16 initializers cast to float32 at load"


def store_weights_fp16(path: Path, min_elements: int = 64) -> None:
    """Rewrite the float32 initializers of an ONNX file as float16 plus a Cast node."""
    model = onnx.load(str(path))
    graph = model.graph
    casts, kept = [], []
    for initializer in graph.initializer:
        array = numpy_helper.to_array(initializer)
        if array.dtype != np.float32 or array.size < min_elements:
            kept.append(initializer)
            continue
        half_name = f"{initializer.name}__fp16"
        kept.append(numpy_helper.from_array(array.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [initializer.name], to=TensorProto.FLOAT, name=f"{initializer.name}__cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def file_version(path: Path) -> str:
    """A model version: the first 12 hex digits of the file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def training_environment() -> dict[str, Any]:
    return {
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads",
        "torch": torch.__version__,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_card(folder: Path, card: dict[str, Any], markdown_extra: str = "") -> None:
    """Write ``card.json`` and a short ``card.md`` beside the model file."""
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [
        f"# Model card: {card['name']}",
        "",
        card.get("summary", ""),
        "",
        f"- version: `{card['version']}`",
        f"- file: `{card['file']}` ({card['weights']})",
        f"- input: {card['input']['width']}x{card['input']['height']} RGB, {card['input']['resize']}, "
        f"scaled (x * {card['input']['normalisation']['scale']:.6f} - mean) / std with mean "
        f"{card['input']['normalisation']['mean']} and std {card['input']['normalisation']['std']}",
        f"- outputs: {', '.join(card['outputs'])}",
        f"- training data: {card['training'].get('data', 'not recorded')}",
        f"- training time: {card['training'].get('seconds', 0) / 60:.1f} minutes on {card['training']['hardware']}",
        "",
        markdown_extra,
        "",
        "Figures on the held-out split are in `reports/models.md`; the JSON card holds the classes.",
        "",
    ]
    (folder / "card.md").write_text("\n".join(lines))


def _input_section(width: int, height: int, resize: str) -> dict[str, Any]:
    return {"width": width, "height": height, "layout": "NCHW", "colour": "RGB", "resize": resize, "normalisation": NORMALISATION}


def export_detector(model: torch.nn.Module, args, log_records: list[dict], train_count: int, fp16_weights: bool = True) -> Path:
    """Export the detector with a dynamic batch axis and write its card."""
    folder: Path = args.out
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "detector.onnx"
    dummy = torch.zeros(1, 3, args.input_height, args.input_width)
    torch.onnx.export(
        model, (dummy,), str(path), input_names=["images"], output_names=["boxes", "scores"],
        dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}},
        opset_version=OPSET, dynamo=False,
    )
    if fp16_weights:
        store_weights_fp16(path)
    last = log_records[-1] if log_records else {}
    card = {
        "name": "detector",
        "kind": "detector",
        "summary": "FCOS one-stage, anchor-free detector on an ImageNet EfficientNet-Lite0 backbone with a "
                   "feature pyramid (P3-P7, 96 channels) and a slim head (two convolutions per tower).",
        "version": file_version(path),
        "file": path.name,
        "weights": WEIGHTS_FP16 if fp16_weights else "float32",
        "input": _input_section(args.input_width, args.input_height, "letterbox"),
        "classes": list(taxonomy.DETECTOR_CLASSES),
        "outputs": {
            "boxes": "[batch, locations, 4] x1 y1 x2 y2 in input pixels",
            "scores": "[batch, locations, classes] sqrt(sigmoid(class logit) * sigmoid(centerness))",
        },
        "postprocess": {"score_threshold": 0.3, "nms_iou": 0.6, "max_detections": 50, "pre_nms_top_k": 1000},
        "footwear_convention": "one box per shoe; colorful-fashion shoe boxes (one per photo, covering one or "
                               "both shoes) are greyed out in training and ignored in evaluation",
        "training": {
            "data": f"{train_count} photos: clothing-co-parsing (mask-derived boxes) and colorful-fashion "
                    "(VOC boxes) outside the held-out split, plus catalog photos with pseudo-boxes when given",
            "epochs": args.epochs,
            "seconds": sum(r.get("train_seconds", 0.0) for r in log_records),
            "validation_map50": last.get("val_map50"),
            **training_environment(),
        },
    }
    write_card(folder, card)
    log.info("exported %s (version %s)", path, card["version"])
    return path


def export_classifier(
    model: torch.nn.Module, folder: Path, name: str, card_extra: dict[str, Any], input_size: int, fp16_weights: bool = True
) -> Path:
    """Export a multi-task classifier (or the wearer) and write its card."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    task_names = model.model.task_names
    outputs = [f"{task}_probabilities" for task in task_names] + ["embedding", "task_features"]
    dummy = torch.zeros(1, 3, input_size, input_size)
    torch.onnx.export(
        model, (dummy,), str(path), input_names=["images"], output_names=outputs,
        dynamic_axes={key: {0: "batch"} for key in ["images", *outputs]},
        opset_version=OPSET, dynamo=False,
    )
    if fp16_weights:
        store_weights_fp16(path)
    card = {
        "name": name,
        "version": file_version(path),
        "file": path.name,
        "weights": WEIGHTS_FP16 if fp16_weights else "float32",
        "input": _input_section(input_size, input_size, "crop padded to a square with grey, then resized"),
        "embedding_size": model.model.embedding_size,
        "task_feature_size": 128,
        "outputs": {
            **{f"{task}_probabilities": f"[batch, {len(card_extra['tasks'][task])}] softmax over {task}" for task in task_names},
            "embedding": f"[batch, {model.model.embedding_size}] L2-normalised pooled feature: the search embedding",
            "task_features": f"[batch, {128 * len(task_names)}] 128-D feature of each task, in task order",
        },
        **card_extra,
    }
    card["training"] = {**card.get("training", {}), **training_environment()}
    write_card(folder, card)
    log.info("exported %s (version %s)", path, card["version"])
    return path
