"""The photos and catalog rows an evaluation reads, all from one dataset root.

``heldout`` takes the committed held-out split (the photos no model trained
or was selected on); ``all`` takes every photo under the root, for a copy of
the data that training never saw. Only files under the root are read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from shared import datasets

log = logging.getLogger(__name__)

SPLITS = ("heldout", "all")


class DatasetLayoutError(FileNotFoundError):
    """The dataset root lacks a folder or file the evaluation needs."""


@dataclass
class EvaluationData:
    root: Path
    split: str
    ccp: list[datasets.StreetPhoto]
    colorful: list[datasets.StreetPhoto]
    catalog: list[datasets.CatalogRow]


def check_layout(root: Path) -> None:
    """Raise ``DatasetLayoutError`` naming every missing part of the expected layout."""
    expected = [
        root / datasets.CCP / "photos", root / datasets.CCP / "annotations" / "pixel-level", root / datasets.CCP / "label_list.mat",
        root / datasets.COLORFUL / "JPEGImages", root / datasets.COLORFUL / "Annotations",
        root / datasets.CATALOG / "images", root / datasets.CATALOG / "styles.csv",
    ]
    missing = [str(path) for path in expected if not path.exists()]
    if missing:
        raise DatasetLayoutError(f"the dataset root {root} lacks: {', '.join(missing)}")


def _chosen(ids: list[str], dataset: str, split: str, limit: int | None) -> list[str]:
    if split == "heldout":
        heldout = datasets.heldout_ids(dataset)
        ids = [photo_id for photo_id in ids if photo_id in heldout]
    return ids[:limit] if limit else ids


def load_evaluation_data(root: Path, split: str, limit: int | None = None) -> EvaluationData:
    """Read the street photos and catalog rows of one split under ``root``.

    ``limit`` keeps the first N photos of each street set and N catalog rows
    per high-level class, for smoke runs.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = root.resolve()
    check_layout(root)

    ccp_ids = sorted(p.stem for p in (root / datasets.CCP / "annotations" / "pixel-level").glob("*.mat")
                     if (root / datasets.CCP / "photos" / f"{p.stem}.jpg").exists())
    colorful_ids = sorted(p.stem for p in (root / datasets.COLORFUL / "Annotations").glob("*.xml")
                          if (root / datasets.COLORFUL / "JPEGImages" / f"{p.stem}.jpg").exists())
    ccp = datasets.read_ccp(root, _chosen(ccp_ids, datasets.CCP, split, limit))
    colorful = datasets.read_colorful(root, _chosen(colorful_ids, datasets.COLORFUL, split, limit))

    rows = datasets.read_catalog(root)
    if split == "heldout":
        heldout = datasets.heldout_ids(datasets.CATALOG)
        rows = [row for row in rows if row.product_id in heldout]
    if limit:
        per_class: dict[str, int] = {}
        kept = []
        for row in rows:
            if per_class.get(row.high_level, 0) < limit:
                per_class[row.high_level] = per_class.get(row.high_level, 0) + 1
                kept.append(row)
        rows = kept
    log.info("evaluation data under %s, split %s: %d clothing-co-parsing photos, %d colorful-fashion photos, %d catalog rows",
             root, split, len(ccp), len(colorful), len(rows))
    return EvaluationData(root, split, ccp, colorful, rows)
