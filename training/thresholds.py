"""Measure the figures behind the gateway's thresholds and write reports/thresholds.md.

    python -m training.thresholds

* Item score: the share of detections (other than people) in each score band
  that match a true item of their class at IoU 0.5, on the held-out
  clothing-co-parsing photos. The gateway searches items from
  ``GATEWAY_MIN_ITEM_SCORE`` up.
* Wearer: how the wearer model labels the first detected person of held-out
  street photos, by probability threshold and crop margin. The street sets have
  no gender labels and show mostly women, so a high count of "man" at a
  threshold suggests errors (the photos do include a few men).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared import datasets, taxonomy
from shared.boxes import expand_box, iou_matrix
from shared.inference import Classifier, Detector

log = logging.getLogger("training.thresholds")

SCORE_BANDS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (0.6, 1.01))
WEARER_THRESHOLDS = (0.6, 0.7, 0.8)
WEARER_MARGINS = (0.0, 0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"), help="folder of the committed models")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    root = datasets.datasets_dir()
    detector = Detector(args.models / "detector", threads=2)
    wearer = Classifier(args.models / "wearer", threads=2)
    photos = datasets.read_ccp(root, sorted(datasets.heldout_ids(datasets.CCP)))

    bands = {band: [0, 0] for band in SCORE_BANDS}
    wearer_counts: Counter = Counter()
    for photo in tqdm(photos, desc="held-out photos", mininterval=10):
        image = Image.open(photo.path).convert("RGB")
        detections = detector.detect([image], score_threshold=SCORE_BANDS[0][0])[0]
        for detection in detections:
            if detection.label == taxonomy.PERSON:
                continue
            truth = np.array([item.box for item in photo.items if item.high_level == detection.label], np.float32).reshape(-1, 4)
            matched = len(truth) > 0 and float(iou_matrix(detection.box[None], truth).max()) >= 0.5
            for (low, high), counts in bands.items():
                if low <= detection.score < high:
                    counts[0] += matched
                    counts[1] += 1
        persons = [d for d in detections if d.label == taxonomy.PERSON][:1]
        for person in persons:
            for margin in WEARER_MARGINS:
                crop = wearer.crop(image, expand_box(person.box, margin, image.width, image.height))
                probabilities = wearer.run(crop[None]).probabilities["wearer"][0]
                best = int(np.argmax(probabilities))
                for threshold in WEARER_THRESHOLDS:
                    if probabilities[best] >= threshold:
                        wearer_counts[(margin, threshold, taxonomy.WEARER_CLASSES[best])] += 1

    report = {
        "photos": len(photos),
        "item_precision_by_score": [
            {"band": [low, min(high, 1.0)], "detections": n, "matching_a_true_item": hits / max(n, 1)}
            for (low, high), (hits, n) in bands.items()
        ],
        "wearer_labels": [
            {"margin": margin, "threshold": threshold, **{name: wearer_counts[(margin, threshold, name)] for name in taxonomy.WEARER_CLASSES}}
            for margin in WEARER_MARGINS for threshold in WEARER_THRESHOLDS
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "thresholds.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Gateway thresholds",
        "",
        f"Written by `python -m training.thresholds` from the committed models on the {len(photos)} held-out",
        "clothing-co-parsing photos.",
        "",
        "## Item detections: share matching a true item (same class, IoU 0.5), by score",
        "",
        "| score | detections | matching |",
        "| --- | --- | --- |",
    ]
    for row in report["item_precision_by_score"]:
        lines.append(f"| {row['band'][0]:.1f} to {row['band'][1]:.1f} | {row['detections']} | {row['matching_a_true_item']:.1%} |")
    lines += [
        "",
        "## Wearer labels of the first person per photo (no gender labels; the photos show mostly women)",
        "",
        "| crop margin | probability at least | " + " | ".join(taxonomy.WEARER_CLASSES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in taxonomy.WEARER_CLASSES) + " |",
    ]
    for row in report["wearer_labels"]:
        lines.append(f"| {row['margin']:.0%} | {row['threshold']} | " + " | ".join(str(row[n]) for n in taxonomy.WEARER_CLASSES) + " |")
    (args.out / "thresholds.md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s", args.out / "thresholds.md")


if __name__ == "__main__":
    main()
