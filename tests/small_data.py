"""A small copy of the dataset folder for tests of whole commands: three
photos of each street set and a few catalog products, as links to the real
files, laid out as the dataset folder is."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from shared import datasets

# The first three held-out clothing-co-parsing photos, so commands that take
# held-out photos find them too.
CCP_PHOTOS = tuple(sorted(datasets.heldout_ids(datasets.CCP)))[:3]
CATALOG_TYPES = {"Tshirts": 2, "Shirts": 2, "Jeans": 2, "Trousers": 2, "Casual Shoes": 2, "Heels": 2, "Handbags": 2}


def small_dataset_copy(root: Path) -> Path:
    """Lay out three photos of each street set and a few catalog products, as
    links to the real files, the way the dataset folder is laid out."""
    source = datasets.datasets_dir()
    ccp, colorful, catalog = root / datasets.CCP, root / datasets.COLORFUL, root / datasets.CATALOG
    for folder in (ccp / "photos", ccp / "annotations" / "pixel-level", colorful / "JPEGImages", colorful / "Annotations", catalog / "images"):
        folder.mkdir(parents=True)
    os.symlink(source / datasets.CCP / "label_list.mat", ccp / "label_list.mat")
    for photo_id in CCP_PHOTOS:
        os.symlink(source / datasets.CCP / "photos" / f"{photo_id}.jpg", ccp / "photos" / f"{photo_id}.jpg")
        mask = source / datasets.CCP / "annotations" / "pixel-level" / f"{photo_id}.mat"
        os.symlink(mask, ccp / "annotations" / "pixel-level" / mask.name)
    for annotation in sorted((source / datasets.COLORFUL / "Annotations").glob("*.xml"))[:3]:
        os.symlink(annotation, colorful / "Annotations" / annotation.name)
        photo = f"{annotation.stem}.jpg"
        os.symlink(source / datasets.COLORFUL / "JPEGImages" / photo, colorful / "JPEGImages" / photo)

    with open(source / datasets.CATALOG / "styles.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    wanted, chosen = dict(CATALOG_TYPES), []
    for row in rows:
        if wanted.get(row["articleType"], 0) and (source / datasets.CATALOG / "images" / f"{row['id']}.jpg").exists():
            wanted[row["articleType"]] -= 1
            chosen.append(row)
    with open(catalog / "styles.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    for row in chosen:
        os.symlink(source / datasets.CATALOG / "images" / f"{row['id']}.jpg", catalog / "images" / f"{row['id']}.jpg")
    return root
