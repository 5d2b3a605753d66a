"""Detect each catalog product's own item, for classifier crops and detector
pseudo-boxes.

    python -m training.catalog_boxes --detector models/detector --out runs/catalog_boxes.json

A catalog photo of a T-shirt also shows trousers, so the classifier of each
category must see the product's own item. For every apparel row the most
confident detection of the product's high-level class is its crop box; when
none clears ``--min-score`` the whole photo is used and counted. Photos where
the product's class is found also yield pseudo-boxes (all detections above
``--pseudo-score``) to train the detector on models on white.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from shared import datasets, taxonomy
from shared.inference import Detector

log = logging.getLogger("training.catalog_boxes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", type=Path, default=Path("models/detector"), help="detector model folder")
    parser.add_argument("--out", type=Path, default=Path("runs/catalog_boxes.json"), help="JSON file to write")
    parser.add_argument("--min-score", type=float, default=0.2, help="lowest score accepted as the product's item")
    parser.add_argument("--pseudo-score", type=float, default=0.5, help="lowest score kept as a pseudo-box")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--limit", type=int, default=0, help="process only this many rows (smoke runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    detector = Detector(args.detector, threads=args.threads)
    rows = datasets.read_catalog(datasets.datasets_dir())
    if args.limit:
        rows = rows[: args.limit]
    records, outcome = [], Counter()
    batch_size = 16
    for start in tqdm(range(0, len(rows), batch_size), desc="catalog boxes", mininterval=10):
        batch = rows[start : start + batch_size]
        images = [Image.open(row.path).convert("RGB") for row in batch]
        for row, image, detections in zip(batch, images, detector.detect(images, score_threshold=0.1)):
            own = [d for d in detections if d.label == row.high_level and d.score >= args.min_score]
            if own:
                box, source = own[0].box, "detected"
            else:
                box, source = [0, 0, image.width, image.height], "whole photo"
            outcome[(row.high_level, source)] += 1
            pseudo = [d for d in detections if d.score >= args.pseudo_score] if own else []
            records.append({
                "product_id": row.product_id,
                "high_level": row.high_level,
                "box": [round(float(v), 1) for v in box],
                "box_source": source,
                "score": own[0].score if own else None,
                "boxes": [[round(float(v), 1) for v in d.box] for d in pseudo],
                "classes": [d.label for d in pseudo],
            })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"detector_version": detector.version, "records": records}))
    for high_level in taxonomy.HIGH_LEVEL_CLASSES:
        found, missed = outcome[(high_level, "detected")], outcome[(high_level, "whole photo")]
        if found + missed:
            log.info("%-10s own item detected in %d of %d photos", high_level, found, found + missed)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
