"""Turn the fashion-product-images folder into an indexing manifest.

    python -m services.indexer.adapters --out var/catalog/manifest.jsonl [--limit N]

Reads ``styles.csv`` and ``images/<id>.jpg`` under the dataset folder
(``$DATASETS_DIR``) and writes one JSON line per apparel product, with an
absolute image path. Rows the taxonomy ignores (not apparel, innerwear, types
with too few products) are left out and counted; the dataset folder is only read.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from shared import taxonomy
from shared.datasets import CATALOG, datasets_dir

log = logging.getLogger("services.indexer.adapters")


def catalog_manifest_rows(root: Path, limit: int | None = None) -> tuple[list[dict], Counter]:
    """Return the manifest rows of the catalog and the counts of rows left out, by reason."""
    folder = root / CATALOG
    styles = folder / "styles.csv"
    if not styles.is_file():
        raise FileNotFoundError(f"{styles} not found; set DATASETS_DIR to the folder holding {CATALOG}/")
    rows: list[dict] = []
    left_out: Counter = Counter()
    with open(styles, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            if limit is not None and len(rows) >= limit:
                break
            article_type = (record.get("articleType") or "").strip()
            if article_type not in taxonomy.CATALOG_TYPES:
                left_out["unknown product type"] += 1
                continue
            if taxonomy.catalog_target(article_type) is None:
                left_out["ignored by the taxonomy"] += 1
                continue
            image = folder / "images" / f"{record['id']}.jpg"
            if not image.is_file():
                left_out["image file missing"] += 1
                continue
            rows.append({
                "id": record["id"],
                "image_path": str(image.resolve()),
                "product_type": article_type,
                "gender": record.get("gender", ""),
                "colour": record.get("baseColour", ""),
                "usage": record.get("usage", ""),
                "title": record.get("productDisplayName", ""),
            })
    return rows, left_out


def write_jsonl(rows: list[dict], out: Path) -> None:
    """Write rows as JSON Lines through a temporary file, so a crash leaves no half file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    temporary.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write an indexing manifest of the fashion-product-images catalog.")
    parser.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many apparel rows (for trials)")
    parser.add_argument("--datasets-dir", type=Path, default=None, help="dataset root; default $DATASETS_DIR or ../shared/datasets")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    root = args.datasets_dir.resolve() if args.datasets_dir else datasets_dir()
    log.info("reading the catalog under %s", root)
    try:
        rows, left_out = catalog_manifest_rows(root, args.limit)
    except FileNotFoundError as error:
        log.error("%s", error)
        return 2
    write_jsonl(rows, args.out)
    log.info("wrote %d rows to %s; left out %s", len(rows), args.out, dict(left_out) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
