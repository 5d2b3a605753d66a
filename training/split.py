"""Make the held-out split once: about 15% of each dataset, stratified by class.

    python -m training.split

Each photo is stratified by its rarest class (its article type in the catalog),
so rare classes are represented in the held-out part too. The seed is fixed and
the lists are committed under ``splits/``; nothing trains or selects models on
them. Running the command again reproduces the same lists.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections import Counter, defaultdict

from shared import datasets

SEED = 20261204
HELDOUT_SHARE = 0.15

log = logging.getLogger("training.split")


def stratified_heldout(strata: dict[str, str], share: float, seed: int) -> list[str]:
    """Pick ``share`` of the ids of every stratum (at least one of a stratum of two or more)."""
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for item_id, stratum in sorted(strata.items()):
        by_stratum[stratum].append(item_id)
    rng = random.Random(seed)
    chosen: list[str] = []
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        rng.shuffle(members)
        count = round(len(members) * share)
        if count == 0 and len(members) >= 2:
            count = 1
        chosen.extend(members[:count])
    return sorted(chosen)


def rarest_class_strata(photos: list[datasets.StreetPhoto]) -> dict[str, str]:
    """Map each photo id to the rarest high-level class among its items."""
    counts = Counter(item.high_level for photo in photos for item in photo.items)
    strata = {}
    for photo in photos:
        classes = {item.high_level for item in photo.items} or {"none"}
        strata[photo.photo_id] = min(classes, key=lambda c: (counts.get(c, 0), c))
    return strata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = datasets.datasets_dir()
    datasets.SPLITS_DIR.mkdir(exist_ok=True)

    street = {
        datasets.CCP: datasets.read_ccp(root),
        datasets.COLORFUL: datasets.read_colorful(root),
    }
    lists = {name: stratified_heldout(rarest_class_strata(photos), HELDOUT_SHARE, SEED) for name, photos in street.items()}
    catalog = {row.product_id: row.article_type for row in datasets.read_catalog(root)}
    lists[datasets.CATALOG] = stratified_heldout(catalog, HELDOUT_SHARE, SEED)

    for name, ids in lists.items():
        path = datasets.SPLITS_DIR / f"{name}.heldout.txt"
        path.write_text("\n".join(ids) + "\n")
        log.info("wrote %s: %d held-out ids", path, len(ids))


if __name__ == "__main__":
    main()
