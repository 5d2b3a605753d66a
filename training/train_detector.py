"""Train the apparel detector (FCOS on EfficientNet-Lite0) and export it to ONNX.

    python -m training.train_detector --epochs 6 --out models/detector
    python -m training.train_detector --epochs 3 --init runs/detector/checkpoint.pt \
        --catalog-pseudo runs/pseudo_boxes.json --run-dir runs/detector-catalog

Trains on the street photos outside the held-out split, with boxes derived
from clothing-co-parsing masks and colorful-fashion VOC boxes. With
``--catalog-pseudo`` it also trains on catalog photos with pseudo-boxes. A tenth of the
training photos is kept apart for per-epoch validation (mAP@0.5). Runs resume
from ``RUN_DIR/checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared import datasets, taxonomy
from shared.metrics import Detections, mean_average_precision
from training import export
from training.detection_data import DetectionDataset, catalog_samples, collate, photo_to_sample, street_samples
from training.engine import RunDirectory, check_finite
from training.nets import NORMALISATION, DetectorForExport, build_detector, freeze_batch_norm

log = logging.getLogger("training.train_detector")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs to train (default 6)")
    parser.add_argument("--batch-size", type=int, default=8, help="photos per step (default 8)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--input-width", type=int, default=256, help="network input width in pixels, a multiple of 32")
    parser.add_argument("--input-height", type=int, default=384, help="network input height in pixels, a multiple of 32")
    parser.add_argument("--freeze-through", type=int, default=4, help="freeze the stem and Lite0 blocks 0..N (default 4, stride 8)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/detector"), help="checkpoint and log folder")
    parser.add_argument("--out", type=Path, default=None, help="model folder to write detector.onnx and its card into")
    parser.add_argument("--init", type=Path, default=None, help="checkpoint whose model weights start this run")
    parser.add_argument("--catalog-pseudo", type=Path, default=None, help="pseudo-box JSON of catalog photos to add")
    parser.add_argument("--catalog-per-class", type=int, default=0, help="add at most this many catalog photos per product class (0: all)")
    parser.add_argument("--limit", type=int, default=0, help="use only this many training photos (smoke runs)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop each epoch after this many steps (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("input_width", "input_height"):
        if getattr(args, name) % 32:
            parser.error(f"--{name.replace('_', '-')} must be a multiple of 32, got {getattr(args, name)}")
    return args


def split_samples(args: argparse.Namespace):
    street = limited_street_samples(args.limit) if args.limit else street_samples(Path("var/cache"))
    train, validation = [], []
    rng = random.Random(args.seed)
    for dataset, samples in street.items():
        heldout = datasets.heldout_ids(dataset)
        pool = [s for s in samples if s.photo_id not in heldout]
        rng.shuffle(pool)
        cut = max(1, len(pool) // 10)
        validation.extend(pool[:cut])
        train.extend(pool[cut:])
    if args.catalog_pseudo:
        heldout = datasets.heldout_ids(datasets.CATALOG)
        catalog = [s for s in catalog_samples(args.catalog_pseudo) if s.photo_id not in heldout]
        rng.shuffle(catalog)
        if args.catalog_per_class:
            # Tops are half the catalog; a cap per class keeps rarer classes visible.
            taken: dict[str, int] = {}
            capped = []
            for sample in catalog:
                if taken.get(sample.product_class, 0) < args.catalog_per_class:
                    taken[sample.product_class] = taken.get(sample.product_class, 0) + 1
                    capped.append(sample)
            catalog = capped
        log.info("adding %d catalog photos with pseudo-boxes", len(catalog))
        train.extend(catalog)
    rng.shuffle(train)
    if args.limit:
        train, validation = train[: args.limit], validation[: max(2, args.limit // 4)]
    return train, validation


def limited_street_samples(limit: int) -> dict[str, list]:
    """Read the first ``limit`` photos of each street set directly (smoke runs)."""
    root = datasets.datasets_dir()
    ccp_ids = sorted(p.stem for p in (root / datasets.CCP / "annotations" / "pixel-level").glob("*.mat"))[:limit]
    colorful_ids = sorted(p.stem for p in (root / datasets.COLORFUL / "Annotations").glob("*.xml"))[:limit]
    return {
        datasets.CCP: [photo_to_sample(p) for p in datasets.read_ccp(root, ccp_ids)],
        datasets.COLORFUL: [photo_to_sample(p) for p in datasets.read_colorful(root, colorful_ids)],
    }


def validate(model, loader) -> dict[str, float]:
    model.eval()
    predictions, truths = [], []
    with torch.no_grad():
        for images, targets in loader:
            for output, target in zip(model(images), targets):
                predictions.append(Detections(output["boxes"].numpy(), output["labels"].numpy(), output["scores"].numpy()))
                truths.append(Detections(target["boxes"].numpy(), target["labels"].numpy()))
    labels = list(range(len(taxonomy.DETECTOR_CLASSES)))
    overall, per_label = mean_average_precision(predictions, truths, labels)
    metrics = {"val_map50": overall}
    for label, ap in per_label.items():
        metrics[f"val_ap50_{taxonomy.DETECTOR_CLASSES[label]}"] = ap
    return metrics


def train(args: argparse.Namespace) -> RunDirectory:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    run = RunDirectory(args.run_dir)
    train_samples, validation_samples = split_samples(args)
    log.info("training on %d photos, validating on %d", len(train_samples), len(validation_samples))

    model = build_detector(len(taxonomy.DETECTOR_CLASSES), args.input_width, args.input_height)
    model.backbone.trunk.freeze_through(args.freeze_through)
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=False)["model"])
        log.info("initialised from %s", args.init)

    train_loader = torch.utils.data.DataLoader(
        DetectionDataset(train_samples, args.input_width, args.input_height, train=True),
        batch_size=args.batch_size, shuffle=True, collate_fn=collate, num_workers=1, persistent_workers=True,
    )
    validation_loader = torch.utils.data.DataLoader(
        DetectionDataset(validation_samples, args.input_width, args.input_height, train=False),
        batch_size=args.batch_size, collate_fn=collate, num_workers=1,
    )
    steps_per_epoch = min(len(train_loader), args.max_steps or len(train_loader))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15)

    start_epoch = 1
    state = run.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1

    step = 0
    for epoch in range(start_epoch, args.epochs + 1):
        model.train()
        freeze_batch_norm(model.backbone.trunk)
        started = time.time()
        totals: dict[str, float] = {}
        progress = tqdm(train_loader, total=steps_per_epoch, desc=f"detector epoch {epoch}/{args.epochs}", mininterval=10)
        for batch_index, (images, targets) in enumerate(progress):
            if batch_index >= steps_per_epoch:
                break
            losses = model(images, targets)
            loss = sum(losses.values())
            check_finite(loss, step)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 10.0)
            optimizer.step()
            scheduler.step()
            step += 1
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            totals["loss"] = totals.get("loss", 0.0) + float(loss)
            progress.set_postfix(loss=f"{float(loss):.3f}")

        record = {"epoch": epoch, "lr": scheduler.get_last_lr()[0], "train_seconds": time.time() - started}
        record.update({f"train_{k}" if k != "loss" else "train_loss": v / max(steps_per_epoch, 1) for k, v in totals.items()})
        record.update(validate(model, validation_loader))
        run.log_epoch(record)
        run.save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "args": vars(args),
        })
    run.plot_curves("detector training")

    if args.out:
        model.eval()
        exportable = DetectorForExport(model, args.input_width, args.input_height).eval()
        log_records = run.read_log()
        export.export_detector(exportable, args, log_records, len(train_samples))
    return run


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train(parse_args(argv))


if __name__ == "__main__":
    main()
