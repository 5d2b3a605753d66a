"""The catalog indexing job: manifest in, one hnswlib index per (fine class,
gender) plus ``routing.json`` out.

    python -m services.indexer --manifest var/catalog/manifest.jsonl --out var/index

For each product, the detector finds the product's own item in its photo: the
most confident box of the row's high-level class, else the whole photo. The
category's classifier embeds the crop. Near-duplicates are then removed per
index key, and the indices are written to a staging folder that replaces
``--out`` only once complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import hnswlib
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from services.indexer.indexfiles import IndexGroup, check_replaceable, publish, staging_folder, write_index_folder
from services.indexer.manifest import ManifestRow, read_manifest
from shared.boxes import expand_box
from shared.imagecodec import InvalidImage, decode_image
from shared.ensemble import EnsembleDetector
from shared.imaging import catalog_product_box
from shared.inference import Classifier, Detector, ModelLoadError
from shared.routing import INDEX_SPACE
from shared.settings import repo_path

log = logging.getLogger("services.indexer")

BOX_MARGIN = 0.08
# Catalog photos are trusted files, but a broken one should be skipped, not
# decoded without limit.
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 60_000_000
MIN_IMAGE_SIDE = 8
# Exact duplicate search up to this many vectors per key; an HNSW graph above.
EXACT_DEDUP_LIMIT = 4000
DEDUP_NEIGHBOURS = 16


@dataclass
class Embedded:
    """One product after detection and classification."""

    row: ManifestRow
    box: list[float]
    box_source: str
    embedding: np.ndarray
    predicted: dict[str, str]


@dataclass
class JobReport:
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    # Per box source ("detected", "foreground", "whole photo"), products per class.
    box_sources: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    duplicates_removed: dict[str, int] = field(default_factory=dict)


# --- detection and embedding ------------------------------------------------------


def choose_box(detections, high_level: str, floor: float, pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """Pick the product's box: the best confident detection of its class, else
    the box of the photo's non-white pixels, else the whole photo.

    Catalog photos show one product, so the best box of its class is the
    product when the detector is sure of it. A product shown alone on white
    (shoes, a watch) is often missed or cut into parts by the detector, and
    there its non-white pixels are the product.
    """
    matching = [d for d in detections if d.label == high_level and d.score >= floor]
    best = max(matching, key=lambda d: d.score) if matching else None
    return catalog_product_box(pixels, best.box if best else None, best.score if best else None)


def load_image(path: Path) -> Image.Image:
    return decode_image(path.read_bytes(), MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE)


def embed_batch(
    rows: list[ManifestRow],
    detector: Detector | EnsembleDetector,
    classifier: Classifier,
    floor: float,
    report: JobReport,
) -> list[Embedded]:
    """Detect, crop and embed one batch of rows of the same high-level class."""
    images, kept = [], []
    for row in rows:
        try:
            images.append(load_image(row.image_path))
            kept.append(row)
        except (InvalidImage, OSError) as error:
            report.skipped["image unreadable"] += 1
            log.warning("row %d (id %s) skipped: image %s unreadable: %s", row.row_number, row.product_id, row.image_path, error)
    if not kept:
        return []
    detections = detector.detect(images, score_threshold=floor)
    crops, boxes = [], []
    for row, image, found in zip(kept, images, detections):
        box, source = choose_box(found, row.high_level, floor, np.asarray(image))
        report.box_sources[source][row.high_level] += 1
        box = expand_box(box, BOX_MARGIN, image.width, image.height)
        crops.append(classifier.crop(image, box))
        boxes.append((box, source))
    output = classifier.run(np.stack(crops))
    results = []
    for i, row in enumerate(kept):
        predicted = {}
        for task, vocabulary in classifier.tasks.items():
            predicted[task] = vocabulary[int(np.argmax(output.probabilities[task][i]))]
        box, source = boxes[i]
        results.append(Embedded(row, [round(float(v), 1) for v in box], source, output.embeddings[i].astype(np.float32), predicted))
    return results


# --- near-duplicate removal -----------------------------------------------------


def id_order(product_id: str):
    """Sort key giving numeric ids in numeric order, others after them alphabetically."""
    return (0, int(product_id), "") if product_id.isdigit() else (1, 0, product_id)


def duplicate_edges(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return pairs (i, j) of rows whose cosine distance is below ``threshold``."""
    count = len(vectors)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sources, targets = [], []
    if count <= EXACT_DEDUP_LIMIT:
        for start in range(0, count, 1024):
            distances = 1.0 - unit[start : start + 1024] @ unit.T
            i, j = np.nonzero(distances < threshold)
            sources.append(i + start)
            targets.append(j)
    else:
        # A k-NN graph finds the close pairs without the quadratic cost; a
        # cluster bigger than k stays connected through its members' links.
        index = hnswlib.Index(space=INDEX_SPACE, dim=unit.shape[1])
        index.init_index(max_elements=count, M=16, ef_construction=100)
        index.add_items(unit, np.arange(count))
        neighbours = min(DEDUP_NEIGHBOURS, count)
        index.set_ef(max(64, neighbours))
        labels, distances = index.knn_query(unit, k=neighbours)
        i, slot = np.nonzero(distances < threshold)
        sources.append(i)
        targets.append(labels[i, slot].astype(np.int64))
    return np.concatenate(sources), np.concatenate(targets)


def brand_of(title: str) -> str:
    """Return the first word of a catalog title, which names the brand ("Timberland Men Black Wallet")."""
    words = title.lower().replace("&", " ").split()
    return words[0] if words else ""


def deduplicate(ids: list[str], vectors: np.ndarray, threshold: float, brands: list[str] | None = None) -> list[int]:
    """Return the row numbers kept: one per group of near-duplicates, the lowest id.

    Near-duplicates are the connected components of the graph whose edges join
    vectors closer than ``threshold`` in cosine distance. With ``brands``, an
    edge also needs the same brand: plain black wallets of two brands look
    alike to the embedding but are different products.
    """
    count = len(ids)
    if count < 2 or threshold <= 0:
        return list(range(count))
    sources, targets = duplicate_edges(vectors, threshold)
    if brands is not None:
        same_brand = np.array([brands[a] == brands[b] for a, b in zip(sources, targets)], dtype=bool)
        sources, targets = sources[same_brand], targets[same_brand]
    graph = coo_matrix((np.ones(len(sources), dtype=np.int8), (sources, targets)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    best: dict[int, int] = {}
    for row in range(count):
        current = best.get(component[row])
        if current is None or id_order(ids[row]) < id_order(ids[current]):
            best[component[row]] = row
    return sorted(best.values())


# --- the job ------------------------------------------------------------------


def load_models(models: Path, categories: set[str], threads: int) -> tuple[Detector, dict[str, Classifier]]:
    detector = Detector(models / "detector", threads)
    classifiers = {}
    for category in sorted(categories):
        classifier = Classifier(models / "classifiers" / category, threads)
        if classifier.card.get("category") != category:
            raise ModelLoadError(f"model in {models / 'classifiers' / category} is for {classifier.card.get('category')!r}, not {category!r}")
        classifiers[category] = classifier
    return detector, classifiers


def product_record(item: Embedded) -> dict:
    row = item.row
    return {
        "product_id": row.product_id,
        "title": row.title,
        "product_type": row.product_type,
        "fine_class": row.fine,
        "high_level": row.high_level,
        "gender": row.gender,
        "colour": row.colour,
        "usage": row.usage,
        "image_path": str(row.image_path),
        "index_key": row.index_key,
        "box": item.box,
        "box_source": item.box_source,
        "predicted": item.predicted,
    }


def run(args: argparse.Namespace) -> dict:
    """Run the job; return the summary."""
    started = time.monotonic()
    out = Path(args.out).resolve()
    # Fail before hours of work, not at the end, when --out cannot be replaced.
    check_replaceable(out)
    manifest = read_manifest(Path(args.manifest), args.limit)
    report = JobReport(rows_read=manifest.rows_read, skipped=Counter(manifest.skipped))
    by_category: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in manifest.rows:
        by_category[row.high_level].append(row)
    if not by_category:
        raise ValueError(f"manifest {args.manifest} has no valid rows to index (skipped: {dict(report.skipped)})")

    log.info("loading models from %s for %s", args.models, ", ".join(sorted(by_category)))
    detector, classifiers = load_models(Path(args.models), set(by_category), args.threads)
    if args.detector_ensemble:
        detector = EnsembleDetector(detector)
        log.info("finding product boxes with the detector ensemble %s", detector.version)

    embedded: list[Embedded] = []
    with tqdm(total=len(manifest.rows), desc="indexing", unit="photo", mininterval=10) as progress:
        for category, rows in sorted(by_category.items()):
            for start in range(0, len(rows), args.batch_size):
                batch = rows[start : start + args.batch_size]
                embedded.extend(embed_batch(batch, detector, classifiers[category], args.score_floor, report))
                progress.update(len(batch))

    by_key: dict[str, list[Embedded]] = defaultdict(list)
    for item in embedded:
        by_key[item.row.index_key].append(item)

    groups, products = [], []
    for key in sorted(by_key):
        items = sorted(by_key[key], key=lambda item: id_order(item.row.product_id))
        ids = [item.row.product_id for item in items]
        vectors = np.stack([item.embedding for item in items])
        brands = [brand_of(item.row.title or "") for item in items]
        kept = deduplicate(ids, vectors, args.dedup_distance, brands)
        removed = len(items) - len(kept)
        if removed:
            report.duplicates_removed[key] = removed
            log.info("%s: %d near-duplicates removed of %d", key, removed, len(items))
        kept_items = [items[i] for i in kept]
        high_level = kept_items[0].row.high_level
        groups.append(IndexGroup(key, [item.row.product_id for item in kept_items], vectors[kept], classifiers[high_level].version))
        products.extend(product_record(item) for item in kept_items)

    staging = staging_folder(out)
    try:
        routing = write_index_folder(
            staging, groups, args.shards, detector.version,
            {category: model.version for category, model in classifiers.items()},
            {category: model.embedding_size for category, model in classifiers.items()},
            args.threads,
        )
        with open(staging / "products.jsonl", "w", encoding="utf-8") as handle:
            for record in products:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        summary = {
            "manifest": str(Path(args.manifest).resolve()),
            "models": str(Path(args.models).resolve()),
            "rows_read": report.rows_read,
            "skipped": dict(sorted(report.skipped.items())),
            "indexed": len(products),
            "box_sources": {source: dict(sorted(counts.items())) for source, counts in sorted(report.box_sources.items())},
            "duplicates_removed": sum(report.duplicates_removed.values()),
            "duplicates_removed_by_key": dict(sorted(report.duplicates_removed.items())),
            "keys": len(groups),
            "shard_items": {shard: sum(e["count"] for e in routing["keys"].values() if e["shard"] == shard) for shard in routing["shards"]},
            "dedup_distance": args.dedup_distance,
            "score_floor": args.score_floor,
            "seconds": round(time.monotonic() - started, 1),
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        publish(staging, out)
    except BaseException:
        # Our own partial folder only; the published one is untouched.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def format_summary(summary: dict, out: Path) -> str:
    lines = [
        f"Index written to {out}",
        f"  rows read           {summary['rows_read']}",
        f"  indexed             {summary['indexed']} products in {summary['keys']} indices",
        f"  duplicates removed  {summary['duplicates_removed']}",
    ]
    skipped = summary["skipped"]
    lines.append(f"  skipped             {sum(skipped.values())}")
    lines.extend(f"    {count:6d}  {reason}" for reason, count in skipped.items())
    sources = summary["box_sources"]
    categories = sorted({c for counts in sources.values() for c in counts})
    if categories:
        lines.append("  product box source per class (detected / non-white pixels / whole photo):")
        for category in categories:
            counts = [sources.get(source, {}).get(category, 0) for source in ("detected", "foreground", "whole photo")]
            lines.append(f"    {category:10s} {counts[0]} / {counts[1]} / {counts[2]}")
    lines.append("  items per shard     " + ", ".join(f"{shard} {count}" for shard, count in summary["shard_items"].items()))
    lines.append(f"  seconds             {summary['seconds']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.indexer", description="Build the catalog search indices from a manifest.")
    parser.add_argument("--manifest", type=Path, required=True, help="catalog manifest, .csv or .jsonl (see services/indexer/manifest.py)")
    parser.add_argument("--out", type=Path, required=True, help="index folder to write; replaced only once the new one is complete")
    parser.add_argument("--models", type=Path, default=repo_path("models"), help="models folder with detector/ and classifiers/<category>/")
    parser.add_argument("--shards", type=int, default=2, help="number of index shards to spread the keys over")
    parser.add_argument("--limit", type=int, default=None, help="index at most this many valid rows (for trials)")
    parser.add_argument("--dedup-distance", type=float, default=0.02, help="cosine distance below which two products of one key are duplicates; 0 turns removal off")
    parser.add_argument("--score-floor", type=float, default=0.2, help="lowest detection score accepted as the product's box")
    parser.add_argument("--batch-size", type=int, default=16, help="photos per detector and classifier batch")
    parser.add_argument("--detector-ensemble", action="store_true",
                        help="find product boxes with the detector on several views of each photo (about 6 times the detector time)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime and hnswlib threads")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name, value, low in (("--shards", args.shards, 1), ("--batch-size", args.batch_size, 1), ("--threads", args.threads, 1)):
        if value < low:
            log.error("%s must be at least %d, got %d", name, low, value)
            return 2
    if not 0 <= args.dedup_distance < 2:
        log.error("--dedup-distance must be in [0, 2), got %s", args.dedup_distance)
        return 2
    log.info("indexing %s into %s", args.manifest, args.out)
    try:
        summary = run(args)
    except (FileNotFoundError, FileExistsError, ValueError, ModelLoadError) as error:
        log.error("indexing failed: %s", error)
        return 1
    print(format_summary(summary, Path(args.out).resolve()))
    log.info("indexing finished in %.1f s", summary["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
