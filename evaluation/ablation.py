"""Evaluate the ablation variants and merge their figures into the quality report.

    python -m evaluation.ablation --datasets ../shared/datasets --split heldout --variants var/ablation

``training.ablation`` writes one classifier per variant and category under
``VARIANTS/<variant>/classifiers/<category>/``. For each variant this module
re-embeds the catalog products of those categories with the variant's
classifier (cut with the boxes the indexing job stored, so every variant embeds
the same crops), writes the variant's own index, and searches the same street
photos through the gateway's search code, as ``make eval`` does. Only queries
of the ablated categories count.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any


from evaluation import retrieval
from evaluation.catalog_index import ensure_catalog_index, reembed_catalog_index
from evaluation.data import SPLITS, DatasetLayoutError, load_evaluation_data
from evaluation.pipeline import Pipeline
from evaluation.report import write_report
from shared.datasets import datasets_dir
from shared.settings import repo_path

log = logging.getLogger("evaluation.ablation")

VARIANTS = ("V0", "V1", "V2", "V3", "V3-noaug")
# Pairs set beside the source paper's rater preferences (V2 over V1 75/25, V3
# over V2 67/33), plus what fine-tuning and background augmentation bring.
PREFERENCE_PAIRS = (("V2", "V1"), ("V3", "V2"), ("V1", "V0"), ("V3", "V3-noaug"))


def link_shared_models(variant_dir: Path, models: Path) -> None:
    """Give a variant folder the production detector and wearer, so it is a
    complete models folder."""
    for name in ("detector", "wearer"):
        link = variant_dir / name
        if not link.exists():
            os.symlink((models / name).resolve(), link, target_is_directory=True)


def evaluate_variant(variant_dir: Path, index_dir: Path, photos, categories: list[str]) -> list[retrieval.PhotoSearch]:
    pipeline = Pipeline(variant_dir, index_dir)
    searches = retrieval.search_photos(pipeline, photos, desc=f"retrieval {variant_dir.name}")
    for search in searches:
        search.ground_truth = [o for o in search.ground_truth if o.query.high_level in categories]
        search.detected = [o for o in search.detected if o.query.high_level in categories]
    return searches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=None, help="dataset root; default $DATASETS_DIR or ../shared/datasets")
    parser.add_argument("--split", choices=SPLITS, default="heldout", help="photos to evaluate (default heldout)")
    parser.add_argument("--variants", type=Path, default=repo_path("var/ablation"), help="folder training.ablation wrote")
    parser.add_argument("--models", type=Path, default=repo_path("models"), help="production models (detector, wearer)")
    parser.add_argument("--out", type=Path, default=repo_path("reports"), help="folder of quality.json to merge into")
    parser.add_argument("--cache-dir", type=Path, default=repo_path("var/eval"), help="where catalog indices are cached")
    parser.add_argument("--limit", type=int, default=None, help="at most N photos per street set (smoke runs)")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    root = (args.datasets or datasets_dir()).resolve()

    variants = [name for name in VARIANTS if (args.variants / name / "classifiers").is_dir()]
    if not variants:
        log.error("no variant models under %s; run `python -m training.ablation` first", args.variants)
        return 2
    categories = sorted(p.name for p in (args.variants / variants[0] / "classifiers").iterdir() if (p / "card.json").exists())
    try:
        data = load_evaluation_data(root, args.split, args.limit)
    except (DatasetLayoutError, ValueError) as error:
        log.error("%s", error)
        return 2
    production_index = ensure_catalog_index(root, args.models, args.cache_dir)
    log.info("ablation of %s on %s over %s", ", ".join(variants), ", ".join(categories), production_index)

    outcomes: dict[str, list[retrieval.QueryOutcome]] = {}
    section: dict[str, Any] = {
        "description": (
            f"Variants trained by `training.ablation` on {', '.join(categories)} with one schedule; each searches its own "
            "index of the same catalog crops. V0: ImageNet features, only a type head trained for routing; V1: type loss "
            "only; V2: type and colour; V3: type, colour, usage, pattern and season; V3-noaug: V3 without background "
            "augmentation. Queries: items of those classes only."
        ),
        "categories": categories,
    }
    for variant in variants:
        variant_dir = args.variants / variant
        link_shared_models(variant_dir, args.models)
        index_dir = reembed_catalog_index(production_index, variant_dir, categories, args.variants / "indices" / f"{production_index.name}-{variant}")
        searches = evaluate_variant(variant_dir, index_dir, data.ccp, categories)
        detected = retrieval.summarise([o for s in searches for o in s.detected])
        ground_truth = retrieval.summarise([o for s in searches for o in s.ground_truth])
        outcomes[variant] = [o for s in searches for o in s.ground_truth]
        section[variant] = {
            "type_precision_at_10": detected.get("type_precision_at_10"),
            "colour_agreement_at_10": detected.get("colour_agreement_at_10"),
            "queries": detected.get("queries", 0),
            "detected": detected,
            "ground_truth": ground_truth,
        }
        log.info("%s: detected type P@10 %s, colour@10 %s", variant, section[variant]["type_precision_at_10"],
                 section[variant]["colour_agreement_at_10"])

    section["preference"] = {
        f"{a}_vs_{b}": retrieval.agreement_preference(outcomes[a], outcomes[b])
        for a, b in PREFERENCE_PAIRS if a in outcomes and b in outcomes
    }
    training_summary = args.variants / "ablation_training.json"
    if training_summary.exists():
        section["training"] = json.loads(training_summary.read_text())

    report_path = args.out / "quality.json"
    if not report_path.exists():
        log.error("%s not found; run `make eval` first, then the ablation merges into its report", report_path)
        return 2
    report = json.loads(report_path.read_text())
    if report.get("dataset_root") != str(root) or report.get("split") != args.split:
        log.error("%s was written for %s split %s, not %s split %s; run `make eval` on the same data first",
                  report_path, report.get("dataset_root"), report.get("split"), root, args.split)
        return 2
    report["ablation"] = section
    write_report(report, args.out)
    log.info("merged the ablation into %s", report_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
