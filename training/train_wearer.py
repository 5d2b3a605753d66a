"""Train the wearer classifier (man, woman, boy, girl) and export it to ONNX.

    python -m training.train_wearer --out models/wearer

Person crops of catalog photos of worn products, labelled with the product's
gender (Unisex rows left out), with background-augmented copies. The network
is EfficientNet-Lite0 cut after block 10 (stride 16): gender needs less
capacity than product type, and the short network keeps the model near 1 MB.
Classes are weighted by inverse frequency because boys and girls are rare.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from shared import datasets, taxonomy
from training import export
from training.augment import BackgroundPool
from training.classifier_data import build_wearer_set, load_crop_set, save_crop_set, split_rows
from training.engine import RunDirectory
from training.nets import ClassifierForExport, MultiTaskClassifier
from training.train_classifier import add_training_arguments, fit

log = logging.getLogger("training.train_wearer")

LAST_BLOCK = 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/wearer"), help="checkpoint and log folder")
    parser.add_argument("--out", type=Path, default=None, help="model folder to export into")
    add_training_arguments(parser, epochs=8, size=128, freeze=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    suffix = f"wearer-{args.size}-{args.views}" + (f"-limit{args.limit}" if args.limit else "")
    paths = [args.cache_dir / f"{suffix}-{part}.npz" for part in ("train", "validation", "heldout")]
    if args.rebuild or not all(p.exists() for p in paths):
        rows = datasets.read_catalog(datasets.datasets_dir())
        if args.limit:
            rows = rows[: args.limit]
        train_rows, validation_rows, heldout_rows = split_rows(rows, args.seed)
        pool = BackgroundPool(args.size, count=60 if args.limit else 400, max_photos=20 if args.limit else 200)
        sets = [build_wearer_set(part, args.size, views, pool) for part, views in ((train_rows, args.views), (validation_rows, 1), (heldout_rows, 1))]
        for crop_set, path in zip(sets, paths):
            save_crop_set(crop_set, path)
    train_set, validation_set = load_crop_set(paths[0]), load_crop_set(paths[1])
    counts = np.bincount(train_set.labels["wearer"], minlength=len(taxonomy.WEARER_CLASSES)).astype(np.float32)
    log.info("wearer: %d training crops, per class %s", len(train_set.item_ids), dict(zip(taxonomy.WEARER_CLASSES, counts.astype(int).tolist())))
    weights = torch.from_numpy(counts.sum() / np.maximum(counts, 1) / len(counts))

    model = MultiTaskClassifier({"wearer": len(taxonomy.WEARER_CLASSES)}, last_block=LAST_BLOCK)
    run = RunDirectory(args.run_dir)
    seconds = fit(model, train_set, validation_set, run, args, class_weights={"wearer": weights})

    if args.out:
        model.eval()
        last = run.read_log()[-1]
        export.export_classifier(ClassifierForExport(model).eval(), args.out, "wearer", {
            "kind": "wearer",
            "summary": "Wearer classifier (man, woman, boy, girl) of person crops: EfficientNet-Lite0 (ImageNet) "
                       f"cut after block {LAST_BLOCK}, fine-tuned from block {args.freeze_through + 1}.",
            "tasks": {"wearer": list(taxonomy.WEARER_CLASSES)},
            "loss_weights": {"wearer": 1.0},
            "training": {
                "data": f"{len(train_set.item_ids)} person crops of catalog photos outside the held-out split, "
                        f"labelled with the product's gender, {args.views - 1} background-augmented copies each",
                "class_counts": dict(zip(taxonomy.WEARER_CLASSES, counts.astype(int).tolist())),
                "epochs": args.epochs, "seconds": seconds, "schedule": "two cycles of a triangular cyclic learning rate",
                "validation": {k: v for k, v in last.items() if k.startswith("val_")},
            },
        }, args.size)


if __name__ == "__main__":
    main()
