"""Ranking options measured on the same queries: how many fine classes to
search, re-ranking with the colour task's 128-D features, and HNSW against
exact search on the same indices."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from evaluation.pipeline import Pipeline
from evaluation.retrieval import Query, QueryOutcome, describe_results, load_photo, photo_queries, summarise
from services.gateway.search import SearchOptions
from shared import datasets
from shared.boxes import expand_box
from shared.imaging import square_crop

log = logging.getLogger(__name__)

TASK_FEATURE_SIZE = 128
COLOUR_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
CANDIDATES = 30


def colour_slice(tasks: dict[str, list[str]]) -> slice:
    """Return where the colour task's 128-D feature lies in ``task_features``."""
    position = list(tasks).index("colour")
    return slice(position * TASK_FEATURE_SIZE, (position + 1) * TASK_FEATURE_SIZE)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


class ColourFeatures:
    """Colour task features of catalog products, computed once per product
    from its photo and the box the indexer stored."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.cache: dict[str, np.ndarray] = {}

    def of_products(self, product_ids: list[str], high_level: str) -> np.ndarray:
        missing = [pid for pid in product_ids if pid not in self.cache]
        if missing:
            model = self.pipeline.classifiers[high_level]
            crops = []
            for product_id in missing:
                record = self.pipeline.index.products[product_id]
                image = Image.open(record["image_path"]).convert("RGB")
                crops.append(model.crop(image, np.asarray(record["box"], np.float32)))
            features = model.run(np.stack(crops)).task_features[:, colour_slice(model.tasks)]
            for product_id, feature in zip(missing, _unit(features)):
                self.cache[product_id] = feature
        return np.stack([self.cache[pid] for pid in product_ids])

    def of_query(self, image: Image.Image, query: Query) -> np.ndarray:
        model = self.pipeline.classifiers[query.high_level]
        margin = self.pipeline.settings.crop_margin
        crop = square_crop(image, expand_box(query.box, margin, image.width, image.height), model.input_size)
        return _unit(model.run(crop[None]).task_features[0, colour_slice(model.tasks)])


def colour_reranking(pipeline: Pipeline, photos: list[datasets.StreetPhoto]) -> dict[str, Any]:
    """Re-rank the top 30 candidates of each ground-truth query by embedding
    distance + w * colour-feature cosine distance, for several w."""
    features = ColourFeatures(pipeline)
    outcomes: dict[float, list[QueryOutcome]] = {w: [] for w in COLOUR_WEIGHTS}
    for photo in tqdm(photos, desc="colour re-ranking", unit="photo", mininterval=10):
        image = load_photo(photo.path)
        for query in photo_queries(photo, np.asarray(image)):
            options = SearchOptions(region=[float(v) for v in query.box], region_class=query.high_level, results_per_item=CANDIDATES)
            results = pipeline.search(image, options)["items"][0]["results"]
            if not results:
                for weight in COLOUR_WEIGHTS:
                    outcomes[weight].append(QueryOutcome(query, []))
                continue
            distances = np.array([r["distance"] for r in results], np.float32)
            product_colours = features.of_products([r["product_id"] for r in results], query.high_level)
            colour_distances = 1.0 - product_colours @ features.of_query(image, query)
            for weight in COLOUR_WEIGHTS:
                order = np.argsort(distances + weight * colour_distances, kind="stable")[:10]
                outcomes[weight].append(QueryOutcome(query, describe_results([results[i] for i in order])))
    return {f"{weight:g}": summarise(found) for weight, found in outcomes.items()}


def hnsw_recall(pipeline: Pipeline, photos: list[datasets.StreetPhoto], k: int = 10) -> dict[str, Any]:
    """Recall@k of the served HNSW indices against exact search over the same
    vectors, for each ground-truth query in every index of its class that
    contains more than k products."""
    exact_vectors: dict[str, np.ndarray] = {}
    recalls = []
    for photo in tqdm(photos, desc="HNSW recall", unit="photo", mininterval=10):
        image = load_photo(photo.path)
        for query in photo_queries(photo, np.asarray(image)):
            if query.high_level not in pipeline.classifiers:
                continue
            model = pipeline.classifiers[query.high_level]
            margin = pipeline.settings.crop_margin
            crop = square_crop(image, expand_box(query.box, margin, image.width, image.height), model.input_size)
            vector = _unit(model.run(crop[None]).embeddings[0])
            for shard in pipeline.shards.values():
                for key, loaded in shard.items():
                    if not key.startswith(query.high_level + "/") or loaded.count <= k:
                        continue
                    if key not in exact_vectors:
                        exact_vectors[key] = _unit(np.asarray(loaded.index.get_items(list(range(loaded.count))), np.float32))
                    exact = set(np.argsort(1.0 - exact_vectors[key] @ vector, kind="stable")[:k].tolist())
                    labels, _ = loaded.index.knn_query(vector[None], k=k)
                    recalls.append(len(exact & set(labels[0].tolist())) / k)
    return {"recall_at_10": float(np.mean(recalls)) if recalls else None, "pairs": len(recalls),
            "ef": int(next(iter(next(iter(pipeline.shards.values())).values())).index.ef) if pipeline.shards else None}
