"""Retrieval quality: street items as queries, catalog products as results.

Queries are the items of clothing-co-parsing photos whose class has a
classifier and whose label names catalog article types. Each is searched
twice through the gateway's own search code:

- ground truth: the item's mask-derived box, sent as a search region with its
  class, as a client that picks an item does;
- detected: the whole photo, as a plain search; the detected item of the same
  class that overlaps the item by IoU 0.5 or more (each detection used once,
  best score first) gives the item's results, and an item no detection matches
  counts as a miss (no results).

A result's type counts when its ``articleType`` is one the item's street label
maps to under the taxonomy. Its colour agrees when the catalog ``baseColour``,
mapped onto the palette, is the palette colour of the item's mask pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from evaluation.pipeline import Pipeline
from services.gateway.search import SearchOptions
from services.gateway.settings import GatewaySettings
from shared import datasets, taxonomy
from shared.boxes import iou_matrix
from shared.imagecodec import decode_image
from shared.imaging import palette_colour
from shared.metrics import precision_at_k, reciprocal_rank

log = logging.getLogger(__name__)

RESULTS = 10
PRECISION_RANKS = (1, 5, 10)
MATCH_IOU = 0.5


@dataclass
class Query:
    """One street item to search for."""

    photo_id: str
    label: str
    high_level: str
    box: np.ndarray
    relevant_types: frozenset[str]
    colour: str | None


@dataclass
class QueryOutcome:
    """The top results of one query, as (article type, palette colour, product id)."""

    query: Query
    results: list[tuple[str, str | None, str]]
    found: bool = True

    def type_hits(self) -> list[bool]:
        return [article_type in self.query.relevant_types for article_type, _, _ in self.results]

    def colour_hits(self) -> list[bool]:
        return [colour is not None and colour == self.query.colour for _, colour, _ in self.results]


@dataclass
class PhotoSearch:
    """Everything one photo's searches produced."""

    photo_id: str
    ground_truth: list[QueryOutcome] = field(default_factory=list)
    detected: list[QueryOutcome] = field(default_factory=list)
    # Top product ids of each item of the plain search, in response order.
    plain_search_ids: list[list[str]] = field(default_factory=list)


def load_photo(path: Path) -> Image.Image:
    """Decode a photo the way the gateway does (EXIF orientation, RGB)."""
    return decode_image(path.read_bytes(), 50 * 1024 * 1024, 60_000_000, 8)


def photo_queries(photo: datasets.StreetPhoto, pixels: np.ndarray) -> list[Query]:
    """Return the searchable items of one clothing-co-parsing photo."""
    label_map = datasets.load_ccp_mask(photo.mask_path) if photo.mask_path else None
    queries = []
    for item in photo.items:
        if item.high_level not in taxonomy.CLASSIFIER_CATEGORIES:
            continue
        relevant = taxonomy.relevant_article_types(item.label)
        if not relevant:
            continue
        colour = None
        if label_map is not None and item.mask_label_ids:
            # Only the pixels inside this item's box: one label can cover two shoes.
            x1, y1, x2, y2 = (int(round(v)) for v in item.box)
            inside = np.zeros(label_map.shape, bool)
            inside[y1:y2, x1:x2] = True
            colour = palette_colour(pixels[np.isin(label_map, item.mask_label_ids) & inside])
        queries.append(Query(photo.photo_id, item.label, item.high_level, np.asarray(item.box, np.float32), relevant, colour))
    return queries


def describe_results(results: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    """Reduce response results to (article type, palette colour, product id)."""
    described = []
    for result in results:
        colour = taxonomy.CATALOG_COLOURS.get(result.get("colour") or "")
        described.append((result.get("product_type") or "", colour if isinstance(colour, str) else None, str(result["product_id"])))
    return described


def match_detections(queries: list[Query], items: list[dict[str, Any]]) -> list[int | None]:
    """Pair each query with a detected item of its class at IoU >= 0.5, one-to-one,
    best detection score first; returns the item index per query or None."""
    matches: list[int | None] = [None] * len(queries)
    if not queries or not items:
        return matches
    query_boxes = np.stack([q.box for q in queries])
    item_boxes = np.asarray([item["box"] for item in items], np.float32).reshape(-1, 4)
    overlaps = iou_matrix(item_boxes, query_boxes)
    for item_index in sorted(range(len(items)), key=lambda i: -items[i]["score"]):
        candidates = [
            (overlaps[item_index, q], q) for q in range(len(queries))
            if matches[q] is None and queries[q].high_level == items[item_index]["class"] and overlaps[item_index, q] >= MATCH_IOU
        ]
        if candidates:
            matches[max(candidates)[1]] = item_index
    return matches


def search_photo(pipeline: Pipeline, photo: datasets.StreetPhoto, settings: GatewaySettings | None = None,
                 results: int = RESULTS, detected: bool = True, ground_truth: bool = True) -> PhotoSearch:
    """Run the ground-truth and detected searches of one photo."""
    image = load_photo(photo.path)
    queries = photo_queries(photo, np.asarray(image))
    outcome = PhotoSearch(photo.photo_id)

    for query in queries if ground_truth else []:
        options = SearchOptions(region=[float(v) for v in query.box], region_class=query.high_level, results_per_item=results)
        answer = pipeline.search(image, options, settings)
        outcome.ground_truth.append(QueryOutcome(query, describe_results(answer["items"][0]["results"])))

    if detected:
        answer = pipeline.search(image, SearchOptions(results_per_item=results), settings)
        items = answer["items"]
        outcome.plain_search_ids = [[r["product_id"] for r in item["results"]] for item in items]
        for query, match in zip(queries, match_detections(queries, items)):
            if match is None:
                outcome.detected.append(QueryOutcome(query, [], found=False))
            else:
                outcome.detected.append(QueryOutcome(query, describe_results(items[match]["results"])))
    return outcome


def search_photos(pipeline: Pipeline, photos: list[datasets.StreetPhoto], settings: GatewaySettings | None = None,
                  detected: bool = True, ground_truth: bool = True, desc: str = "retrieval") -> list[PhotoSearch]:
    searches = []
    for photo in tqdm(photos, desc=desc, unit="photo", mininterval=10):
        searches.append(search_photo(pipeline, photo, settings, detected=detected, ground_truth=ground_truth))
    return searches


def summarise(outcomes: list[QueryOutcome]) -> dict[str, Any]:
    """Mean precision@1/5/10 of type, colour agreement@10 and MRR over queries,
    overall and per high-level class."""

    def figures(selected: list[QueryOutcome]) -> dict[str, Any]:
        if not selected:
            return {"queries": 0}
        result: dict[str, Any] = {"queries": len(selected)}
        for k in PRECISION_RANKS:
            result[f"type_precision_at_{k}"] = float(np.mean([precision_at_k(o.type_hits(), k) for o in selected]))
        coloured = [o for o in selected if o.query.colour is not None]
        result["colour_agreement_at_10"] = float(np.mean([precision_at_k(o.colour_hits(), 10) for o in coloured])) if coloured else None
        result["colour_queries"] = len(coloured)
        result["mrr"] = float(np.mean([reciprocal_rank(o.type_hits()[:RESULTS]) for o in selected]))
        result["found"] = float(np.mean([o.found for o in selected]))
        return result

    summary = figures(outcomes)
    summary["per_class"] = {
        high_level: figures([o for o in outcomes if o.query.high_level == high_level])
        for high_level in sorted({o.query.high_level for o in outcomes})
    }
    return summary


def agreement_preference(a: list[QueryOutcome], b: list[QueryOutcome], top: int = 5) -> dict[str, int]:
    """Count, query by query, which of two runs agrees better with the query in
    its top results: more results of the right type wins, and colour breaks
    a tie in type; equal on both is a tie."""
    counts = {"a": 0, "b": 0, "tie": 0}
    for first, second in zip(a, b):
        score_a = (sum(first.type_hits()[:top]), sum(first.colour_hits()[:top]))
        score_b = (sum(second.type_hits()[:top]), sum(second.colour_hits()[:top]))
        if score_a > score_b:
            counts["a"] += 1
        elif score_b > score_a:
            counts["b"] += 1
        else:
            counts["tie"] += 1
    return counts
