"""Measure search speed and scaling on this machine and write the benchmark report.

    python -m benchmarks.run            # make bench: reports/bench.json and reports/bench.md
    python -m benchmarks.run --small    # a quick run of every section (the tests use it)

Sections, each measured side by side in one run:
- fleet: POST /search latency and throughput at several concurrencies through a
  private fleet on loopback ports, the same searches in one process, an open
  loop at 70% of peak throughput, time per stage from the services' metrics,
  and the fleet again with batching across classifier requests turned on;
- classifier: one batch per photo against one request per crop, and two
  single-threaded replicas against one process with two threads;
- hnsw: synthetic 512-D indices up to a million items (``benchmarks.hnsw_scaling``);
- int8: static QDQ quantization of every committed float model
  (``training.quantize``), its speed-up, and the change in retrieval type
  precision@10 on the held-out street photos, overall and per class: the
  figures behind the Makefile's choice of the models served as int8.

The fleet and classifier sections measure the models the fleet serves
(``--serving-models``, written by ``make serving-models``); the int8 section
starts from the committed float models (``--models``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.classifier_bench import run_classifier_bench
from benchmarks.fleet_bench import closed_loop, run_fleet_bench
from benchmarks.report import write_bench_report
from evaluation.catalog_index import ensure_catalog_index
from evaluation.pipeline import Pipeline
from shared import datasets
from shared.processes import start_search_fleet
from shared.settings import repo_path

log = logging.getLogger("benchmarks")

SECTIONS = ("fleet", "classifier", "hnsw", "int8")


def heldout_photos(root: Path, count: int) -> list[datasets.StreetPhoto]:
    """Return up to ``count`` held-out clothing-co-parsing photos present under ``root``."""
    folder = root / datasets.CCP / "photos"
    ids = [photo_id for photo_id in sorted(datasets.heldout_ids(datasets.CCP)) if (folder / f"{photo_id}.jpg").exists()]
    return datasets.read_ccp(root, ids[:count])


def fleet_section(root: Path, models: Path, index_dir: Path, photos: list[datasets.StreetPhoto], small: bool) -> dict[str, Any]:
    paths = [photo.path for photo in photos]
    # One thread, as each service of the local fleet runs with; every search
    # detects its photo, as the fleet does.
    pipeline = Pipeline(models, index_dir, threads=1, cache_detections=False)
    options = dict(concurrencies=(1, 2) if small else (1, 2, 4, 8), requests_per_level=6 if small else 60,
                   open_loop_seconds=3 if small else 20)
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as log_dir:
        fleet = start_search_fleet(index_dir, models, Path(log_dir), extra_env={"GATEWAY_CACHE_TTL_SECONDS": "0"})
        try:
            urls = {name: service.url for name, service in fleet.services.items()}
            result.update(run_fleet_bench(urls["gateway"], urls, pipeline, paths, **options))
        finally:
            fleet.stop_all()

    # The same closed loop with each classifier batching the crops of requests that queue up.
    with tempfile.TemporaryDirectory(prefix="bench-fleet-batched-") as log_dir:
        fleet = start_search_fleet(index_dir, models, Path(log_dir), extra_env={
            "GATEWAY_CACHE_TTL_SECONDS": "0", "CLASSIFIER_MICRO_BATCHING": "true",
        })
        try:
            photos_bytes = [path.read_bytes() for path in paths]
            gateway = fleet.services["gateway"].url
            asyncio.run(closed_loop(gateway, photos_bytes, 2, min(8, len(photos_bytes))))
            top = options["concurrencies"][-1]
            result["with_micro_batching"] = asyncio.run(closed_loop(gateway, photos_bytes, top, options["requests_per_level"]))
        finally:
            fleet.stop_all()
    without_batching = next(level for level in result["closed_loop"] if level["concurrency"] == options["concurrencies"][-1])
    result["micro_batching_throughput_gain"] = (
        result["with_micro_batching"]["throughput_per_second"] / without_batching["throughput_per_second"]
    )
    return result


def int8_section(root: Path, models: Path, index_dir: Path, small: bool, work: Path) -> dict[str, Any]:
    from evaluation import retrieval
    from evaluation.catalog_index import reembed_catalog_index
    from evaluation.data import load_evaluation_data
    from training.quantize import DEFAULT_CALIBRATION_PHOTOS, measure_speed, quantize_models

    out = work / "models-int8"
    only = ["detector", "tie"] if small else None
    # A small run's dataset copy has no training photos to calibrate on, so it
    # calibrates on the full datasets ($DATASETS_DIR), as make serving-models does.
    calibration_root = None if small else root
    quantized = quantize_models(models, out, 8 if small else DEFAULT_CALIBRATION_PHOTOS, only=only, datasets_root=calibration_root)
    speed = measure_speed(models, out)
    result: dict[str, Any] = {"quantize": quantized, "speed": speed}

    categories = sorted({key.split("/")[0] for key in json.loads((index_dir / "routing.json").read_text())["keys"]})
    if small:
        return result
    int8_index = reembed_catalog_index(index_dir, out, categories, work / "index-int8")
    # Every held-out street photo of both sets: the per-class figures need the queries.
    data = load_evaluation_data(root, "heldout")
    street = data.ccp + data.colorful
    summaries = {}
    for name, (model_dir, index) in {"fp32": (models, index_dir), "int8": (out, int8_index)}.items():
        searches = retrieval.search_photos(Pipeline(model_dir, index), street, desc=f"retrieval {name}")
        summaries[name] = {
            "detected": retrieval.summarise([o for search in searches for o in search.detected]),
            "ground_truth": retrieval.summarise([o for search in searches for o in search.ground_truth]),
        }
    result["quality"] = int8_quality(summaries, len(street))
    result["type_precision_at_10_change_points"] = result["quality"]["detected"]["change_points"]
    return result


def precision_change(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """Type precision@10 of both searches of one set of queries, and the changes
    in type precision and colour agreement@10, in points (the colour change is
    None without colour-labelled queries)."""
    before, after = fp32.get("colour_agreement_at_10"), int8.get("colour_agreement_at_10")
    return {
        "queries": fp32["queries"],
        "fp32": fp32["type_precision_at_10"],
        "int8": int8["type_precision_at_10"],
        "change_points": (int8["type_precision_at_10"] - fp32["type_precision_at_10"]) * 100,
        "colour_change_points": None if before is None or after is None else (after - before) * 100,
    }


def int8_quality(summaries: dict[str, dict[str, dict]], photos: int) -> dict[str, Any]:
    """Type precision@10 of the fp32 and int8 searches, overall and per class,
    with detected boxes and with ground-truth boxes (which leave the detector's
    misses out)."""
    quality: dict[str, Any] = {
        "photos": photos,
        "note": "int8 detector, wearer model and classifiers; catalog re-embedded by the int8 classifiers",
    }
    for boxes in ("detected", "ground_truth"):
        fp32, int8 = summaries["fp32"][boxes], summaries["int8"][boxes]
        per_class = {}
        for high_level, figures in fp32["per_class"].items():
            int8_figures = int8["per_class"].get(high_level, {})
            if "type_precision_at_10" not in figures or "type_precision_at_10" not in int8_figures:
                continue
            per_class[high_level] = precision_change(figures, int8_figures)
        quality[boxes] = {**precision_change(fp32, int8), "per_class": per_class}
    return quality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=None, help="dataset root; default $DATASETS_DIR or ../shared/datasets")
    parser.add_argument("--models", type=Path, default=repo_path("models"), help="the committed float models, which the int8 section quantizes")
    parser.add_argument("--serving-models", type=Path, default=repo_path("var/models-serving"),
                        help="the models the fleet serves, measured by the fleet and classifier sections (make serving-models)")
    parser.add_argument("--out", type=Path, default=repo_path("reports"), help="folder for bench.json, bench.md and figures")
    parser.add_argument("--cache-dir", type=Path, default=repo_path("var/eval"), help="where catalog indices are cached")
    parser.add_argument("--work-dir", type=Path, default=repo_path("var/bench"), help="where quantized models and indices go")
    parser.add_argument("--photos", type=int, default=60, help="held-out street photos to search")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--hnsw-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="items per synthetic index")
    parser.add_argument("--hnsw-result", type=Path, default=None,
                        help="use this earlier `python -m benchmarks.hnsw_scaling` result instead of measuring again "
                             "(the million-item build takes about 20 minutes on 2 cores)")
    parser.add_argument("--small", action="store_true", help="a quick run of each section on tiny settings")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    root = (args.datasets or datasets.datasets_dir()).resolve()
    photos = heldout_photos(root, 5 if args.small else args.photos)
    started = time.monotonic()
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "small": args.small,
        "photos": len(photos),
    }
    args.work_dir.mkdir(parents=True, exist_ok=True)

    if ("fleet" in args.sections or "classifier" in args.sections) and not (args.serving_models / "detector").is_dir():
        parser.error(f"{args.serving_models} holds no models; run `make serving-models` or pass --serving-models models")
    report["serving_models"] = str(args.serving_models)
    if "fleet" in args.sections:
        serving_index = ensure_catalog_index(root, args.serving_models, args.cache_dir)
        report["fleet"] = fleet_section(root, args.serving_models, serving_index, photos, args.small)
    if "classifier" in args.sections:
        report["classifier"] = run_classifier_bench(
            args.serving_models, photos, groups_count=3 if args.small else 30, requests=12 if args.small else 200,
        )
    if "hnsw" in args.sections and args.hnsw_result:
        report["hnsw"] = json.loads(args.hnsw_result.read_text())
        report["hnsw"]["reused_from"] = str(args.hnsw_result)
        log.info("HNSW figures taken from %s", args.hnsw_result)
    elif "hnsw" in args.sections:
        from benchmarks.hnsw_scaling import run_hnsw_scaling

        sizes = (2000, 5000) if args.small else tuple(args.hnsw_sizes)
        report["hnsw"] = run_hnsw_scaling(sizes=sizes, queries=32 if args.small else 200,
                                          **({"ef_values": (10, 40), "min_timing_seconds": 0.2} if args.small else {}))
    if "int8" in args.sections:
        float_index = ensure_catalog_index(root, args.models, args.cache_dir)
        report["int8"] = int8_section(root, args.models, float_index, args.small, args.work_dir)

    report["seconds"] = round(time.monotonic() - started, 1)
    write_bench_report(report, args.out)
    log.info("wrote %s in %.0f s", args.out / "bench.json", report["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
