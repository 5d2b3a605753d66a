"""Train the multi-task classifier of one high-level class and export it to ONNX.

    python -m training.train_classifier --category top --out models/classifiers/top

Heads: fine product type, colour, usage, pattern and season, each with a
128-D layer before its softmax. Loss = 1.0 * type + 0.3 * colour + 0.1 * each
other task, as in Tran et al. (2019); unknown labels are skipped. Training uses
two cycles of a triangular cyclic learning rate. Catalog crops come with
background-augmented copies (``training.augment``); street crops are labelled
from their masks and boxes. Runs resume from ``RUN_DIR/checkpoint.pt``.

For ablations (``training.ablation``), ``--tasks`` switches some losses off and
``--freeze-trunk`` trains only the heads on the pretrained features.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shared import datasets, taxonomy
from training import export
from training.classifier_data import (
    IGNORE, CropSet, build_category_set, load_catalog_boxes, load_crop_set, save_crop_set, split_rows,
)
from training.embedding_center import store_center
from training.engine import RunDirectory, check_finite
from training.nets import NORMALISATION, STRIDE_32_END, ClassifierForExport, MultiTaskClassifier, freeze_batch_norm

log = logging.getLogger("training.train_classifier")

TASK_WEIGHTS = {"type": 1.0, "colour": 0.3, "usage": 0.1, "pattern": 0.1, "season": 0.1, "wearer": 1.0}
CLASSIFIER_TASKS = ("type", *taxonomy.ATTRIBUTES)
CACHE = Path("var/cache/classifier")


def add_training_arguments(parser: argparse.ArgumentParser, epochs: int, size: int, freeze: int) -> None:
    parser.add_argument("--epochs", type=int, default=epochs, help=f"epochs to train (default {epochs})")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per step (default 64)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak of the cyclic learning rate")
    parser.add_argument("--size", type=int, default=size, help=f"square input size in pixels (default {size})")
    parser.add_argument("--views", type=int, default=3, help="views per catalog item: the crop plus N-1 augmented copies")
    parser.add_argument("--freeze-through", type=int, default=freeze, help=f"freeze the stem and Lite0 blocks 0..N (default {freeze})")
    parser.add_argument("--no-augment", action="store_true", help="train on the plain catalog crops only")
    parser.add_argument("--limit", type=int, default=0, help="use only this many catalog rows (smoke runs)")
    parser.add_argument("--rebuild", action="store_true", help="render the cached crops again")
    parser.add_argument("--cache-dir", type=Path, default=CACHE, help=f"where rendered crops are cached (default {CACHE})")
    parser.add_argument("--seed", type=int, default=0)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    array = images.astype(np.float32) * NORMALISATION["scale"]
    array = (array - np.asarray(NORMALISATION["mean"], np.float32)) / np.asarray(NORMALISATION["std"], np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def frozen_features(model: MultiTaskClassifier, images: np.ndarray, block: int, batch_size: int = 64) -> torch.Tensor:
    """Run the frozen blocks once over (N, S, S, 3) crops; returns float16 feature maps.

    The frozen blocks and their batch norms never change, so their output is
    computed once and every epoch trains only the later blocks and the heads.
    """
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            outputs.append(model.trunk.forward_through(to_tensor(images[start : start + batch_size]), block).half())
    return torch.cat(outputs) if outputs else torch.zeros(0)


def stored_views(model: MultiTaskClassifier, crop_set: CropSet, block: int, augment: bool, desc: str, folder: Path | None) -> torch.Tensor:
    """``cache_views``, kept in ``folder`` across runs. The frozen blocks keep
    their ImageNet weights in every run, so runs on the same crops that freeze
    the same blocks (the ablation variants, a rerun) compute the features once."""
    if folder is None:
        return cache_views(model, crop_set, block, augment, desc)
    identity = f"{crop_set.images.shape}|{'|'.join(crop_set.item_ids)}|block {block}|augment {augment}"
    path = folder / f"frozen-{desc}-{hashlib.sha1(identity.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        log.info("reading frozen %s features from %s", desc, path)
        return torch.load(path)
    features = cache_views(model, crop_set, block, augment, desc)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(features, partial)
    partial.replace(path)
    return features


def cache_views(model: MultiTaskClassifier, crop_set: CropSet, block: int, augment: bool, desc: str) -> torch.Tensor:
    """Frozen-block features of every view and its mirror image: (N, 2V, C, H, W).

    Without augmentation only the plain crop (view 0) and its mirror are kept.
    """
    views = crop_set.images.shape[1] if augment else 1
    per_view = []
    for view in tqdm(range(views), desc=f"{desc} frozen features", mininterval=10):
        plain = crop_set.images[:, view]
        per_view.append(frozen_features(model, plain, block))
        per_view.append(frozen_features(model, np.ascontiguousarray(plain[:, :, ::-1]), block))
    return torch.stack(per_view, dim=1)


def evaluate(model: MultiTaskClassifier, crop_set: CropSet, features: torch.Tensor, block: int, batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Accuracy per task on the plain crops, separately for catalog and street items."""
    model.eval()
    predictions = {task: [] for task in model.task_names}
    with torch.no_grad():
        for start in range(0, len(crop_set.item_ids), batch_size):
            _, logits, _ = model.forward_after(features[start : start + batch_size, 0].float(), block)
            for task in model.task_names:
                predictions[task].append(logits[task].argmax(dim=1).numpy())
    results: dict[str, dict[str, float]] = {}
    for source in ("catalog", "street"):
        mask = crop_set.source == source
        for task in model.task_names:
            if not len(predictions[task]):
                continue
            predicted = np.concatenate(predictions[task])
            known = mask & (crop_set.labels[task] != IGNORE)
            if known.sum():
                results.setdefault(source, {})[task] = float((predicted[known] == crop_set.labels[task][known]).mean())
                results[source][f"{task}_count"] = int(known.sum())
    return results


def fit(
    model: MultiTaskClassifier, train_set: CropSet, validation_set: CropSet, run: RunDirectory,
    args: argparse.Namespace, class_weights: dict[str, torch.Tensor] | None = None,
    tasks: list[str] | None = None,
) -> float:
    """Train with two cycles of a triangular cyclic learning rate; return seconds spent.

    Only the losses of ``tasks`` (default: every head) are on. The heads of the
    other tasks are frozen, so they keep their random initialisation.
    """
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    block = args.freeze_through
    model.trunk.freeze_through(block)
    trained_tasks = [task for task in model.task_names if tasks is None or task in tasks]
    for task in model.task_names:
        if task not in trained_tasks:
            model.branches[f"{task}_branch"].requires_grad_(False)
    started_all = time.time()
    feature_folder = getattr(args, "cache_dir", None)
    train_features = stored_views(model, train_set, block, not args.no_augment, "train", feature_folder)
    validation_features = stored_views(model, validation_set, block, False, "validation", feature_folder)
    log.info("cached frozen features in %.0f s: %s", time.time() - started_all, tuple(train_features.shape))

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train_set.item_ids) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=args.lr / 20, max_lr=args.lr, step_size_up=max(1, total_steps // 4),
        mode="triangular", cycle_momentum=False,
    )
    losses = {task: nn.CrossEntropyLoss(ignore_index=IGNORE, weight=(class_weights or {}).get(task)) for task in trained_tasks}

    start_epoch, seconds = 1, time.time() - started_all
    state = run.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, seconds = state["epoch"] + 1, state.get("seconds", 0.0) + seconds

    step = 0
    view_count = train_features.shape[1]
    for epoch in range(start_epoch, args.epochs + 1):
        model.train()
        freeze_batch_norm(model.trunk)
        started = time.time()
        order = rng.permutation(len(train_set.item_ids))
        totals = {task: 0.0 for task in trained_tasks}
        progress = tqdm(range(steps_per_epoch), desc=f"{run.path.name} epoch {epoch}/{args.epochs}", mininterval=10)
        for batch_index in progress:
            indices = np.sort(order[batch_index * args.batch_size : (batch_index + 1) * args.batch_size])
            views = rng.integers(0, view_count, size=len(indices))
            batch = train_features[torch.from_numpy(indices), torch.from_numpy(views)].float()
            _, logits, _ = model.forward_after(batch, block)
            loss = torch.zeros(())
            for task in trained_tasks:
                target = torch.from_numpy(train_set.labels[task][indices])
                if (target != IGNORE).any():
                    task_loss = losses[task](logits[task], target)
                    loss = loss + TASK_WEIGHTS[task] * task_loss
                    totals[task] += task_loss.item()
            check_finite(loss.detach(), step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            progress.set_postfix(loss=f"{loss.item():.3f}")
        seconds += time.time() - started

        record = {"epoch": epoch, "lr": scheduler.get_last_lr()[0], "train_seconds": time.time() - started}
        record.update({f"train_loss_{task}": value / steps_per_epoch for task, value in totals.items()})
        for source, metrics in evaluate(model, validation_set, validation_features, block).items():
            record.update({f"val_{source}_{k}": v for k, v in metrics.items() if not k.endswith("_count")})
        run.log_epoch(record)
        run.save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "seconds": seconds, "args": vars(args),
        })
    run.plot_curves(f"{run.path.name} training")
    return seconds


def category_crop_sets(category: str, args: argparse.Namespace) -> tuple[CropSet, CropSet, CropSet]:
    """Build or load the (train, validation, held-out) crop sets of a category."""
    suffix = f"{category}-{args.size}-{args.views}" + (f"-limit{args.limit}" if args.limit else "")
    paths = [args.cache_dir / f"{suffix}-{part}.npz" for part in ("train", "validation", "heldout")]
    if not args.rebuild and all(p.exists() for p in paths):
        return tuple(load_crop_set(p) for p in paths)  # type: ignore[return-value]

    from training.augment import BackgroundPool

    root = datasets.datasets_dir()
    rows = [r for r in datasets.read_catalog(root) if r.high_level == category]
    if args.limit:
        rows = rows[: args.limit]
    train_rows, validation_rows, heldout_rows = split_rows(rows, args.seed)
    boxes = load_catalog_boxes(args.catalog_boxes)
    street = street_photos_by_part(root, args.seed, limit=args.limit)
    pool = BackgroundPool(args.size, count=60 if args.limit else 400, max_photos=20 if args.limit else 200)
    sets = (
        build_category_set(category, train_rows, boxes, street["train"], args.size, args.views, pool),
        build_category_set(category, validation_rows, boxes, street["validation"], args.size, 1, pool),
        build_category_set(category, heldout_rows, boxes, street["heldout"], args.size, 1, pool),
    )
    for crop_set, path in zip(sets, paths):
        save_crop_set(crop_set, path)
    return sets


def street_photos_by_part(root: Path, seed: int, limit: int = 0) -> dict[str, list[datasets.StreetPhoto]]:
    """Street photos split into train, validation (a tenth of the rest) and held-out."""
    parts: dict[str, list[datasets.StreetPhoto]] = {"train": [], "validation": [], "heldout": []}
    for dataset, reader in ((datasets.CCP, datasets.read_ccp), (datasets.COLORFUL, datasets.read_colorful)):
        photos = cached_street_photos(root, dataset, reader) if not limit else reader(root, _first_ids(root, dataset, limit))
        heldout = datasets.heldout_ids(dataset)
        rest = [p for p in photos if p.photo_id not in heldout]
        random.Random(seed).shuffle(rest)
        cut = len(rest) // 10
        parts["validation"].extend(rest[:cut])
        parts["train"].extend(rest[cut:])
        parts["heldout"].extend(p for p in photos if p.photo_id in heldout)
    return parts


def cached_street_photos(root: Path, dataset: str, reader) -> list[datasets.StreetPhoto]:
    """Read a street set once and keep it in a pickle: deriving the boxes of
    854 masks takes most of a minute, and every category needs them."""
    import pickle

    cache = CACHE.parent / f"street-photos-{dataset}.pkl"
    if cache.exists():
        with open(cache, "rb") as handle:
            cached = pickle.load(handle)
        if cached["root"] == str(root):
            return cached["photos"]
    photos = reader(root)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache, "wb") as handle:
        pickle.dump({"root": str(root), "photos": photos}, handle)
    return photos


def _first_ids(root: Path, dataset: str, count: int) -> list[str]:
    if dataset == datasets.CCP:
        return sorted(p.stem for p in (root / dataset / "annotations" / "pixel-level").glob("*.mat"))[:count]
    return sorted(p.stem for p in (root / dataset / "Annotations").glob("*.xml"))[:count]


def classifier_summary(category: str, args: argparse.Namespace, untrained: list[str]) -> str:
    """Return the one-sentence description of the network for the model card."""
    if args.freeze_trunk:
        trunk = "frozen at its ImageNet weights"
    else:
        trunk = f"fine-tuned from block {args.freeze_through + 1}"
    heads = "five task heads" + (f" ({', '.join(untrained)} untrained)" if untrained else "")
    return (f"Multi-task classifier and embedder of {category} crops: EfficientNet-Lite0 (ImageNet) "
            f"blocks 0-{args.last_block}, {trunk}, {heads}.")


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser; ``training.ablation`` reads the resolved defaults from it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", required=True, choices=taxonomy.CLASSIFIER_CATEGORIES, help="high-level class to train")
    parser.add_argument("--catalog-boxes", type=Path, default=Path("runs/catalog_boxes.json"), help="product boxes from training.catalog_boxes")
    parser.add_argument("--run-dir", type=Path, default=None, help="checkpoint and log folder (default runs/classifier-CATEGORY)")
    parser.add_argument("--out", type=Path, default=None, help="model folder to export into")
    add_training_arguments(parser, epochs=8, size=160, freeze=10)
    parser.add_argument("--last-block", type=int, default=STRIDE_32_END,
                        help=f"last Lite0 block kept (default {STRIDE_32_END}); 14 drops the final block, for small categories")
    parser.add_argument("--tasks", nargs="+", choices=CLASSIFIER_TASKS, default=list(CLASSIFIER_TASKS),
                        help="tasks whose loss is on (default: all); every head is still exported, the others untrained")
    parser.add_argument("--freeze-trunk", action="store_true",
                        help="freeze the stem and every kept block, overriding --freeze-through: only the heads train "
                             "and the embedding stays the pretrained ImageNet feature")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    category = args.category
    train_set, validation_set, _ = category_crop_sets(category, args)
    log.info("%s: %d training crops (%d street), %d validation crops", category, len(train_set.item_ids),
             int((train_set.source == "street").sum()), len(validation_set.item_ids))
    tasks = {"type": len(taxonomy.FINE_CLASSES[category]), **{name: len(v) for name, v in taxonomy.ATTRIBUTES.items()}}
    if args.last_block > STRIDE_32_END or (not args.freeze_trunk and args.freeze_through >= args.last_block):
        parser.error(f"--last-block must lie after --freeze-through ({args.freeze_through}) and be at most {STRIDE_32_END}")
    if args.freeze_trunk:
        # Caching the last block's map leaves no trunk block to train.
        args.freeze_through = args.last_block
    trained_tasks = [task for task in tasks if task in args.tasks]
    model = MultiTaskClassifier(tasks, last_block=args.last_block)
    run = RunDirectory(args.run_dir or Path(f"runs/classifier-{category}"))
    seconds = fit(model, train_set, validation_set, run, args, tasks=trained_tasks)

    if args.out:
        model.eval()
        last = run.read_log()[-1]
        vocabularies = {"type": list(taxonomy.FINE_CLASSES[category]), **{k: list(v) for k, v in taxonomy.ATTRIBUTES.items()}}
        untrained = [task for task in vocabularies if task not in trained_tasks]
        # Accuracies of untrained heads are chance figures, so the card leaves them out.
        validation = {
            k: v for k, v in last.items()
            if k.startswith("val_") and k.removeprefix("val_").split("_", 1)[1] in trained_tasks
        }
        card = {
            "kind": "classifier",
            "category": category,
            "summary": classifier_summary(category, args, untrained),
            "tasks": vocabularies,
            "loss_weights": {task: TASK_WEIGHTS[task] for task in trained_tasks},
            "training": {
                "data": f"{len(train_set.item_ids)} crops: catalog products of the class outside the held-out split "
                        f"({args.views - 1} background-augmented copies each{' (disabled)' if args.no_augment else ''}) "
                        "and street crops outside the held-out split",
                "epochs": args.epochs, "seconds": seconds, "schedule": "two cycles of a triangular cyclic learning rate",
                "validation": validation,
            },
        }
        if untrained:
            card["untrained_heads"] = {
                "tasks": untrained,
                "note": "exported so the ONNX outputs match the full model's, but never trained: "
                        "their probabilities and task features carry no information",
            }
        if args.freeze_trunk:
            card["trunk_frozen"] = True
        export.export_classifier(ClassifierForExport(model).eval(), args.out, f"classifier-{category}", card, args.size)
        store_center(args.out, train_set.images[train_set.source == "catalog", 0])


if __name__ == "__main__":
    main()
