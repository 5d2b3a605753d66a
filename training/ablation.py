"""Train the embedding ablation variants of the category classifiers and export each one.

    python -m training.ablation --datasets /work/shared/datasets --categories top bottom --epochs 4 --out var/ablation

Variants, all trained by ``training.train_classifier`` with the same epochs,
learning rate, crops and seed:

    V0        ImageNet features without fine-tuning: every trunk block frozen,
              only the type head trained (for fine-class routing)
    V1        type loss only
    V2        type and colour losses
    V3        type, colour, usage, pattern and season losses (the production recipe)
    V3-noaug  V3 without the background-augmented catalog copies

Each model goes to ``OUT/<variant>/classifiers/<category>/`` (card and ONNX,
loadable by ``shared.inference.Classifier``), its checkpoint and epoch log to
``OUT/<variant>/runs/<category>/``, and a summary of seconds and validation
accuracies to ``OUT/ablation_training.json``. Every variant exports all five
heads, so the ONNX outputs match the production models. A model folder whose
card records the same settings is skipped, so a rerun trains only what is
missing or stale.

Crops are cached under ``CACHE_DIR/<key>/``, where the key hashes the resolved
dataset root, the catalog boxes file and the seed, so crops of two dataset roots
never mix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared import datasets, taxonomy
from training import train_classifier
from training.export import write_card

log = logging.getLogger("training.ablation")


@dataclass(frozen=True)
class Variant:
    """One ablation variant: which losses are on, and whether the trunk or augmentation is off."""

    name: str
    description: str
    tasks: tuple[str, ...]
    freeze_trunk: bool = False
    augment: bool = True


ALL_TASKS = train_classifier.CLASSIFIER_TASKS
VARIANTS = {
    variant.name: variant
    for variant in (
        Variant(
            "V0", "ImageNet features without fine-tuning: the trunk keeps its pretrained weights, only the type head is trained",
            ("type",), freeze_trunk=True,
        ),
        Variant("V1", "product type loss only", ("type",)),
        Variant("V2", "type and colour losses", ("type", "colour")),
        Variant("V3", "type, colour and every other attribute loss (the production recipe)", ALL_TASKS),
        Variant("V3-noaug", "V3 without background-augmented catalog copies", ALL_TASKS, augment=False),
    )
}
# Categories that `make models` trains without Lite0's last block, because they have few products.
LAST_BLOCK = {"tie": 14, "scarf": 14}
# Namespace entries that name files or folders of one run rather than the training itself.
LOCAL_ARGUMENTS = ("run_dir", "out", "cache_dir", "catalog_boxes", "rebuild")
SUMMARY_NAME = "ablation_training.json"


def file_sha256(path: Path) -> str | None:
    """Return the SHA-256 of a file's bytes, or None when it does not exist."""
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def crop_cache_dir(cache_root: Path, datasets_root: Path, boxes_sha256: str | None, seed: int) -> Path:
    """Return the crop cache folder of one dataset root, catalog boxes file and seed.

    ``train_classifier`` names cached crops by category, size, views and limit
    only, so every other input that changes the crops (the dataset root, the
    product boxes, the split seed) selects its own folder.
    """
    source = {"datasets_root": str(datasets_root), "catalog_boxes_sha256": boxes_sha256, "seed": seed}
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    return folder


def training_argv(variant: Variant, category: str, args: argparse.Namespace, cache_dir: Path, run_dir: Path, out_dir: Path) -> list[str]:
    """Build the ``train_classifier`` command line of one variant and category."""
    argv = [
        "--category", category,
        "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size),
        "--lr", str(args.lr),
        "--views", str(args.views),
        "--seed", str(args.seed),
        "--limit", str(args.limit),
        "--catalog-boxes", str(args.catalog_boxes),
        "--cache-dir", str(cache_dir),
        "--run-dir", str(run_dir),
        "--out", str(out_dir),
        "--tasks", *variant.tasks,
    ]
    if category in LAST_BLOCK:
        argv += ["--last-block", str(LAST_BLOCK[category])]
    if variant.freeze_trunk:
        argv.append("--freeze-trunk")
    if not variant.augment:
        argv.append("--no-augment")
    return argv


def training_settings(argv: list[str], datasets_root: Path, boxes_sha256: str | None) -> dict[str, Any]:
    """Return every input that decides the trained model, as JSON values.

    The arguments come from ``train_classifier``'s own parser, so its defaults
    (learning rate, input size, frozen blocks) are part of the record, and a
    change of a default marks the earlier models stale.
    """
    namespace = vars(train_classifier.build_parser().parse_args(argv))
    settings = {key: value for key, value in namespace.items() if key not in LOCAL_ARGUMENTS}
    settings["datasets_root"] = str(datasets_root)
    settings["catalog_boxes_sha256"] = boxes_sha256
    return json.loads(json.dumps(settings, default=str))


def finished_card(model_dir: Path, variant: Variant, settings: dict[str, Any]) -> dict[str, Any] | None:
    """Return the card of a finished export with these settings, or None."""
    card_path = model_dir / "card.json"
    if not card_path.exists():
        return None
    card = json.loads(card_path.read_text())
    record = card.get("ablation", {})
    if record.get("variant") != variant.name or record.get("settings") != settings:
        return None
    if "embedding_center" not in card or not (model_dir / card["file"]).exists():
        return None
    return card


def prepare_run_dir(run_dir: Path, settings: dict[str, Any]) -> None:
    """Keep a run folder's checkpoint only when it was trained with the same settings."""
    settings_path = run_dir / "ablation_settings.json"
    if run_dir.exists():
        previous = json.loads(settings_path.read_text()) if settings_path.exists() else None
        if previous != settings:
            log.info("removing %s: its checkpoint was trained with other settings", run_dir)
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")


def record_variant(model_dir: Path, variant: Variant, settings: dict[str, Any], catalog_boxes: Path) -> dict[str, Any]:
    """Add the variant and its settings to the exported card; return the card."""
    card = json.loads((model_dir / "card.json").read_text())
    card["ablation"] = {
        "variant": variant.name,
        "description": variant.description,
        "trained_tasks": list(variant.tasks),
        "loss_weights": {task: train_classifier.TASK_WEIGHTS[task] for task in variant.tasks},
        "trunk_frozen": variant.freeze_trunk,
        "background_augmentation": variant.augment,
        "catalog_boxes": str(catalog_boxes),
        "settings": settings,
    }
    losses = ", ".join(f"{weight} * {task}" for task, weight in card["ablation"]["loss_weights"].items())
    write_card(model_dir, card, f"Ablation variant {variant.name}: {variant.description}. Loss: {losses}.")
    return card


def summary_entry(card: dict[str, Any], model_dir: Path, status: str, wall_seconds: float | None) -> dict[str, Any]:
    return {
        "status": status,
        "model": str(model_dir),
        "version": card["version"],
        "trained_tasks": card["ablation"]["trained_tasks"],
        "training_seconds": card["training"]["seconds"],
        "wall_seconds": wall_seconds,
        "validation": card["training"]["validation"],
    }


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"results": {}}


def update_summary(path: Path, command: str, variant: str, category: str, entry: dict[str, Any]) -> None:
    """Store one model's entry in the summary file.

    The file is read again just before each write, so a second run writing
    to the same folder loses no finished entries unless both write at once.
    """
    summary = read_summary(path)
    summary["command"] = command
    summary.setdefault("results", {}).setdefault(variant, {})[category] = entry
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(summary, indent=2) + "\n")
    temporary.replace(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=None,
                        help="dataset root; sets DATASETS_DIR for the readers (default: $DATASETS_DIR or ../shared/datasets)")
    parser.add_argument("--categories", nargs="+", choices=taxonomy.CLASSIFIER_CATEGORIES, default=["top", "bottom"],
                        help="high-level classes to train (default: top bottom)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="variants to train (default: all)")
    parser.add_argument("--out", type=Path, default=Path("var/ablation"), help="output folder (default var/ablation)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per model (default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per step (default 64)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak of the cyclic learning rate (default 0.002)")
    parser.add_argument("--views", type=int, default=3, help="views per catalog item: the crop plus N-1 augmented copies (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the sampling and the head initialisation (default 0)")
    parser.add_argument("--limit", type=int, default=0, help="use only this many catalog rows per category (smoke runs)")
    parser.add_argument("--catalog-boxes", type=Path, default=Path("runs/catalog_boxes.json"),
                        help="product boxes from training.catalog_boxes (default runs/catalog_boxes.json)")
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/ablation"),
                        help="crop cache, with one sub-folder per dataset root, catalog boxes file and seed (default var/cache/ablation)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    datasets_root = (args.datasets or datasets.datasets_dir()).resolve()
    if not datasets_root.is_dir():
        parser.error(f"dataset folder {datasets_root} not found; pass the folder that contains {datasets.CATALOG}")
    os.environ["DATASETS_DIR"] = str(datasets_root)
    boxes_sha256 = file_sha256(args.catalog_boxes)
    if boxes_sha256 is None:
        log.warning("catalog boxes %s not found: crops fall back to each photo's non-white pixels; "
                    "run training.catalog_boxes first to match the production crops", args.catalog_boxes)
    cache_dir = crop_cache_dir(args.cache_dir, datasets_root, boxes_sha256, args.seed)
    log.info("datasets %s, crop cache %s", datasets_root, cache_dir)

    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / SUMMARY_NAME
    command = " ".join(["python -m training.ablation", *(argv if argv is not None else sys.argv[1:])])

    jobs = [(category, VARIANTS[name]) for category in args.categories for name in args.variants]
    started_all = time.time()
    for number, (category, variant) in enumerate(jobs, start=1):
        label = f"{variant.name}/{category} ({number} of {len(jobs)})"
        model_dir = args.out / variant.name / "classifiers" / category
        run_dir = args.out / variant.name / "runs" / category
        train_argv = training_argv(variant, category, args, cache_dir, run_dir, model_dir)
        settings = training_settings(train_argv, datasets_root, boxes_sha256)

        card = finished_card(model_dir, variant, settings)
        if card is not None:
            log.info("%s: skipped, %s already contains a model with these settings", label, model_dir)
            previous = read_summary(summary_path).get("results", {}).get(variant.name, {}).get(category, {})
            entry = summary_entry(card, model_dir, "skipped", previous.get("wall_seconds"))
        else:
            log.info("%s: training (%s)", label, variant.description)
            (model_dir / "card.json").unlink(missing_ok=True)
            prepare_run_dir(run_dir, settings)
            # Seeding here gives every variant the same initial heads.
            torch.manual_seed(args.seed)
            started = time.time()
            train_classifier.main(train_argv)
            card = record_variant(model_dir, variant, settings, args.catalog_boxes)
            entry = summary_entry(card, model_dir, "trained", time.time() - started)
            log.info("%s: done in %.0f s (%.0f s training); validation %s", label, entry["wall_seconds"],
                     entry["training_seconds"], {k: round(v, 3) for k, v in entry["validation"].items()})

        update_summary(summary_path, command, variant.name, category, entry)
        log.info("%d of %d models ready, %.0f s elapsed", number, len(jobs), time.time() - started_all)
    log.info("wrote %s", summary_path)


if __name__ == "__main__":
    main()
