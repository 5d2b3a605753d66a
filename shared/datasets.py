"""Readers for the three bundled datasets, and the held-out split.

Nothing here writes under the dataset folder: CI mounts it read-only.
The folder is ``$DATASETS_DIR``, by default ``../shared/datasets`` beside the
repository checkout.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from shared import taxonomy
from shared.boxes import mask_to_boxes

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLITS_DIR = REPO_ROOT / "splits"

CCP = "clothing-co-parsing"
COLORFUL = "colorful-fashion"
CATALOG = "fashion-product-images"


def datasets_dir() -> Path:
    """Return the dataset root: ``$DATASETS_DIR`` or ``../shared/datasets``."""
    configured = os.environ.get("DATASETS_DIR")
    root = Path(configured) if configured else REPO_ROOT.parent / "shared" / "datasets"
    return root.resolve()


@dataclass
class StreetItem:
    """One annotated item in a street photo."""

    high_level: str
    box: np.ndarray
    label: str                     # the dataset's own label, e.g. "blazer"
    fine: str | None = None        # fine class when the label names one
    mask_label_ids: tuple[int, ...] = ()  # pixel labels of the item (masks only)


@dataclass
class StreetPhoto:
    """A street photo with its items; ``ignore_boxes`` mark unusable regions."""

    dataset: str
    photo_id: str
    path: Path
    width: int
    height: int
    items: list[StreetItem] = field(default_factory=list)
    ignore_boxes: list[np.ndarray] = field(default_factory=list)
    mask_path: Path | None = None


# --- clothing-co-parsing ------------------------------------------------------


@lru_cache(maxsize=4)
def ccp_label_names(root: Path) -> tuple[str, ...]:
    """Return the 59 pixel-label names of clothing-co-parsing, by label number."""
    from scipy.io import loadmat

    raw = loadmat(root / CCP / "label_list.mat")["label_list"][0]
    return tuple(str(entry[0]) if len(entry) else "" for entry in raw)


def load_ccp_mask(path: Path) -> np.ndarray:
    """Load the HxW uint8 label map of one clothing-co-parsing photo."""
    from scipy.io import loadmat

    return loadmat(path)["groundtruth"]


def ccp_items_from_mask(label_map: np.ndarray, names: tuple[str, ...]) -> list[StreetItem]:
    """Derive item boxes from a pixel label map, including the person box."""
    by_class: dict[str, list[int]] = {}
    fines: dict[str, set[str | None]] = {}
    labels: dict[str, list[str]] = {}
    for label_id in np.unique(label_map):
        name = names[int(label_id)]
        target = taxonomy.street_target(taxonomy.CCP_LABELS, name)
        if target is None:
            continue
        by_class.setdefault(target.high_level, []).append(int(label_id))
        fines.setdefault(target.high_level, set()).add(target.fine)
        labels.setdefault(target.high_level, []).append(name)

    items: list[StreetItem] = []
    for high_level, label_ids in by_class.items():
        # A class drawn with two labels (a blazer over a blouse) has no single
        # fine class, so it trains only the detector.
        fine_set = fines[high_level]
        fine = next(iter(fine_set)) if len(fine_set) == 1 else None
        for box in mask_to_boxes(np.isin(label_map, label_ids), high_level):
            items.append(StreetItem(high_level, box, "+".join(sorted(labels[high_level])), fine, tuple(label_ids)))

    # The person is every labelled pixel: garments, skin and hair.
    person = mask_to_boxes(label_map > 0, taxonomy.PERSON)
    if person:
        items.append(StreetItem(taxonomy.PERSON, person[0], taxonomy.PERSON))
    return items


def read_ccp(root: Path, photo_ids: list[str] | None = None) -> list[StreetPhoto]:
    """Read clothing-co-parsing photos with boxes derived from their masks."""
    names = ccp_label_names(root)
    folder = root / CCP
    ids = photo_ids if photo_ids is not None else sorted(p.stem for p in (folder / "annotations" / "pixel-level").glob("*.mat"))
    photos = []
    for photo_id in ids:
        mask_path = folder / "annotations" / "pixel-level" / f"{photo_id}.mat"
        label_map = load_ccp_mask(mask_path)
        height, width = label_map.shape
        photos.append(StreetPhoto(
            CCP, photo_id, folder / "photos" / f"{photo_id}.jpg", width, height,
            ccp_items_from_mask(label_map, names), mask_path=mask_path,
        ))
    return photos


# --- colorful-fashion ----------------------------------------------------------

# colorful-fashion has no person boxes. The union of a photo's item boxes,
# raised by this share of its height for the head, replaces one, so the
# detector is not taught that the people in these photos are background.
_HEAD_SHARE = 0.12


def parse_voc(path: Path) -> tuple[int, int, list[tuple[str, np.ndarray]]]:
    """Parse a Pascal VOC file into (width, height, [(label, box)])."""
    root = ElementTree.parse(path).getroot()
    size = root.find("size")
    width = int(size.findtext("width"))
    height = int(size.findtext("height"))
    objects = []
    for obj in root.iter("object"):
        bndbox = obj.find("bndbox")
        box = np.array([float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")], dtype=np.float32)
        objects.append((obj.findtext("name").strip(), box))
    return width, height, objects


def read_colorful(root: Path, photo_ids: list[str] | None = None) -> list[StreetPhoto]:
    """Read colorful-fashion photos with their boxes mapped to high-level classes.

    Footwear convention: this set draws one shoe box per photo that covers
    sometimes one shoe and sometimes both, while the project's convention is
    one box per shoe. Its shoe boxes are therefore returned as
    ``ignore_boxes``: training blanks those pixels, evaluation skips them.
    """
    folder = root / COLORFUL
    ids = photo_ids if photo_ids is not None else sorted(p.stem for p in (folder / "Annotations").glob("*.xml"))
    photos = []
    for photo_id in ids:
        width, height, objects = parse_voc(folder / "Annotations" / f"{photo_id}.xml")
        photo = StreetPhoto(COLORFUL, photo_id, folder / "JPEGImages" / f"{photo_id}.jpg", width, height)
        for label, box in objects:
            target = taxonomy.street_target(taxonomy.COLORFUL_LABELS, label)
            if target is None:
                continue
            if target.high_level == "footwear":
                photo.ignore_boxes.append(box)
            else:
                photo.items.append(StreetItem(target.high_level, box, label, target.fine))
        if objects:
            all_boxes = np.stack([box for _, box in objects])
            union = np.array([all_boxes[:, 0].min(), all_boxes[:, 1].min(), all_boxes[:, 2].max(), all_boxes[:, 3].max()])
            if not any(label == "hat" for label, _ in objects):
                union[1] = max(0.0, union[1] - _HEAD_SHARE * (union[3] - union[1]))
            photo.items.append(StreetItem(taxonomy.PERSON, union.astype(np.float32), taxonomy.PERSON))
        photos.append(photo)
    return photos


# --- fashion-product-images (the catalog) --------------------------------------


@dataclass(frozen=True)
class CatalogRow:
    """One catalog product with its labels mapped onto the taxonomy."""

    product_id: str
    path: Path
    article_type: str
    high_level: str
    fine: str
    gender: str
    colour: str | None
    usage: str | None
    pattern: str | None
    season: str | None
    base_colour: str
    title: str


def read_catalog(root: Path) -> list[CatalogRow]:
    """Read the catalog's apparel rows; rows the taxonomy ignores are left out."""
    folder = root / CATALOG
    rows = []
    with open(folder / "styles.csv", newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            target = taxonomy.catalog_target(record["articleType"])
            if target is None:
                continue
            image = folder / "images" / f"{record['id']}.jpg"
            if not image.exists():
                continue
            season = record.get("season", "").strip().lower()
            rows.append(CatalogRow(
                product_id=record["id"],
                path=image,
                article_type=record["articleType"],
                high_level=target.high_level,
                fine=target.fine,
                gender=taxonomy.CATALOG_GENDERS[record["gender"]],
                colour=taxonomy.catalog_value(taxonomy.CATALOG_COLOURS, record["baseColour"]),
                usage=taxonomy.catalog_value(taxonomy.CATALOG_USAGES, record["usage"]),
                pattern=taxonomy.pattern_from_title(record["productDisplayName"]),
                season=season if season in taxonomy.SEASONS else None,
                base_colour=record["baseColour"],
                title=record["productDisplayName"],
            ))
    return rows


# --- the held-out split ----------------------------------------------------------


def heldout_ids(dataset: str) -> set[str]:
    """Return the ids of the committed held-out split of one dataset."""
    path = SPLITS_DIR / f"{dataset}.heldout.txt"
    if not path.exists():
        raise FileNotFoundError(f"held-out split {path} is missing; run `python -m training.split`")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}
