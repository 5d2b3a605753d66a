"""The search pipeline: detect, infer each wearer, crop, classify per category,
query the shards of each crop's top fine classes, merge by distance.

Stages that fail downstream (a classifier, a shard) leave their items without
results and are named in ``degraded``; only a failed detector fails the search.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.gateway.catalog import IndexMetadata
from services.gateway.clients import Downstream, DownstreamError
from services.gateway.settings import GatewaySettings
from shared import taxonomy
from shared.boxes import box_area, expand_box, nms
from shared.imaging import shrink_to_fit, square_crop
from shared.service import stage_timer
from shared.wire import decode_vector

SERVICE = "gateway"
log = logging.getLogger(__name__)

SEARCHABLE_GENDERS = ("men", "women", "boys", "girls")


class SearchOptions(BaseModel):
    """Options of one search; unknown fields are rejected by name."""

    model_config = ConfigDict(extra="forbid")

    results_per_item: int | None = Field(None, ge=1, le=50, description="results returned per item (1-50)")
    gender: Literal["men", "women", "boys", "girls"] | None = Field(None, description="search this gender (plus unisex) instead of the inferred one")
    classes: list[str] | None = Field(None, description="high-level classes to include; all when unset")
    max_items: int | None = Field(None, ge=1, le=30, description="most items searched, by detection score (1-30)")
    region: list[float] | None = Field(None, description="[x1, y1, x2, y2] in photo pixels: search this region instead of detecting")
    region_class: str | None = Field(None, description="high-level class of the region; inferred from detections when unset")

    @field_validator("classes")
    @classmethod
    def check_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(taxonomy.HIGH_LEVEL_CLASSES))
        if unknown or not value:
            raise ValueError(f"unknown classes {unknown}; choose from {', '.join(taxonomy.HIGH_LEVEL_CLASSES)}")
        return sorted(set(value))

    @field_validator("region_class")
    @classmethod
    def check_region_class(cls, value: str | None) -> str | None:
        if value is not None and value not in taxonomy.HIGH_LEVEL_CLASSES:
            raise ValueError(f"unknown region_class {value!r}; choose from {', '.join(taxonomy.HIGH_LEVEL_CLASSES)}")
        return value

    @field_validator("region")
    @classmethod
    def check_region_shape(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if len(value) != 4:
            raise ValueError(f"region must be [x1, y1, x2, y2], got {len(value)} numbers")
        x1, y1, x2, y2 = value
        if not (x2 > x1 and y2 > y1):
            raise ValueError("region must have x2 > x1 and y2 > y1")
        return value

    @model_validator(mode="after")
    def check_region_class_needs_region(self) -> "SearchOptions":
        if self.region_class is not None and self.region is None:
            raise ValueError("region_class is given without a region")
        return self


class BadRegion(ValueError):
    """The requested region lies outside the photo, or its class cannot be determined."""


@dataclass
class Item:
    box: np.ndarray
    label: str
    score: float
    person: int | None = None
    genders: tuple[str, ...] = SEARCHABLE_GENDERS + ("unisex",)
    gender_source: str = "none"
    classification: dict[str, Any] | None = None
    embedding: np.ndarray | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None


@dataclass
class SearchContext:
    settings: GatewaySettings
    downstream: Downstream
    index: IndexMetadata
    timings: dict[str, float] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)

    def degrade(self, error: DownstreamError) -> None:
        log.warning("degraded: %s", error)
        if error.service not in self.degraded:
            self.degraded.append(error.service)


async def run_search(context: SearchContext, image: Image.Image, options: SearchOptions) -> dict[str, Any]:
    settings = context.settings
    with stage_timer(SERVICE, "detect", context.timings):
        detection = await detect_photo(context, image)
    context.versions.update(detection.get("model_versions", {}))

    items = select_items(detection, image, options, settings)
    persons = detection.get("persons", [])
    assign_wearers(items, persons, options, settings)

    with stage_timer(SERVICE, "classify", context.timings):
        await classify_items(context, image, items)
    with stage_timer(SERVICE, "search", context.timings):
        await search_items(context, items, options.results_per_item or settings.default_results_per_item)

    return {
        "image": {"width": image.width, "height": image.height},
        "persons": [
            {"box": p["box"], "score": p["score"], "wearer": p.get("wearer", {})} for p in persons
        ],
        "items": [describe_item(item, context.index) for item in items],
    }


async def detect_photo(context: SearchContext, image: Image.Image) -> dict[str, Any]:
    """Detect items and people, sending the detector the photo already scaled
    to its input size: a 550x825 photo travels as 0.3 MB instead of 1.4 MB.
    The network input is the same, except that for some aspect ratios the
    grey padding moves by one pixel. Boxes come back in the original photo's
    pixels."""
    info = await context.downstream.detector_info(context.settings.detector_url)
    sent = shrink_to_fit(image, int(info["input_width"]), int(info["input_height"]))
    detection = await context.downstream.detect(context.settings.detector_url, np.asarray(sent))
    scale = np.array([image.width / sent.width, image.height / sent.height] * 2, np.float32)
    limits = np.array([image.width, image.height] * 2, np.float32)

    def in_photo_pixels(entry: dict[str, Any]) -> dict[str, Any]:
        box = np.minimum(np.asarray(entry["box"], np.float32) * scale, limits)
        return {**entry, "box": [round(float(v), 1) for v in box]}

    # Build a new detection instead of editing the received one, because the
    # in-process pipeline returns the same cached detection for every search of a photo.
    return {
        **detection,
        "width": image.width,
        "height": image.height,
        "items": [in_photo_pixels(entry) for entry in detection.get("items", [])],
        "persons": [in_photo_pixels(entry) for entry in detection.get("persons", [])],
    }


def select_items(detection: dict[str, Any], image: Image.Image, options: SearchOptions, settings: GatewaySettings) -> list[Item]:
    """Choose the items to search: the client's region, or the best detections."""
    detected = [Item(np.asarray(d["box"], np.float32), d["label"], float(d["score"])) for d in detection.get("items", [])]
    if options.region is not None:
        return [region_item(options, detected, image)]
    items = [d for d in detected if d.score >= settings.min_item_score]
    if options.classes:
        items = [d for d in items if d.label in options.classes]
    items.sort(key=lambda d: -d.score)
    items = suppress_overlapping_classes(items, settings.cross_class_iou)
    items = suppress_nested_same_class(items)
    return items[: options.max_items or settings.default_max_items]


def suppress_nested_same_class(items: list[Item], share: float = 0.8) -> list[Item]:
    """Drop an item lying mostly inside a higher-scoring item of its class:
    per-class NMS keeps a small box nested in a large one (their IoU is low),
    which would search the same garment twice."""
    kept: list[Item] = []
    for item in items:  # best first
        area = max(float(box_area(item.box[None])[0]), 1e-6)
        nested = False
        for better in kept:
            if better.label != item.label:
                continue
            inter = np.clip(np.minimum(item.box[2:], better.box[2:]) - np.maximum(item.box[:2], better.box[:2]), 0, None).prod()
            if inter / area >= share:
                nested = True
                break
        if not nested:
            kept.append(item)
    return kept


def suppress_overlapping_classes(items: list[Item], iou_threshold: float) -> list[Item]:
    """Keep one class per region: the detector's NMS runs per class, so one
    garment can come back as both a top (0.7) and a suit (0.4)."""
    if len(items) < 2:
        return items
    boxes = np.stack([item.box for item in items])
    keep = nms(boxes, np.array([item.score for item in items], np.float32), iou_threshold)
    return [items[i] for i in sorted(keep)]


def region_item(options: SearchOptions, detected: list[Item], image: Image.Image) -> Item:
    x1, y1, x2, y2 = options.region  # type: ignore[misc]
    if x1 < 0 or y1 < 0 or x2 > image.width or y2 > image.height:
        raise BadRegion(
            f"region {options.region} reaches outside the {image.width}x{image.height} photo; "
            f"it needs 0 <= x1 < x2 <= {image.width} and 0 <= y1 < y2 <= {image.height}"
        )
    box = np.asarray(options.region, np.float32)
    if options.region_class:
        return Item(box, options.region_class, 1.0)
    # The region takes the class of the detection it covers most of.
    best, best_share = None, 0.5
    for candidate in detected:
        inter = np.clip(np.minimum(box[2:], candidate.box[2:]) - np.maximum(box[:2], candidate.box[:2]), 0, None).prod()
        share = inter / max(float(box_area(candidate.box[None])[0]), 1e-6)
        if share > best_share:
            best, best_share = candidate, share
    if best is None:
        raise BadRegion("no detected item lies mostly inside the region; pass region_class to name its class")
    return Item(box, best.label, best.score)


def assign_wearers(items: list[Item], persons: list[dict], options: SearchOptions, settings: GatewaySettings) -> None:
    """Give each item the person whose box contains most of it, and that person's gender."""
    person_boxes = np.asarray([p["box"] for p in persons], np.float32).reshape(-1, 4)
    for item in items:
        if len(person_boxes):
            inter_wh = np.clip(np.minimum(item.box[2:], person_boxes[:, 2:]) - np.maximum(item.box[:2], person_boxes[:, :2]), 0, None)
            share = inter_wh.prod(axis=1) / max(float(box_area(item.box[None])[0]), 1e-6)
            best = int(np.argmax(share))
            if share[best] >= 0.5:
                item.person = best
        if options.gender:
            item.genders, item.gender_source = (options.gender, "unisex"), "request"
        elif item.person is not None:
            wearer = persons[item.person].get("wearer") or {}
            if wearer:
                name, probability = max(wearer.items(), key=lambda pair: pair[1])
                if probability >= settings.wearer_min_probability:
                    item.genders, item.gender_source = (taxonomy.WEARER_TO_GENDER[name], "unisex"), "wearer"


async def classify_items(context: SearchContext, image: Image.Image, items: list[Item]) -> None:
    """Crop every item and send each category's crops to its classifier in one batch."""
    by_category: dict[str, list[Item]] = {}
    for item in items:
        if item.label not in context.settings.classifier_urls:
            item.note = f"no classifier serves class {item.label}, so it is not searched"
            continue
        by_category.setdefault(item.label, []).append(item)

    async def classify_category(category: str, members: list[Item]) -> None:
        url = context.settings.classifier_urls[category]
        try:
            info = await context.downstream.info(category, url)
            size = int(info["input_size"])
            crops = np.stack([
                square_crop(image, expand_box(m.box, context.settings.crop_margin, image.width, image.height), size) for m in members
            ])
            answer = await context.downstream.classify(category, url, crops)
            check_model_version(category, answer.get("model_version"), context.index)
        except DownstreamError as error:
            context.degrade(error)
            for member in members:
                member.note = f"classifier for {category} unavailable"
            return
        context.versions.setdefault("classifiers", {})[category] = answer.get("model_version")
        for member, result in zip(members, answer["results"]):
            member.classification = result
            member.embedding = decode_vector(result["embedding"])

    await asyncio.gather(*(classify_category(c, m) for c, m in by_category.items()))


def check_model_version(category: str, served: str | None, index: IndexMetadata) -> None:
    """Raise ``DownstreamError`` when the classifier serves another model than
    the one that embedded the category's products, because distances between
    two models' embeddings mean little. This happens while a new model rolls
    out before the catalog is indexed again."""
    expected = index.model_version_of(category)
    if expected is not None and served != expected:
        raise DownstreamError(
            f"classifier:{category}",
            f"serves model version {served}, but the index was built with {expected}; index the catalog with the served models",
        )


def keys_for_item(item: Item, index: IndexMetadata, settings: GatewaySettings) -> list[str]:
    """Index keys of the item's top fine classes for its genders.

    The best fine class is always searched, the next ones while they clear the
    probability floor. The fine class is trusted over the gender: when the
    catalog has no index of those classes for the item's genders (a skirt on a
    wearer taken for a man), they are searched for every gender. Only when no
    gender has them are lower-ranked fine classes tried, in order.
    """
    fine_classes = item.classification["fine_classes"] if item.classification else []
    all_genders = SEARCHABLE_GENDERS + ("unisex",)

    def existing_keys(fines: list[str], genders: tuple[str, ...]) -> list[str]:
        keys = (f"{item.label}/{fine}/{gender}" for fine in fines for gender in genders)
        return [key for key in keys if index.has_key(key)]

    chosen = [
        candidate["name"] for rank, candidate in enumerate(fine_classes[: settings.top_fine_classes])
        if rank == 0 or candidate["probability"] >= settings.fine_class_floor
    ]
    keys = existing_keys(chosen, item.genders) or existing_keys(chosen, all_genders)
    if keys:
        return keys
    for candidate in fine_classes[len(chosen):]:
        keys = existing_keys([candidate["name"]], item.genders) or existing_keys([candidate["name"]], all_genders)
        if keys:
            return keys
    return []


async def search_items(context: SearchContext, items: list[Item], results_per_item: int) -> None:
    """Query every shard once with all the crops that need it, then merge per item."""
    settings, index = context.settings, context.index
    # Extra candidates survive the removal of duplicate products.
    k = min(results_per_item + 10, 100)
    per_shard: dict[str, list[tuple[int, list[str]]]] = {}
    for position, item in enumerate(items):
        if item.embedding is None:
            continue
        keys = keys_for_item(item, index, settings)
        if not keys:
            item.note = item.note or "no catalog index covers this item's classes and gender"
        for key in keys:
            shard = index.shard_of(key)
            entries = per_shard.setdefault(shard, [])
            if entries and entries[-1][0] == position:
                entries[-1][1].append(key)
            else:
                entries.append((position, [key]))

    hits_by_item: dict[int, list[dict]] = {}

    async def query_shard(shard: str, entries: list[tuple[int, list[str]]]) -> None:
        url = settings.shard_urls.get(shard)
        if url is None:
            context.degrade(DownstreamError(f"shard:{shard}", "no URL configured for this shard"))
            return
        queries = [(items[position].embedding, keys, k) for position, keys in entries]
        try:
            results = await context.downstream.search_shard(shard, url, queries)
        except DownstreamError as error:
            context.degrade(error)
            return
        for (position, _), hits in zip(entries, results):
            hits_by_item.setdefault(position, []).extend(hits)

    await asyncio.gather(*(query_shard(s, e) for s, e in per_shard.items()))

    with stage_timer(SERVICE, "merge", context.timings):
        for position, hits in hits_by_item.items():
            items[position].results = merge_hits(hits, index, results_per_item)


def merge_hits(hits: list[dict], index: IndexMetadata, limit: int) -> list[dict]:
    """Sort by distance and drop repeated products: the same id, or the same
    title (the catalog lists some products several times under new ids, with
    photos too different for the indexer's near-duplicate removal)."""
    merged, seen_ids, seen_titles = [], set(), set()
    for hit in sorted(hits, key=lambda h: h["distance"]):
        product = index.products.get(str(hit["product_id"]))
        if product is None or hit["product_id"] in seen_ids:
            continue
        title_key = " ".join(str(product.get("title") or hit["product_id"]).lower().split())
        if title_key in seen_titles:
            continue
        seen_ids.add(hit["product_id"])
        seen_titles.add(title_key)
        merged.append({
            "product_id": str(hit["product_id"]),
            "title": product.get("title"),
            "product_type": product.get("product_type"),
            "fine_class": product.get("fine_class"),
            "colour": product.get("colour"),
            "gender": product.get("gender"),
            "distance": round(float(hit["distance"]), 5),
            "image_url": f"/products/{hit['product_id']}/image",
        })
        if len(merged) == limit:
            break
    return merged


def describe_item(item: Item, index: IndexMetadata) -> dict[str, Any]:
    classification = item.classification or {}
    described: dict[str, Any] = {
        "box": [round(float(v), 1) for v in item.box],
        "class": item.label,
        "score": round(item.score, 4),
        "person": item.person,
        "genders_searched": list(item.genders),
        "gender_source": item.gender_source,
        "fine_classes": classification.get("fine_classes", [])[:3],
        "attributes": classification.get("attributes", {}),
        "results": item.results,
    }
    if item.note:
        described["note"] = item.note
    return described
