"""Compute each classifier's embedding centre and store it in the model card.

    python -m training.embedding_center --category top

The pooled features of one category share a large common direction, so
different products of one category lay within the indexer's near-duplicate
distance (0.02) of each other: before centring, near-duplicate removal merged
nearly every men's watch of the catalog into one. Subtracting the mean
embedding of the category's training crops and normalising again spreads them
out, while two photos of one product stay close. The services apply the
centre stored in ``card.json`` (``shared.inference.Classifier``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from shared import taxonomy
from shared.inference import Classifier
from training.classifier_data import load_crop_set
from training.export import write_card

log = logging.getLogger("training.embedding_center")


def store_center(model_dir: Path, crops: np.ndarray) -> np.ndarray:
    """Write the mean raw embedding of the crops into the card; return it."""
    card_path = model_dir / "card.json"
    card = json.loads(card_path.read_text())
    card.pop("embedding_center", None)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    classifier = Classifier(model_dir, threads=2)

    embeddings = []
    for start in range(0, len(crops), 64):
        embeddings.append(classifier.run(crops[start : start + 64]).embeddings)
    center = np.concatenate(embeddings).mean(axis=0)

    card["embedding_center"] = [round(float(v), 6) for v in center]
    card["embedding_center_crops"] = int(len(crops))
    # The version names what a stored embedding means, so it covers the centre too.
    onnx_bytes = (model_dir / card["file"]).read_bytes()
    card["version"] = hashlib.sha256(onnx_bytes + json.dumps(card["embedding_center"]).encode()).hexdigest()[:12]
    heldout = card.get("heldout")
    extra = "Held-out figures (`heldout` in card.json):\n\n```json\n" + json.dumps(heldout, indent=1)[:1500] + "\n```" if heldout else ""
    write_card(model_dir, card, extra)
    log.info("%s: centre of %d crops stored, version %s", model_dir, len(crops), card["version"])
    return center


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", required=True, choices=taxonomy.CLASSIFIER_CATEGORIES, help="high-level class")
    parser.add_argument("--models", type=Path, default=Path("models/classifiers"), help="folder with one sub-folder per category")
    parser.add_argument("--cache", type=Path, default=Path("var/cache/classifier"), help="cached training crops")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    candidates = sorted(p for p in args.cache.glob(f"{args.category}-*-train.npz") if "limit" not in p.name)
    if not candidates:
        raise SystemExit(f"no cached training crops for {args.category} in {args.cache}; run training.train_classifier first")
    crop_set = load_crop_set(candidates[0])
    catalog = crop_set.source == "catalog"
    store_center(args.models / args.category, crop_set.images[catalog, 0])


if __name__ == "__main__":
    main()
