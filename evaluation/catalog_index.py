"""The catalog index an evaluation searches: the ``fashion-product-images``
under the dataset root, indexed by the indexing job's own code.

The index is cached under ``var/eval/`` by a digest of the catalog (styles.csv
and the photo files' names and sizes), the model versions and the indexing
options, so it is rebuilt exactly when one of them changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from services.indexer import job
from services.indexer.adapters import catalog_manifest_rows, write_jsonl
from services.indexer.indexfiles import IndexGroup, write_index_folder
from shared.datasets import CATALOG
from shared.inference import Classifier
from shared.routing import read_routing

log = logging.getLogger(__name__)

# Bump when a change to the indexing code changes what it writes.
INDEXER_CODE_VERSION = 1
EMBED_BATCH = 32


def model_versions(models: Path) -> dict[str, str]:
    """Return the version of every model card under a models folder."""
    versions = {}
    for card in sorted(models.glob("**/card.json")):
        versions[str(card.parent.relative_to(models))] = json.loads(card.read_text())["version"]
    return versions


def catalog_digest(root: Path, models: Path, options: dict) -> str:
    """Digest of what the index depends on: catalog, models and options."""
    folder = root / CATALOG
    digest = hashlib.sha256()
    digest.update((folder / "styles.csv").read_bytes())
    for image in sorted((folder / "images").iterdir()):
        digest.update(f"{image.name}:{image.stat().st_size}\n".encode())
    digest.update(json.dumps({"models": model_versions(models), "options": options, "code": INDEXER_CODE_VERSION}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def ensure_catalog_index(root: Path, models: Path, cache_dir: Path, shards: int = 2, threads: int = 2) -> Path:
    """Return the index folder of the catalog under ``root``, building it when
    no cached index matches the catalog, models and options."""
    options = {"shards": shards, "dedup_distance": 0.02, "score_floor": 0.2}
    digest = catalog_digest(root, models, options)
    index_dir = cache_dir / f"index-{digest}"
    if (index_dir / "routing.json").is_file():
        read_routing(index_dir)  # raises when the cached folder is damaged
        log.info("using the cached catalog index %s", index_dir)
        return index_dir

    log.info("indexing the catalog under %s into %s", root / CATALOG, index_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows, left_out = catalog_manifest_rows(root)
    if not rows:
        raise ValueError(f"the catalog under {root / CATALOG} has no product to index (left out: {dict(left_out)})")
    manifest = cache_dir / f"manifest-{digest}.jsonl"
    write_jsonl(rows, manifest)
    summary = job.run(argparse.Namespace(
        manifest=manifest, out=index_dir, models=models, shards=shards, limit=None,
        dedup_distance=options["dedup_distance"], score_floor=options["score_floor"], batch_size=16, threads=threads,
        detector_ensemble=False,
    ))
    log.info("indexed %d products in %d indices in %.0f s", summary["indexed"], summary["keys"], summary["seconds"])
    return index_dir


def reembed_catalog_index(production_index: Path, models: Path, categories: list[str], out: Path) -> Path:
    """Embed the products of ``categories`` in an existing index again with
    the classifiers under ``models``, cut with the boxes the indexing job
    stored, and write them as an index folder of their own (kept at ``out``
    and reused when it exists). Other models are so compared on the very
    same catalog crops."""
    classifiers = {category: Classifier(models / "classifiers" / category, threads=2) for category in categories}
    versions = {category: model.version for category, model in classifiers.items()}
    if (out / "routing.json").exists():
        if json.loads((out / "routing.json").read_text()).get("model_versions") == versions:
            return out
        log.info("%s was embedded by other models; embedding again", out)
        shutil.rmtree(out)
    records = [json.loads(line) for line in (production_index / "products.jsonl").read_text().splitlines() if line.strip()]
    routing = json.loads((production_index / "routing.json").read_text())
    by_key: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record["high_level"] in categories:
            by_key[record["index_key"]].append(record)

    groups, kept = [], []
    for key in tqdm(sorted(by_key), desc=f"embedding with {models}", mininterval=10):
        members = by_key[key]
        model = classifiers[members[0]["high_level"]]
        vectors = []
        for start in range(0, len(members), EMBED_BATCH):
            batch = members[start : start + EMBED_BATCH]
            crops = np.stack([
                model.crop(Image.open(record["image_path"]).convert("RGB"), np.asarray(record["box"], np.float32)) for record in batch
            ])
            vectors.append(model.run(crops).embeddings)
        groups.append(IndexGroup(key, [record["product_id"] for record in members], np.concatenate(vectors), model.version))
        kept.extend(members)

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_index_folder(
        staging, groups, 1, routing.get("detector_version", "unknown"), versions,
        {category: model.embedding_size for category, model in classifiers.items()},
    )
    with open(staging / "products.jsonl", "w", encoding="utf-8") as handle:
        for record in kept:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    staging.rename(out)
    return out
