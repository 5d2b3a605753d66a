"""Measure the committed models on the held-out split and write the model report.

    python -m training.report            # writes reports/models.json and reports/models.md

Detection: mAP@0.5 (Pascal VOC all-point interpolation) per class and overall
on the mask-derived boxes of held-out clothing-co-parsing photos, plus
mAP@0.5:0.95 (COCO thresholds), a precision-recall plot per class, and the
share of held-out catalog photos in which the product's own class is found.
Classification: accuracy per task on held-out catalog crops and street crops.
Wearer: accuracy on held-out catalog photos. Latency: ONNX Runtime on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared import datasets, taxonomy
from shared.inference import Classifier, Detector
from evaluation.detection import evaluate_detector, plot_precision_recall
from training.classifier_data import load_crop_set

log = logging.getLogger("training.report")

REPORTS = Path("reports")
FIGURES = REPORTS / "figures"


def catalog_own_class_rate(detector: Detector, rows: list[datasets.CatalogRow]) -> dict:
    found, total = Counter(), Counter()
    for start in tqdm(range(0, len(rows), 16), desc="held-out catalog detection", mininterval=10):
        batch = rows[start : start + 16]
        images = [Image.open(row.path).convert("RGB") for row in batch]
        for row, detections in zip(batch, detector.detect(images, score_threshold=0.2)):
            if row.high_level not in detector.classes:
                continue
            total[row.high_level] += 1
            found[row.high_level] += any(d.label == row.high_level for d in detections)
    per_class = {c: {"detected": found[c], "photos": total[c], "share": found[c] / total[c]} for c in total}
    return {"share": sum(found.values()) / max(sum(total.values()), 1), "per_class": per_class}


def training_photo_counts(detector_classes: list[str]) -> dict[str, int]:
    """Training photos (outside the held-out split) that contain each class."""
    from training.detection_data import street_samples

    counts: Counter = Counter()
    for dataset, samples in street_samples(Path("var/cache")).items():
        heldout = datasets.heldout_ids(dataset)
        for sample in samples:
            if sample.photo_id not in heldout:
                for label in set(sample.labels.tolist()):
                    counts[detector_classes[label]] += 1
    return dict(counts)


def evaluate_classifier(model: Classifier, cache: Path, category: str) -> dict | None:
    candidates = sorted(cache.glob(f"{category}-{model.input_size}-*-heldout.npz"))
    candidates = [c for c in candidates if "limit" not in c.name]
    if not candidates:
        log.warning("no held-out crops cached for %s; run training.train_classifier first", category)
        return None
    crop_set = load_crop_set(candidates[0])
    output = model.run(crop_set.images[:, 0]) if len(crop_set.item_ids) else None
    result: dict = {}
    for source in ("catalog", "street"):
        mask = crop_set.source == source
        for task, vocabulary in model.tasks.items():
            labels = crop_set.labels.get(task)
            if output is None or labels is None:
                continue
            known = mask & (labels >= 0)
            if known.sum() == 0:
                continue
            predicted = output.probabilities[task].argmax(axis=1)
            result.setdefault(source, {})[f"{task}_accuracy"] = float((predicted[known] == labels[known]).mean())
            result[source][f"{task}_count"] = int(known.sum())
    return result


def latency(detector: Detector, classifier: Classifier, repeats: int = 20) -> dict:
    photo = Image.open(datasets.datasets_dir() / datasets.CCP / "photos" / "0001.jpg").convert("RGB")
    detector.detect([photo])
    started = time.perf_counter()
    for _ in range(repeats):
        detector.detect([photo])
    detect_ms = (time.perf_counter() - started) / repeats * 1000
    crops = np.zeros((8, classifier.input_size, classifier.input_size, 3), np.uint8)
    classifier.run(crops[:1])
    started = time.perf_counter()
    for _ in range(repeats):
        classifier.run(crops[:1])
    single_ms = (time.perf_counter() - started) / repeats * 1000
    classifier.run(crops)
    started = time.perf_counter()
    for _ in range(repeats):
        classifier.run(crops)
    batch_ms = (time.perf_counter() - started) / repeats / len(crops) * 1000
    return {
        "detector_ms_per_photo": detect_ms,
        "classifier_ms_per_crop_batch1": single_ms,
        "classifier_ms_per_crop_batch8": batch_ms,
        "threads": 2,
        "photo": f"{photo.width}x{photo.height}",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of the committed models")
    parser.add_argument("--cache", type=Path, default=Path("var/cache/classifier"), help="cached held-out crops")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    FIGURES.mkdir(parents=True, exist_ok=True)
    root = datasets.datasets_dir()
    report: dict = {}

    detector = Detector(args.models / "detector", threads=2)
    ccp_photos = datasets.read_ccp(root, sorted(datasets.heldout_ids(datasets.CCP)))
    detection, predictions, truths = evaluate_detector(detector, ccp_photos)
    counts = training_photo_counts(detector.classes)
    frequent = [c for c, v in detection["per_class"].items() if counts.get(c, 0) >= 30]
    detection["map50_classes_with_30_training_photos"] = float(np.mean([detection["per_class"][c]["map50"] for c in frequent]))
    for name, value in detection["per_class"].items():
        value["training_photos"] = counts.get(name, 0)
    report["detection"] = detection
    plot_precision_recall(detector, predictions, truths, FIGURES / "detector-pr.png", "held-out clothing-co-parsing, IoU 0.5")

    colorful = datasets.read_colorful(root, sorted(datasets.heldout_ids(datasets.COLORFUL)))
    report["detection_colorful"] = evaluate_detector(detector, colorful)[0]

    catalog = [r for r in datasets.read_catalog(root) if r.product_id in datasets.heldout_ids(datasets.CATALOG)]
    report["catalog_own_class_detected"] = catalog_own_class_rate(detector, catalog)

    report["classification"] = {}
    first_classifier = None
    for category in taxonomy.CLASSIFIER_CATEGORIES:
        folder = args.models / "classifiers" / category
        if not (folder / "card.json").exists():
            continue
        model = Classifier(folder, threads=2)
        first_classifier = first_classifier or model
        result = evaluate_classifier(model, args.cache, category)
        if result is not None:
            report["classification"][category] = result

    wearer = Classifier(args.models / "wearer", threads=2)
    report["wearer"] = evaluate_classifier(wearer, args.cache, "wearer")
    if first_classifier is not None:
        report["latency"] = latency(detector, first_classifier)

    for run in sorted(Path("runs").glob("*/curves.png")):
        shutil.copy(run, FIGURES / f"curves-{run.parent.name}.png")

    record_in_cards(args.models, report)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "models.json").write_text(json.dumps(report, indent=2) + "\n")
    (REPORTS / "models.md").write_text(render_markdown(report))
    log.info("wrote reports/models.json and reports/models.md")


def record_in_cards(models: Path, report: dict) -> None:
    """Copy each model's held-out figures into its card, so the card carries them."""
    from training.export import write_card

    detection = report["detection"]
    figures = {
        models / "detector": {
            "map50": detection["map50"],
            "map50_classes_with_30_training_photos": detection["map50_classes_with_30_training_photos"],
            "map50_95": detection["map50_95"],
            "per_class_map50": {name: value["map50"] for name, value in detection["per_class"].items()},
            "catalog_own_class_detected": report["catalog_own_class_detected"]["share"],
            "latency_ms_per_photo": report.get("latency", {}).get("detector_ms_per_photo"),
        },
        models / "wearer": report.get("wearer"),
    }
    for category, result in report["classification"].items():
        figures[models / "classifiers" / category] = result
    for folder, heldout in figures.items():
        card_path = folder / "card.json"
        if heldout is None or not card_path.exists():
            continue
        card = json.loads(card_path.read_text())
        card["heldout"] = heldout
        write_card(folder, card, "Held-out figures (`heldout` in card.json):\n\n```json\n" + json.dumps(heldout, indent=1)[:1500] + "\n```")


def render_markdown(report: dict) -> str:
    detection = report["detection"]
    lines = [
        "# Model report",
        "",
        "Written by `python -m training.report` from the committed models on the held-out split",
        "(`splits/`), which no model trained or was selected on.",
        "",
        "## Detection",
        "",
        f"Held-out clothing-co-parsing photos: {detection['photos']}; boxes derived from the pixel masks.",
        "mAP@0.5 uses Pascal VOC all-point interpolation; mAP@0.5:0.95 averages IoU 0.50 to 0.95.",
        "",
        f"- mAP@0.5, all classes: **{detection['map50']:.3f}**",
        f"- mAP@0.5, classes with at least 30 training photos: **{detection['map50_classes_with_30_training_photos']:.3f}**",
        f"- mAP@0.5:0.95: {detection['map50_95']:.3f}",
        f"- colorful-fashion held-out mAP@0.5 (footwear ignored, other convention): {report['detection_colorful']['map50']:.3f}",
        f"- held-out catalog photos in which the product's own class is detected (score at least 0.2): "
        f"{report['catalog_own_class_detected']['share']:.1%}",
        "",
        "| class | AP@0.5 | held-out instances | training photos | catalog own-class detected |",
        "| --- | --- | --- | --- | --- |",
    ]
    catalog = report["catalog_own_class_detected"]["per_class"]
    for name, value in sorted(detection["per_class"].items(), key=lambda kv: -kv[1]["map50"]):
        share = f"{catalog[name]['share']:.1%} of {catalog[name]['photos']}" if name in catalog else "-"
        lines.append(f"| {name} | {value['map50']:.3f} | {value['instances']} | {value['training_photos']} | {share} |")
    lines += ["", "![precision-recall per class](figures/detector-pr.png)", "", "## Classification (held-out crops)", "",
              "| category | catalog type | catalog colour | catalog usage | street type | street colour (mask) |",
              "| --- | --- | --- | --- | --- | --- |"]

    def cell(source: dict | None, key: str) -> str:
        if not source or key not in source:
            return "-"
        return f"{source[key]:.3f} (n={source[key.replace('_accuracy', '_count')]})"

    for category, result in report["classification"].items():
        catalog_result, street = result.get("catalog"), result.get("street")
        lines.append(f"| {category} | {cell(catalog_result, 'type_accuracy')} | {cell(catalog_result, 'colour_accuracy')} | "
                     f"{cell(catalog_result, 'usage_accuracy')} | {cell(street, 'type_accuracy')} | {cell(street, 'colour_accuracy')} |")
    wearer = (report.get("wearer") or {}).get("catalog", {})
    lines += ["", f"Wearer accuracy on held-out catalog photos: {cell(wearer, 'wearer_accuracy')}", ""]
    if "latency" in report:
        latency_figures = report["latency"]
        lines += [
            "## Latency (ONNX Runtime, CPU, 2 threads)", "",
            f"- detector: {latency_figures['detector_ms_per_photo']:.1f} ms per {latency_figures['photo']} photo",
            f"- classifier: {latency_figures['classifier_ms_per_crop_batch1']:.1f} ms per crop alone, "
            f"{latency_figures['classifier_ms_per_crop_batch8']:.1f} ms per crop in a batch of 8", "",
        ]
    lines += ["## Training curves", ""]
    for figure in sorted(FIGURES.glob("curves-*.png")):
        lines.append(f"![{figure.stem}](figures/{figure.name})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
