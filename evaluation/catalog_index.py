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
from pathlib import Path

from services.indexer import job
from services.indexer.adapters import catalog_manifest_rows, write_jsonl
from shared.datasets import CATALOG
from shared.routing import read_routing

log = logging.getLogger(__name__)

# Bump when a change to the indexing code changes what it writes.
INDEXER_CODE_VERSION = 1


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
    ))
    log.info("indexed %d products in %d indices in %.0f s", summary["indexed"], summary["keys"], summary["seconds"])
    return index_dir
