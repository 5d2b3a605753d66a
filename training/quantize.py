"""Static int8 quantization (QDQ) of the committed models, with a speed and
agreement report.

    python -m training.quantize --models models --out var/models-int8 [--calibration-photos N] [--only detector top ...]

Writes a models tree with the layout of ``models/`` (detector,
classifiers/<category>, wearer) in which each model is quantized with ONNX
Runtime's ``quantize_static`` in QDQ format, calibrated on real inputs from
outside the held-out split: catalog crops and street crops of the category for
a classifier, person crops for the wearer model, letterboxed street photos for
the detector. Each model then runs against its float32 original on held-out
inputs (top-1 agreement, embedding cosine, detection agreement), and
``quantize_report.json`` beside the models adds their latency on two threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from PIL import Image

from shared import datasets, taxonomy
from shared.boxes import expand_box, iou_matrix
from shared.imaging import catalog_product_box, normalise
from shared.inference import Classifier, Detection, Detector, create_session, load_card

log = logging.getLogger("training.quantize")

DEFAULT_CALIBRATION_PHOTOS = 150
REPORT_NAME = "quantize_report.json"
# ONNX Runtime threads of the sessions that calibrate and compare the models.
SESSION_THREADS = 2
# Latency is timed on two threads and on one. Where other processes keep a
# core busy, two-thread latency measures waiting for that core more than the
# model: with a load average near 6 on 2 cores, the tie classifier took
# 16.7 ms (float32) and 15.0 ms (int8) per crop on two threads, but 4.1 ms and
# 2.6 ms on one (batch 1).
BENCHMARK_THREAD_COUNTS = (2, 1)

# Quantization settings. The notes "Choosing parameters for CPU inference" in
# the docstring of quantize_static (ONNX Runtime 1.32) name QDQ as the format
# the CPU kernels are optimised for. For x86-64 CPUs with VNNI (such as the
# AVX-512 VNNI Xeon these settings were measured on) they advise uint8
# activations, int8 weights and no reduce_range. VNNI accumulates u8 x s8
# products without the saturation that 7-bit weights avoid on older AVX2 cores.
# Symmetric int8 activations (S8S8) ran the tie classifier at 7.6 ms per crop
# against 2.3 ms for U8S8 (batch 1, one thread; 5.2 against 2.9 ms at batch 8).
# Per-channel weights: with one scale per tensor, the top-1 type agreement with
# float32 on held-out catalog crops fell from 0.985 to 0.955 (top) and 0.925
# (footwear), and the embedding cosine from 0.99 to 0.89-0.91. EfficientNet-Lite's
# depthwise convolutions have weight ranges that differ widely between channels.
# MinMax calibration: the 99.999th percentile gave no better agreement on the
# bag, footwear, tie and top classifiers (better on bag, worse on the others).
ACTIVATION_TYPE = QuantType.QUInt8
WEIGHT_TYPE = QuantType.QInt8
PER_CHANNEL = True
REDUCE_RANGE = False
CALIBRATION_METHOD = CalibrationMethod.MinMax
EXTRA_OPTIONS = {
    # Merge the calibration ranges every 16 inputs: by default the MinMax
    # calibrator keeps every intermediate tensor of every input in memory,
    # an estimated tens of megabytes per detector photo.
    "CalibMaxIntermediateOutputs": 16,
}
# One input per calibration batch: ORT's histogram calibrators (Entropy,
# Percentile) stack the batches and fail on a shorter last one.
CALIBRATION_BATCH = 1

# Crops get the margin the indexer and the gateway add around a box; person
# crops for the wearer model get the detector service's default (none).
CROP_MARGIN = 0.08
PERSON_MARGIN = 0.0
# The indexer's default lowest score for a product's own detected box.
CATALOG_SCORE_FLOOR = 0.2
# Held-out inputs per model for the agreement check.
HELDOUT_LIMIT = 200
# A detection of the int8 model matches one of the float32 model when it has
# the same class and at least this IoU.
MATCH_IOU = 0.5
# Neighbours compared per held-out crop when checking that search results keep their order.
NEIGHBOURS = 10
SEED = 0


# --- the models tree ---------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One model folder of the tree: ``detector``, ``wearer`` or ``classifiers/<category>``."""

    relative: str
    kind: str
    category: str | None = None


def model_entries(models_dir: Path) -> list[ModelEntry]:
    """List the model folders under ``models_dir`` that have a card."""
    entries = []
    if (models_dir / "detector" / "card.json").exists():
        entries.append(ModelEntry("detector", "detector"))
    for folder in sorted((models_dir / "classifiers").glob("*/card.json")):
        category = folder.parent.name
        entries.append(ModelEntry(f"classifiers/{category}", "classifier", category))
    if (models_dir / "wearer" / "card.json").exists():
        entries.append(ModelEntry("wearer", "wearer"))
    if not entries:
        raise FileNotFoundError(f"no model folders with a card.json under {models_dir}")
    return entries


def select_entries(entries: list[ModelEntry], only: list[str] | None) -> list[ModelEntry]:
    """Keep the entries named in ``only`` (``detector``, ``wearer``, ``top`` or ``classifiers/top``)."""
    if not only:
        return entries
    by_name = {entry.relative: entry for entry in entries}
    by_name.update({entry.category: entry for entry in entries if entry.category})
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise ValueError(f"unknown model names {unknown}; expected some of {sorted(by_name)}")
    selected = {by_name[name].relative for name in only}
    return [entry for entry in entries if entry.relative in selected]


# --- float32 weights and pre-processing ------------------------------------------


def restore_float32_weights(model: onnx.ModelProto) -> int:
    """Replace each float16 initializer that feeds a Cast to float32 with a
    float32 initializer under the Cast's output name, and drop the Cast.

    The committed files store weights that way to halve their size. The
    quantizer only quantizes weights that are initializers of the Conv and
    Gemm nodes, so the Casts must go. Returns the number of weights restored.
    """
    graph = model.graph
    initializers = {initializer.name: initializer for initializer in graph.initializer}
    restored: list[onnx.TensorProto] = []
    kept_nodes = []
    for node in graph.node:
        source = initializers.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        cast_to = next((attribute.i for attribute in node.attribute if attribute.name == "to"), None)
        if source is not None and source.data_type == TensorProto.FLOAT16 and cast_to == TensorProto.FLOAT:
            weights = numpy_helper.to_array(source).astype(np.float32)
            restored.append(numpy_helper.from_array(weights, node.output[0]))
            continue
        kept_nodes.append(node)

    # A float16 initializer is dropped once no remaining node reads it.
    still_read = {name for node in kept_nodes for name in node.input}
    still_read.update(output.name for output in graph.output)
    kept_initializers = [
        initializer for initializer in graph.initializer
        if initializer.data_type != TensorProto.FLOAT16 or initializer.name in still_read
    ]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers + restored)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    onnx.checker.check_model(model)
    return len(restored)


def prepare_float_model(source: Path, work_dir: Path) -> Path:
    """Write a float32 copy of a committed model, then run ORT's quantization
    pre-processing on it (shape inference and graph optimisation, which folds
    the exporter's padding arithmetic into constants)."""
    model = onnx.load(str(source))
    restored = restore_float32_weights(model)
    float_path = work_dir / "float32.onnx"
    onnx.save(model, str(float_path))
    prepared_path = work_dir / "float32-prepared.onnx"
    quant_pre_process(str(float_path), str(prepared_path))
    log.info("%s: restored %d float32 weights and pre-processed the graph", source.name, restored)
    return prepared_path


# --- nodes kept in float ---------------------------------------------------------

WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})

# Which nodes stay float32 (the --keep-float choices):
#   output-layers: the last weighted layers (the nodes with a Conv, Gemm or
#       MatMul above them and none below) and every node after them;
#   tail: only the nodes after the last weighted layers;
#   none: quantize every node ORT can quantize.
# Measured on the detector with 150 calibration photos, 200 held-out street
# photos and the 128 held-out clothing-co-parsing photos (float32 mAP@0.5 0.369):
#   none:          matched boxes' mean IoU with float32 0.887, mAP@0.5 0.354,
#                  same top detection on 83.5% of photos;
#   tail:          IoU 0.958, mAP@0.5 0.368, same top detection on 84%;
#   output-layers: IoU 0.963, mAP@0.5 0.369, same top detection on 95%.
# On the bag, footwear, tie and top classifiers the choice changed neither the
# top-1 agreement nor the embeddings, because it only affects the task logits
# and the Softmax.
KEEP_FLOAT_CHOICES = ("output-layers", "tail", "none")
DEFAULT_KEEP_FLOAT = "output-layers"


def float_node_names(model: onnx.ModelProto, keep_float: str) -> list[str]:
    """Name the nodes of a pre-processed model that stay float32 under one of ``KEEP_FLOAT_CHOICES``.

    In the classifiers the output layers are the task logits and their
    Softmax. In the detector they are the classification, box regression and
    centerness convolutions of each pyramid level, followed by the box
    decoding (strides, anchor points) and the score's sigmoid and square root.
    """
    if keep_float not in KEEP_FLOAT_CHOICES:
        raise ValueError(f"invalid keep_float {keep_float!r}; expected one of {KEEP_FLOAT_CHOICES}")
    if keep_float == "none":
        return []
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def descendants(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        found, stack, seen = [], [node], {node.name}
        while stack:
            for output in stack.pop().output:
                for consumer in consumers.get(output, []):
                    if consumer.name not in seen:
                        seen.add(consumer.name)
                        found.append(consumer)
                        stack.append(consumer)
        return found

    last_layers = [
        node for node in model.graph.node
        if node.op_type in WEIGHTED_OPS and not any(d.op_type in WEIGHTED_OPS for d in descendants(node))
    ]
    names = {d.name for node in last_layers for d in descendants(node)}
    if keep_float == "output-layers":
        names.update(node.name for node in last_layers)
    if "" in names:
        raise ValueError("a node to keep in float has no name, so quantize_static cannot exclude it")
    return sorted(names)


# --- calibration data ------------------------------------------------------------


class ArrayReader(CalibrationDataReader):
    """Feed a prepared (N, 3, H, W) float32 array to the calibrator in batches."""

    def __init__(self, inputs: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self.inputs = inputs
        self.batch_size = batch_size
        self.batches = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.inputs), self.batch_size):
            yield {"images": self.inputs[start : start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:
        self.batches = self._batches()


def classifier_inputs(classifier: Classifier, crops: np.ndarray) -> np.ndarray:
    """Turn (N, S, S, 3) uint8 crops into the classifier's network input, with
    the normalisation of its card (as ``Classifier.run`` does)."""
    norm = classifier.card["input"]["normalisation"]
    return normalise(crops, norm["mean"], norm["std"], norm["scale"])


@dataclass
class DatasetPool:
    """Dataset reads shared by all models of one run, split into the training
    part (for calibration) and the held-out part (for the agreement check)."""

    calibration_photos: int
    root: Path = field(default_factory=datasets.datasets_dir)
    _catalog: list[datasets.CatalogRow] | None = field(default=None, init=False)
    _street: dict[str, list[datasets.StreetPhoto]] = field(default_factory=dict, init=False)

    def catalog(self, category: str | None, heldout: bool) -> list[datasets.CatalogRow]:
        """Return catalog rows of one high-level class (all classes for None) on one side of the split."""
        if self._catalog is None:
            self._catalog = datasets.read_catalog(self.root)
        heldout_ids = datasets.heldout_ids(datasets.CATALOG)
        return [
            row for row in self._catalog
            if (category is None or row.high_level == category) and (row.product_id in heldout_ids) == heldout
        ]

    def street_photos(self, heldout: bool) -> list[datasets.StreetPhoto]:
        """Return annotated street photos of both street datasets on one side of the split.

        Training photos of clothing-co-parsing are sampled, at most
        ``calibration_photos`` of them, because deriving boxes from its masks
        takes about 80 ms a photo.
        """
        key = "heldout" if heldout else "training"
        if key not in self._street:
            ccp_ids = split_photo_ids(self.root / datasets.CCP / "photos", datasets.heldout_ids(datasets.CCP), heldout)
            if not heldout:
                ccp_ids = sample(ccp_ids, self.calibration_photos)
            colorful_ids = split_photo_ids(
                self.root / datasets.COLORFUL / "JPEGImages", datasets.heldout_ids(datasets.COLORFUL), heldout,
            )
            photos = datasets.read_ccp(self.root, ccp_ids) + datasets.read_colorful(self.root, colorful_ids)
            log.info("read %d %s street photos", len(photos), key)
            self._street[key] = photos
        return self._street[key]

    def street_photo_paths(self, heldout: bool) -> list[Path]:
        """Return photo files of both street datasets on one side of the split, without annotations."""
        paths = []
        for dataset, folder in ((datasets.CCP, "photos"), (datasets.COLORFUL, "JPEGImages")):
            photo_dir = self.root / dataset / folder
            ids = split_photo_ids(photo_dir, datasets.heldout_ids(dataset), heldout)
            paths.extend(photo_dir / f"{photo_id}.jpg" for photo_id in ids)
        return paths


def split_photo_ids(photo_dir: Path, heldout_ids: set[str], heldout: bool) -> list[str]:
    ids = sorted(path.stem for path in photo_dir.glob("*.jpg"))
    return [photo_id for photo_id in ids if (photo_id in heldout_ids) == heldout]


def sample(items: list, count: int) -> list:
    """Return a seeded random sample of at most ``count`` items, in their original order."""
    if len(items) <= count:
        return list(items)
    chosen = sorted(random.Random(SEED).sample(range(len(items)), count))
    return [items[i] for i in chosen]


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def catalog_crops(rows: list[datasets.CatalogRow], detector: Detector, model: Classifier) -> np.ndarray:
    """Cut each catalog product's own item as the indexer does: the best
    detection of its class above the indexer's floor, chosen or replaced by
    ``catalog_product_box``, grown by the crop margin."""
    crops = []
    for start in range(0, len(rows), 16):
        batch = rows[start : start + 16]
        images = [open_rgb(row.path) for row in batch]
        for row, image, found in zip(batch, images, detector.detect(images, score_threshold=CATALOG_SCORE_FLOOR)):
            own = [d for d in found if d.label == row.high_level]
            best = max(own, key=lambda d: d.score) if own else None
            box, _ = catalog_product_box(np.asarray(image), best.box if best else None, best.score if best else None)
            crops.append(model.crop(image, expand_box(box, CROP_MARGIN, image.width, image.height)))
    return np.stack(crops) if crops else np.zeros((0, model.input_size, model.input_size, 3), np.uint8)


def person_crops_of_catalog(rows: list[datasets.CatalogRow], model: Classifier) -> np.ndarray:
    """Cut the person of each catalog photo as the box of its non-white pixels,
    which the wearer model's training crops also use (grown by a few pixels)."""
    crops = []
    for row in rows:
        image = open_rgb(row.path)
        box, _ = catalog_product_box(np.asarray(image), None, None)
        crops.append(model.crop(image, box))
    return np.stack(crops) if crops else np.zeros((0, model.input_size, model.input_size, 3), np.uint8)


def street_crops(photos: list[datasets.StreetPhoto], high_level: str, model: Classifier, margin: float, limit: int) -> np.ndarray:
    """Cut at most ``limit`` annotated items of one high-level class out of street photos."""
    crops = []
    for photo in photos:
        items = [item for item in photo.items if item.high_level == high_level]
        if not items:
            continue
        image = open_rgb(photo.path)
        for item in items:
            crops.append(model.crop(image, expand_box(item.box, margin, image.width, image.height)))
            if len(crops) >= limit:
                return np.stack(crops)
    return np.stack(crops) if crops else np.zeros((0, model.input_size, model.input_size, 3), np.uint8)


@dataclass
class CropSets:
    """Calibration and held-out crops of one classifier, with held-out labels of its first task."""

    calibration: np.ndarray
    calibration_counts: dict[str, int]
    heldout_catalog: np.ndarray
    heldout_catalog_labels: list[str | None]
    heldout_street: np.ndarray


def classifier_crop_sets(entry: ModelEntry, model: Classifier, detector: Detector, pool: DatasetPool) -> CropSets:
    """Collect crops for a category's classifier or the wearer model.

    Calibration mixes catalog crops and street crops from outside the held-out
    split, up to half of them street crops, because the service embeds catalog
    crops when indexing and street crops when searching.
    """
    count = pool.calibration_photos
    if entry.kind == "wearer":
        wearable = [row for row in pool.catalog(None, heldout=False) if worn_with_wearer(row)]
        heldout_rows = sample([row for row in pool.catalog(None, heldout=True) if worn_with_wearer(row)], HELDOUT_LIMIT)
        street = street_crops(pool.street_photos(heldout=False), taxonomy.PERSON, model, PERSON_MARGIN, count // 2)
        catalog = person_crops_of_catalog(sample(wearable, count - len(street)), model)
        heldout_catalog = person_crops_of_catalog(heldout_rows, model)
        heldout_labels = [taxonomy.GENDER_TO_WEARER[row.gender] for row in heldout_rows]
        heldout_street = street_crops(pool.street_photos(heldout=True), taxonomy.PERSON, model, PERSON_MARGIN, HELDOUT_LIMIT)
    else:
        street = street_crops(pool.street_photos(heldout=False), entry.category, model, CROP_MARGIN, count // 2)
        catalog = catalog_crops(sample(pool.catalog(entry.category, heldout=False), count - len(street)), detector, model)
        heldout_rows = sample(pool.catalog(entry.category, heldout=True), HELDOUT_LIMIT)
        heldout_catalog = catalog_crops(heldout_rows, detector, model)
        heldout_labels = [row.fine for row in heldout_rows]
        heldout_street = street_crops(pool.street_photos(heldout=True), entry.category, model, CROP_MARGIN, HELDOUT_LIMIT)
    calibration = np.concatenate([catalog, street])
    if len(calibration) == 0:
        raise ValueError(f"no calibration crops found for {entry.relative}")
    return CropSets(
        calibration, {"catalog": len(catalog), "street": len(street)}, heldout_catalog, heldout_labels, heldout_street,
    )


def worn_with_wearer(row: datasets.CatalogRow) -> bool:
    """Tell whether a catalog photo shows its product worn by a person of a known wearer class."""
    return taxonomy.GENDER_TO_WEARER[row.gender] is not None and row.high_level in taxonomy.WORN_ON_MODEL


def detector_inputs(detector: Detector, paths: list[Path]) -> np.ndarray:
    return np.stack([detector.preprocess(open_rgb(path))[0] for path in paths])


# --- quantization ------------------------------------------------------------------


def quantize_file(prepared_path: Path, output_path: Path, calibration: np.ndarray, nodes_to_exclude: list[str]) -> None:
    """Quantize a pre-processed float32 model with the settings above."""
    quantize_static(
        str(prepared_path),
        str(output_path),
        ArrayReader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=PER_CHANNEL,
        reduce_range=REDUCE_RANGE,
        activation_type=ACTIVATION_TYPE,
        weight_type=WEIGHT_TYPE,
        nodes_to_exclude=nodes_to_exclude,
        calibrate_method=CALIBRATION_METHOD,
        extra_options=dict(EXTRA_OPTIONS),
    )


def settings_description() -> dict[str, Any]:
    return {
        "format": "QDQ",
        "activations": ACTIVATION_TYPE.name,
        "weights": WEIGHT_TYPE.name,
        "per_channel": PER_CHANNEL,
        "reduce_range": REDUCE_RANGE,
        "calibration_method": CALIBRATION_METHOD.name,
        "onnxruntime": ort.__version__,
    }


def write_quantized_card(source_dir: Path, target_dir: Path, file_name: str, calibration_text: str, quantization: dict) -> dict:
    """Write ``card.json`` of a quantized model: the original card with a new
    version, file and weights description, plus a ``quantization`` section.

    The original's held-out figures move into that section as
    ``source_heldout``, because they were measured on the float32 model.
    """
    card = load_card(source_dir)
    source_version, source_file = card["version"], card["file"]
    card["version"] = f"{source_version}-int8"
    card["file"] = file_name
    card["weights"] = f"int8 static QDQ (ONNX Runtime {ort.__version__}), calibrated on {calibration_text}"
    card["quantization"] = {"source_version": source_version, "source_file": source_file, **quantization}
    if "heldout" in card:
        card["quantization"]["source_heldout"] = card.pop("heldout")
    (target_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def write_quantized_markdown(target_dir: Path, card: dict, agreement: dict) -> None:
    """Write ``card.md`` of a quantized model, with its agreement figures in
    place of the float32 model's held-out figures."""
    lines = [
        f"# Model card: {card['name']} (int8)",
        "",
        card.get("summary", ""),
        "",
        f"- version: `{card['version']}`, quantized from `{card['quantization']['source_version']}`",
        f"- file: `{card['file']}`",
        f"- weights: {card['weights']}",
        f"- input: {card['input']['width']}x{card['input']['height']} RGB, {card['input']['resize']}",
        f"- outputs: {', '.join(card['outputs'])}",
        f"- nodes kept float32: {len(card['quantization']['nodes_kept_float'])} ({card['quantization']['keep_float']})",
        "",
        "Agreement with the float32 model on held-out inputs (`python -m training.quantize`):",
        "",
        "```json",
        json.dumps(agreement, indent=1),
        "```",
        "",
    ]
    (target_dir / "card.md").write_text("\n".join(lines))


@dataclass
class Calibration:
    """Calibration inputs of one model, and what the agreement check needs."""

    inputs: np.ndarray
    counts: dict[str, int]
    description: str
    float_model: Detector | Classifier
    crop_sets: CropSets | None = None


def collect_calibration(entry: ModelEntry, source_dir: Path, pool: DatasetPool, detector: Detector) -> Calibration:
    """Prepare a model's calibration inputs with the float32 model's own preprocessing."""
    if entry.kind == "detector":
        paths = sample(pool.street_photo_paths(heldout=False), pool.calibration_photos)
        inputs = detector_inputs(detector, paths)
        description = (
            f"{len(inputs)} letterboxed street photos of clothing-co-parsing and colorful-fashion outside the held-out split"
        )
        return Calibration(inputs, {"street_photos": len(inputs)}, description, detector)

    classifier = Classifier(source_dir, threads=SESSION_THREADS)
    crop_sets = classifier_crop_sets(entry, classifier, detector, pool)
    counts = crop_sets.calibration_counts
    subject = "person" if entry.kind == "wearer" else entry.category
    description = (
        f"{len(crop_sets.calibration)} {subject} crops outside the held-out split "
        f"({counts['catalog']} catalog, {counts['street']} street)"
    )
    return Calibration(classifier_inputs(classifier, crop_sets.calibration), counts, description, classifier, crop_sets)


def quantize_entry(
    entry: ModelEntry, models_dir: Path, out_dir: Path, pool: DatasetPool, detector: Detector, keep_float: str,
) -> dict[str, Any]:
    """Quantize one model folder, write it under ``out_dir`` and measure its
    agreement with the float32 model on held-out inputs."""
    source_dir = models_dir / entry.relative
    target_dir = out_dir / entry.relative
    card = load_card(source_dir)
    started = time.perf_counter()
    calibration = collect_calibration(entry, source_dir, pool, detector)
    log.info("%s: calibrating on %s", entry.relative, calibration.description)

    # Float32 weights, pre-processing, then quantization into a fresh folder,
    # so no file of an earlier run or copy is left beside the new model.
    if target_dir.exists():
        shutil.rmtree(target_dir)
    target_dir.mkdir(parents=True)
    file_name = f"{Path(card['file']).stem}-int8.onnx"
    with tempfile.TemporaryDirectory(prefix="quantize-") as work:
        prepared_path = prepare_float_model(source_dir / card["file"], Path(work))
        nodes_to_exclude = float_node_names(onnx.load(str(prepared_path)), keep_float)
        quantize_file(prepared_path, target_dir / file_name, calibration.inputs, nodes_to_exclude)
    quantization = {
        "settings": settings_description(),
        "calibration": calibration.counts,
        "keep_float": keep_float,
        "nodes_kept_float": nodes_to_exclude,
    }
    new_card = write_quantized_card(source_dir, target_dir, file_name, calibration.description, quantization)
    seconds = time.perf_counter() - started
    log.info("%s: wrote %s (version %s) in %.0f s", entry.relative, target_dir / file_name, new_card["version"], seconds)

    # Agreement with the float32 model on held-out inputs.
    if entry.kind == "detector":
        agreement = compare_detectors(detector, Detector(target_dir, threads=SESSION_THREADS), pool)
    else:
        quantized = Classifier(target_dir, threads=SESSION_THREADS)
        agreement = compare_classifier_sets(calibration.float_model, quantized, calibration.crop_sets)
    log.info("%s: agreement %s", entry.relative, json.dumps(agreement))
    new_card["quantization"]["agreement"] = agreement
    (target_dir / "card.json").write_text(json.dumps(new_card, indent=2) + "\n")
    write_quantized_markdown(target_dir, new_card, agreement)
    return {
        "fp32_version": card["version"],
        "int8_version": new_card["version"],
        "file": f"{entry.relative}/{file_name}",
        "file_megabytes": {
            "fp32": round((source_dir / card["file"]).stat().st_size / 1e6, 2),
            "int8": round((target_dir / file_name).stat().st_size / 1e6, 2),
        },
        "calibration": calibration.counts,
        "keep_float": keep_float,
        "nodes_kept_float": len(nodes_to_exclude),
        "quantize_seconds": round(seconds, 1),
        "agreement": agreement,
    }


def quantize_models(
    models_dir: Path, out_dir: Path, calibration_photos: int = DEFAULT_CALIBRATION_PHOTOS, only: list[str] | None = None,
    keep_float: str = DEFAULT_KEEP_FLOAT, datasets_root: Path | None = None,
) -> dict[str, Any]:
    """Quantize the models of ``models_dir`` into a models tree under ``out_dir``.

    Each selected model's folder under ``out_dir`` is replaced. With ``only``,
    the other models are copied unchanged where ``out_dir`` lacks them, so the
    tree stays complete, and folders written by an earlier run are left alone.
    Calibration and agreement inputs come from ``datasets_root`` (default
    ``$DATASETS_DIR`` or ../shared/datasets). Returns per-model results keyed
    by folder (``detector``, ``classifiers/top``, ``wearer``).
    """
    models_dir, out_dir = Path(models_dir), Path(out_dir)
    if calibration_photos < 1:
        raise ValueError(f"calibration_photos must be at least 1, got {calibration_photos}")
    if keep_float not in KEEP_FLOAT_CHOICES:
        raise ValueError(f"invalid keep_float {keep_float!r}; expected one of {KEEP_FLOAT_CHOICES}")
    # Each quantized folder replaces the one in out_dir, which must not be the source tree.
    if out_dir.resolve() == models_dir.resolve():
        raise ValueError(f"out_dir {out_dir} is the models folder itself; choose another folder such as var/models-int8")
    entries = model_entries(models_dir)
    selected = select_entries(entries, only)
    out_dir.mkdir(parents=True, exist_ok=True)

    for entry in entries:
        if entry not in selected and not (out_dir / entry.relative / "card.json").exists():
            shutil.copytree(models_dir / entry.relative, out_dir / entry.relative, dirs_exist_ok=True)
            log.info("%s: copied unchanged (not selected)", entry.relative)

    # The float32 detector cuts the catalog crops, as it does in the indexer.
    detector = Detector(models_dir / "detector", threads=SESSION_THREADS)
    pool = DatasetPool(calibration_photos, Path(datasets_root) if datasets_root else datasets.datasets_dir())
    results = {}
    for number, entry in enumerate(selected, start=1):
        log.info("quantizing %s (%d of %d)", entry.relative, number, len(selected))
        results[entry.relative] = quantize_entry(entry, models_dir, out_dir, pool, detector, keep_float)
    return results


# --- agreement -----------------------------------------------------------------------


def run_in_batches(model: Classifier, crops: np.ndarray, batch_size: int = 32):
    """Return the task probabilities, the served embeddings and the network's
    own embeddings (before the card's centre is subtracted) of some crops."""
    outputs, raw_embeddings = [], []
    for start in range(0, len(crops), batch_size):
        batch = crops[start : start + batch_size]
        outputs.append(model.run(batch))
        raw_embeddings.append(model.session.run(["embedding"], {"images": classifier_inputs(model, batch)})[0])
    probabilities = {task: np.concatenate([o.probabilities[task] for o in outputs]) for task in model.tasks}
    return probabilities, np.concatenate([o.embeddings for o in outputs]), np.concatenate(raw_embeddings)


def compare_classifiers(
    fp32: Classifier, int8: Classifier, crops: np.ndarray, labels: list[str | None] | None = None,
) -> dict[str, Any]:
    """Compare two versions of a classifier on the same crops: top-1 agreement
    per task, cosine similarity of the served embeddings (centred where the
    card gives a centre), and accuracy of the first task where labels are given."""
    if len(crops) == 0:
        return {"crops": 0}
    probabilities_fp32, embeddings_fp32, raw_fp32 = run_in_batches(fp32, crops)
    probabilities_int8, embeddings_int8, raw_int8 = run_in_batches(int8, crops)

    # Both sets of embeddings are L2-normalised, so a row-wise dot product is the cosine.
    cosine = np.sum(embeddings_fp32 * embeddings_int8, axis=1)
    raw_cosine = np.sum(raw_fp32 * raw_int8, axis=1)
    probability_differences = {task: np.abs(probabilities_fp32[task] - probabilities_int8[task]) for task in fp32.tasks}
    result: dict[str, Any] = {
        "crops": len(crops),
        "top1_agreement": {
            task: float(np.mean(probabilities_fp32[task].argmax(1) == probabilities_int8[task].argmax(1))) for task in fp32.tasks
        },
        "probability_abs_difference_mean": {task: float(value.mean()) for task, value in probability_differences.items()},
        "probability_abs_difference_max": {task: float(value.max()) for task, value in probability_differences.items()},
        "embedding_cosine_mean": float(cosine.mean()),
        "embedding_cosine_min": float(cosine.min()),
        "uncentred_embedding_cosine_mean": float(raw_cosine.mean()),
        "uncentred_embedding_cosine_min": float(raw_cosine.min()),
        f"neighbour_overlap_at_{NEIGHBOURS}": neighbour_overlap(embeddings_fp32, embeddings_int8, NEIGHBOURS),
    }

    if labels is not None:
        main_task = next(iter(fp32.tasks))
        vocabulary = fp32.tasks[main_task]
        known = [i for i, label in enumerate(labels) if label in vocabulary]
        if known:
            truth = np.array([vocabulary.index(labels[i]) for i in known])
            result[f"{main_task}_accuracy"] = {
                "fp32": float(np.mean(probabilities_fp32[main_task][known].argmax(1) == truth)),
                "int8": float(np.mean(probabilities_int8[main_task][known].argmax(1) == truth)),
                "labelled_crops": len(known),
            }
    return result


def neighbour_overlap(reference: np.ndarray, candidate: np.ndarray, k: int) -> float | None:
    """Return the mean share of each crop's k nearest other crops (by cosine)
    that two sets of embeddings of the same crops have in common: how much of
    a search result list would stay the same."""
    count = len(reference)
    k = min(k, count - 1)
    if k < 1:
        return None
    overlaps = []
    for embeddings in (reference, candidate):
        similarity = embeddings @ embeddings.T
        np.fill_diagonal(similarity, -np.inf)
        overlaps.append(np.argsort(-similarity, axis=1)[:, :k])
    shared = [len(set(a) & set(b)) / k for a, b in zip(*overlaps)]
    return float(np.mean(shared))


def compare_classifier_sets(fp32: Classifier, int8: Classifier, crop_sets: CropSets) -> dict[str, Any]:
    return {
        "heldout_catalog": compare_classifiers(fp32, int8, crop_sets.heldout_catalog, crop_sets.heldout_catalog_labels),
        "heldout_street": compare_classifiers(fp32, int8, crop_sets.heldout_street),
    }


def best_partner(detection: Detection, candidates: list[Detection]) -> tuple[Detection | None, float]:
    """Return the same-class candidate that overlaps a detection most, and its IoU."""
    same_class = [candidate for candidate in candidates if candidate.label == detection.label]
    if not same_class:
        return None, 0.0
    ious = iou_matrix(detection.box[None], np.stack([candidate.box for candidate in same_class]))[0]
    best = int(np.argmax(ious))
    return same_class[best], float(ious[best])


@dataclass
class DetectionAgreement:
    """Running totals of how the int8 detector's detections match the float32 ones."""

    detections_fp32: int = 0
    detections_int8: int = 0
    matched: int = 0
    matched_ious: list[float] = field(default_factory=list)
    matched_score_differences: list[float] = field(default_factory=list)
    photos_with_detections: int = 0
    top_detection_agreements: int = 0

    def add_photo(self, found_fp32: list[Detection], found_int8: list[Detection]) -> None:
        self.detections_fp32 += len(found_fp32)
        self.detections_int8 += len(found_int8)
        for detection in found_fp32:
            partner, iou = best_partner(detection, found_int8)
            if partner is not None and iou >= MATCH_IOU:
                self.matched += 1
                self.matched_ious.append(iou)
                self.matched_score_differences.append(abs(detection.score - partner.score))
        if found_fp32:
            # Detections come best first, so the first of each list is the photo's top detection.
            self.photos_with_detections += 1
            _, iou = best_partner(found_fp32[0], found_int8[:1])
            self.top_detection_agreements += iou >= MATCH_IOU

    def summary(self) -> dict[str, Any]:
        return {
            "detections_fp32": self.detections_fp32,
            "detections_int8": self.detections_int8,
            "fp32_detections_matched": self.matched / max(self.detections_fp32, 1),
            "matched_iou_mean": float(np.mean(self.matched_ious)) if self.matched_ious else None,
            "matched_score_abs_difference_mean": (
                float(np.mean(self.matched_score_differences)) if self.matched_score_differences else None
            ),
            "top_detection_agreement": self.top_detection_agreements / max(self.photos_with_detections, 1),
        }


def compare_detectors(fp32: Detector, int8: Detector, pool: DatasetPool) -> dict[str, Any]:
    """Compare two versions of the detector on held-out street photos.

    The result gives the mean absolute difference of the raw score maps, over
    all locations and classes and over those where either model reaches the
    card's threshold. It gives the share of the float32 model's detections
    that the int8 model finds with the same class at IoU >= 0.5, with their
    mean IoU and score difference, and the share of photos whose top detection
    both models agree on. Last comes mAP@0.5 of both on the held-out
    clothing-co-parsing photos, over the apparel classes as
    ``evaluation.detection`` computes it.
    """
    from evaluation.detection import evaluate_detector

    paths = sample(pool.street_photo_paths(heldout=True), HELDOUT_LIMIT)
    threshold = fp32.postprocess["score_threshold"]
    score_differences, confident_score_differences = [], []
    agreement = DetectionAgreement()
    for path in paths:
        image = open_rgb(path)
        tensor, _ = fp32.preprocess(image)
        scores_fp32 = fp32.session.run(["scores"], {"images": tensor[None]})[0]
        scores_int8 = int8.session.run(["scores"], {"images": tensor[None]})[0]
        difference = np.abs(scores_fp32 - scores_int8)
        score_differences.append(float(difference.mean()))
        confident = np.maximum(scores_fp32, scores_int8) >= threshold
        if confident.any():
            confident_score_differences.append(float(difference[confident].mean()))
        agreement.add_photo(fp32.detect([image])[0], int8.detect([image])[0])

    heldout_ccp = datasets.read_ccp(pool.root, sorted(datasets.heldout_ids(datasets.CCP)))
    map_fp32 = evaluate_detector(fp32, heldout_ccp)[0]["map50"]
    map_int8 = evaluate_detector(int8, heldout_ccp)[0]["map50"]
    return {
        "photos": len(paths),
        "score_abs_difference_mean": float(np.mean(score_differences)),
        "score_abs_difference_mean_above_threshold": (
            float(np.mean(confident_score_differences)) if confident_score_differences else None
        ),
        **agreement.summary(),
        "heldout_ccp_map50": {"fp32": map_fp32, "int8": map_int8, "photos": len(heldout_ccp)},
    }


# --- speed ---------------------------------------------------------------------------------


def time_runs(session: ort.InferenceSession, batch: np.ndarray, runs: int) -> list[float]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {"images": batch})
        timings.append(time.perf_counter() - started)
    return timings


def compare_latency(
    fp32_path: Path, int8_path: Path, batch: np.ndarray, threads: int, rounds: int = 10, runs_per_round: int = 5,
) -> dict[str, float]:
    """Measure the median latency in ms per input of two model files on the same batch.

    The two sessions take turns in short rounds, so load from other processes
    on a shared machine falls on both alike.
    """
    sessions = {
        "fp32": create_session(fp32_path, threads),
        "int8": create_session(int8_path, threads),
    }
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        time_runs(session, batch, 3)
    for _ in range(rounds):
        for name, session in sessions.items():
            timings[name] += time_runs(session, batch, runs_per_round)
    result = {f"{name}_ms": 1000 * statistics.median(values) / len(batch) for name, values in timings.items()}
    result["speedup"] = result["fp32_ms"] / result["int8_ms"]
    return {key: round(value, 3) for key, value in result.items()}


def measure_speed(fp32_dir: Path, int8_dir: Path, thread_counts: tuple[int, ...] = BENCHMARK_THREAD_COUNTS) -> dict[str, Any]:
    """Time every quantized model of ``int8_dir`` against its float32 original
    in ``fp32_dir`` with ONNX Runtime: ms per crop at batch 1 and 8 for
    classifiers, ms per photo at batch 1 for the detector.

    Returns ``{model: {"threads_2": {"batch_1": {...}, ...}, "threads_1": ...}}``.
    Folders of ``int8_dir`` that hold unquantized copies are skipped.
    """
    fp32_dir, int8_dir = Path(fp32_dir), Path(int8_dir)
    random_state = np.random.default_rng(SEED)
    results: dict[str, Any] = {}
    for entry in model_entries(int8_dir):
        int8_card = load_card(int8_dir / entry.relative)
        if "quantization" not in int8_card:
            continue
        fp32_card = load_card(fp32_dir / entry.relative)
        fp32_path = fp32_dir / entry.relative / fp32_card["file"]
        int8_path = int8_dir / entry.relative / int8_card["file"]
        height, width = fp32_card["input"]["height"], fp32_card["input"]["width"]
        batch_sizes = (1,) if entry.kind == "detector" else (1, 8)
        results[entry.relative] = {}
        for threads in thread_counts:
            timings = {}
            for batch_size in batch_sizes:
                # Values in the range of the normalised input; latency does not depend on the content.
                batch = random_state.uniform(-1, 1, (batch_size, 3, height, width)).astype(np.float32)
                timings[f"batch_{batch_size}"] = compare_latency(fp32_path, int8_path, batch, threads)
            results[entry.relative][f"threads_{threads}"] = timings
        log.info("%s: latency %s", entry.relative, json.dumps(results[entry.relative]))
    return results


def hardware_description() -> dict[str, Any]:
    model_name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model_name,
        "cpu_count": os.cpu_count(),
        "timed_threads": list(BENCHMARK_THREAD_COUNTS),
        "onnxruntime": ort.__version__,
    }


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of the committed float models")
    parser.add_argument("--out", type=Path, default=Path("var/models-int8"), help="folder to write the quantized models tree to")
    parser.add_argument(
        "--calibration-photos", type=int, default=DEFAULT_CALIBRATION_PHOTOS,
        help="calibration inputs per model: crops for a classifier, photos for the detector",
    )
    parser.add_argument("--datasets", type=Path, default=None, help="dataset root; default $DATASETS_DIR or ../shared/datasets")
    parser.add_argument("--only", nargs="+", help="quantize only these models: detector, wearer or category names such as top")
    parser.add_argument(
        "--keep-float", choices=KEEP_FLOAT_CHOICES, default=DEFAULT_KEEP_FLOAT,
        help="nodes kept float32: output-layers (each model's last Conv or Gemm layers and what follows them), "
             "tail (only what follows them) or none",
    )
    parser.add_argument("--skip-speed", action="store_true", help="do not time the models")
    args = parser.parse_args(argv)
    # The quantizer logs a line per adjusted weight scale on the root logger at
    # INFO, so only this project's loggers are raised to INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("training", "shared"):
        logging.getLogger(name).setLevel(logging.INFO)

    results = quantize_models(args.models, args.out, args.calibration_photos, args.only, args.keep_float, args.datasets)
    hardware = hardware_description()
    speed = {}
    if not args.skip_speed:
        # Other processes share the CPU, so the load around the timing is recorded with it.
        hardware["load_average_before_timing"] = round(os.getloadavg()[0], 2)
        speed = measure_speed(args.models, args.out)
        hardware["load_average_after_timing"] = round(os.getloadavg()[0], 2)

    # Entries of models quantized by an earlier run (with --only) are kept.
    report_path = args.out / REPORT_NAME
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["settings"] = settings_description()
    report["hardware"] = hardware
    models_report = report.setdefault("models", {})
    for name, result in results.items():
        models_report[name] = result
    for name, latency in speed.items():
        models_report.setdefault(name, {})["latency"] = latency
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", report_path)


if __name__ == "__main__":
    main()
