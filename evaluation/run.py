"""Measure search quality on a dataset root and write the quality report.

    python -m evaluation --datasets ../shared/datasets --split heldout   # make eval

Reads only files under the dataset root (laid out as clothing-co-parsing/,
colorful-fashion/ and fashion-product-images/). The catalog searched is that
root's fashion-product-images, indexed by the indexing job's code and cached
under ``var/eval``. Writes ``quality.json``, ``quality.md`` and figures into
``--out`` (default ``reports/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from evaluation import classification, detection, ranking, retrieval
from evaluation.catalog_index import ensure_catalog_index, model_versions
from evaluation.data import SPLITS, DatasetLayoutError, load_evaluation_data
from evaluation.fleet_check import compare_with_fleet
from evaluation.pipeline import Pipeline
from evaluation.report import write_report
from shared import taxonomy
from shared.datasets import datasets_dir
from shared.ensemble import EnsembleDetector
from shared.inference import Detector
from shared.settings import repo_path

log = logging.getLogger("evaluation")

TOP_FINE_CLASS_OPTIONS = (1, 2, 3)
# Detection scores from which an item is searched, for the detected-box figures.
MIN_ITEM_SCORE_OPTIONS = (0.3, 0.4, 0.5)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description="Measure detection, classification and retrieval quality.")
    parser.add_argument("--datasets", type=Path, default=None, help="dataset root; default $DATASETS_DIR or ../shared/datasets")
    parser.add_argument("--split", choices=SPLITS, default="heldout",
                        help="heldout: the committed held-out split; all: every photo under the root (default heldout)")
    parser.add_argument("--models", type=Path, default=repo_path("models"), help="models folder (detector/, wearer/, classifiers/)")
    parser.add_argument("--out", type=Path, default=repo_path("reports"), help="folder for quality.json, quality.md and figures")
    parser.add_argument("--cache-dir", type=Path, default=repo_path("var/eval"), help="where catalog indices are cached")
    parser.add_argument("--limit", type=int, default=None, help="at most N photos per street set and N catalog rows per class (smoke runs)")
    parser.add_argument("--gateway", default=None, help="compare with this running gateway instead of starting a private fleet")
    parser.add_argument("--no-fleet", action="store_true", help="skip the fleet comparison (fleet_equals_in_process is then null)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads in this process")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def complete_per_class(section: dict[str, Any], detector_classes: list[str]) -> dict[str, Any]:
    """Give every high-level class an entry, with a null AP and the reason
    where it cannot be measured."""
    for name in taxonomy.HIGH_LEVEL_CLASSES:
        if name not in section["per_class"]:
            reason = "no ground-truth instance in these photos" if name in detector_classes else "not a class the detector outputs"
            section["per_class"][name] = {"map50": None, "instances": 0, "note": reason}
    return section


def evaluate_detection(detector: Detector, data, figures: Path) -> dict[str, Any]:
    ensemble = EnsembleDetector(detector)
    sections: dict[str, Any] = {}
    started = time.monotonic()
    sections["detection"], predictions, truths = detection.evaluate_detector(detector, data.ccp)
    detection.plot_precision_recall(detector, predictions, truths, figures / "quality-detection-pr.png", "clothing-co-parsing, IoU 0.5")
    sections["detection_colorful"] = detection.evaluate_detector(detector, data.colorful)[0]
    log.info("detection: mAP@0.5 %.3f, colorful-fashion %.3f (%.0f s)",
             sections["detection"]["map50"], sections["detection_colorful"]["map50"], time.monotonic() - started)

    started = time.monotonic()
    sections["detection_ensemble"] = detection.evaluate_detector(ensemble, data.ccp)[0]
    sections["detection_ensemble"]["views"] = [view.name for view in ensemble.views]
    sections["detection_ensemble"]["fusion"] = ensemble.fusion
    sections["detection_ensemble_colorful"] = detection.evaluate_detector(ensemble, data.colorful)[0]
    log.info("ensemble: mAP@0.5 %.3f, colorful-fashion %.3f (%.0f s)",
             sections["detection_ensemble"]["map50"], sections["detection_ensemble_colorful"]["map50"], time.monotonic() - started)
    for section in sections.values():
        complete_per_class(section, detector.classes)
    return sections


def evaluate_retrieval(pipeline: Pipeline, data, args: argparse.Namespace, index_dir: Path) -> dict[str, Any]:
    started = time.monotonic()
    default_k = pipeline.settings.top_fine_classes
    by_k: dict[int, list[retrieval.PhotoSearch]] = {}
    for k in TOP_FINE_CLASS_OPTIONS:
        settings = pipeline.make_settings(top_fine_classes=k)
        by_k[k] = retrieval.search_photos(pipeline, data.ccp, settings, desc=f"retrieval, top {k} fine classes")
    searches = by_k[default_k]

    section: dict[str, Any] = {
        "ground_truth": retrieval.summarise([o for s in searches for o in s.ground_truth]),
        "detected": retrieval.summarise([o for s in searches for o in s.detected]),
        "settings": {"top_fine_classes": default_k, "fine_class_floor": pipeline.settings.fine_class_floor,
                     "min_item_score": pipeline.settings.min_item_score, "results": retrieval.RESULTS},
        "top_fine_classes": {
            str(k): {
                "ground_truth": retrieval.summarise([o for s in runs for o in s.ground_truth]),
                "detected": retrieval.summarise([o for s in runs for o in s.detected]),
            }
            for k, runs in by_k.items()
        },
    }
    section["min_item_score"] = {}
    for score in MIN_ITEM_SCORE_OPTIONS:
        if score == pipeline.settings.min_item_score:
            runs = searches
        else:
            settings = pipeline.make_settings(min_item_score=score)
            runs = retrieval.search_photos(pipeline, data.ccp, settings, ground_truth=False, desc=f"retrieval, items from score {score}")
        section["min_item_score"][f"{score:g}"] = retrieval.summarise([o for s in runs for o in s.detected])
        section["min_item_score"][f"{score:g}"]["items_per_photo"] = float(sum(len(s.plain_search_ids) for s in runs) / max(len(runs), 1))
    log.info("retrieval: ground truth type P@10 %.3f, detected %.3f (%.0f s)",
             section["ground_truth"].get("type_precision_at_10", 0), section["detected"].get("type_precision_at_10", 0),
             time.monotonic() - started)

    section["colour_reranking"] = ranking.colour_reranking(pipeline, data.ccp)
    hnsw = ranking.hnsw_recall(pipeline, data.ccp)
    section["hnsw_recall_at_10"] = hnsw["recall_at_10"]
    section["hnsw"] = hnsw

    if args.no_fleet:
        section["fleet_equals_in_process"] = None
    else:
        check = compare_with_fleet(data.ccp, searches, args.models, index_dir, args.gateway)
        section["fleet_equals_in_process"] = check["equal"]
        section["fleet_check"] = check
    return section


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # One line per HTTP request of the fleet comparison would drown the progress.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    root = (args.datasets or datasets_dir()).resolve()
    started = time.monotonic()
    log.info("evaluating %s on %s, split %s", args.models, root, args.split)

    try:
        data = load_evaluation_data(root, args.split, args.limit)
    except (DatasetLayoutError, ValueError) as error:
        log.error("%s", error)
        return 2
    if not data.ccp:
        log.error("no clothing-co-parsing photo of split %s under %s", args.split, root)
        return 2
    figures = args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)

    index_dir = ensure_catalog_index(root, args.models, args.cache_dir, threads=args.threads)
    report: dict[str, Any] = {
        "dataset_root": str(root),
        "split": args.split,
        "photos": {"clothing_co_parsing": len(data.ccp), "colorful_fashion": len(data.colorful), "catalog_rows": len(data.catalog)},
        "models": model_versions(args.models),
        "index": {"folder": str(index_dir), **json.loads((index_dir / "summary.json").read_text())},
    }
    detector = Detector(args.models / "detector", args.threads)
    report.update(evaluate_detection(detector, data, figures))

    report["classification"] = classification.evaluate_classifiers(args.models, detector, data.catalog, data.ccp + data.colorful)
    report["wearer"] = classification.evaluate_wearer(args.models, data.catalog)

    pipeline = Pipeline(args.models, index_dir, args.threads)
    report["retrieval"] = evaluate_retrieval(pipeline, data, args, index_dir)

    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(report, args.out)
    log.info("wrote %s and %s in %.0f s", args.out / "quality.json", args.out / "quality.md", report["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
