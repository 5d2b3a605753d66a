"""Reading and validating a catalog manifest (CSV or JSON Lines).

Fields of a row: ``id``, ``image_path``, ``product_type`` (the catalog's
articleType, e.g. "Tshirts"), ``gender`` (Men/Women/Boys/Girls/Unisex, any
case), ``colour`` (the catalog's baseColour name), ``usage`` and ``title``.
The first four are required; the last three may be empty, because the catalog
itself leaves some of them blank.

A bad row is skipped, counted by reason and logged with its row number: one
broken row must not stop the indexing of thousands of good ones.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared import taxonomy

LOGGED_PER_REASON = 5

log = logging.getLogger("services.indexer.manifest")

REQUIRED_FIELDS = ("id", "image_path", "product_type", "gender")
OPTIONAL_FIELDS = ("colour", "usage", "title")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS

_GENDERS = {name.lower(): gender for name, gender in taxonomy.CATALOG_GENDERS.items()}


@dataclass(frozen=True)
class ManifestRow:
    """One valid manifest row, mapped onto the taxonomy."""

    row_number: int
    product_id: str
    image_path: Path
    product_type: str
    high_level: str
    fine: str
    gender: str
    colour: str
    usage: str
    title: str

    @property
    def index_key(self) -> str:
        return taxonomy.index_key(self.fine, self.gender)


@dataclass
class ManifestReport:
    """The valid rows of a manifest and what was skipped, by reason."""

    rows: list[ManifestRow] = field(default_factory=list)
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)


def _raw_rows(path: Path):
    """Yield (row number, dict or None when unparsable) from a CSV or JSONL file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            # Row numbers count data rows from 1, so the header is not row 1.
            for number, record in enumerate(csv.DictReader(handle), start=1):
                yield number, record
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as handle:
            number = 0
            for line in handle:
                if not line.strip():
                    continue
                number += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    yield number, None
                    continue
                yield number, record if isinstance(record, dict) else None
    else:
        raise ValueError(f"manifest {path} must end in .csv or .jsonl, not {suffix!r}")


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def validate_row(number: int, record: dict | None, base_dir: Path) -> ManifestRow | str:
    """Return the valid row, or the reason it is skipped."""
    if record is None:
        return "unparsable row"
    values = {name: _text(record.get(name)) for name in FIELDS}
    for name in REQUIRED_FIELDS:
        if not values[name]:
            return f"missing field {name}"

    product_type = values["product_type"]
    if product_type not in taxonomy.CATALOG_TYPES:
        return "unknown product type"
    target = taxonomy.catalog_target(product_type)
    if target is None:
        return "not a search target"
    if target.high_level not in taxonomy.CLASSIFIER_CATEGORIES:
        return f"no classifier for class {target.high_level}"

    gender = _GENDERS.get(values["gender"].lower())
    if gender is None:
        return "unknown gender"

    image_path = Path(values["image_path"])
    if not image_path.is_absolute():
        # Relative paths are taken from the manifest's folder, not the working directory.
        image_path = base_dir / image_path
    if not image_path.is_file():
        return "image file missing"

    return ManifestRow(
        row_number=number,
        product_id=values["id"],
        image_path=image_path,
        product_type=product_type,
        high_level=target.high_level,
        fine=target.fine,
        gender=gender,
        colour=values["colour"],
        usage=values["usage"],
        title=values["title"],
    )


def read_manifest(path: Path, limit: int | None = None) -> ManifestReport:
    """Read a manifest; ``limit`` caps the number of valid rows returned."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    report = ManifestReport()
    seen_ids: set[str] = set()
    for number, record in _raw_rows(path):
        if limit is not None and len(report.rows) >= limit:
            break
        report.rows_read += 1
        result = validate_row(number, record, path.parent)
        if isinstance(result, ManifestRow) and result.product_id in seen_ids:
            result = "duplicate id"
        if isinstance(result, str):
            report.skipped[result] += 1
            # The product type and gender go into the line so a fix can start there.
            detail = "" if record is None else f" (id={_text(record.get('id'))!r}, product_type={_text(record.get('product_type'))!r}, gender={_text(record.get('gender'))!r})"
            # A whole class without a classifier can skip hundreds of rows, so
            # each reason is logged a few times and then only counted.
            if report.skipped[result] <= LOGGED_PER_REASON:
                log.warning("%s row %d skipped: %s%s", path.name, number, result, detail)
            if report.skipped[result] == LOGGED_PER_REASON:
                log.warning("further rows skipped for %r are counted, not logged", result)
            continue
        seen_ids.add(result.product_id)
        report.rows.append(result)
    log.info("read %s: %d rows, %d valid, %d skipped %s", path, report.rows_read, len(report.rows),
             sum(report.skipped.values()), dict(report.skipped))
    return report
