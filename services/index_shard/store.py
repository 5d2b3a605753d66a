"""Loading and searching the indices of one shard.

Loading checks every index against ``routing.json`` and raises
``ShardLoadError`` on any disagreement: a shard that served an index built by
another model version would return plausible but wrong products, so it must
not start.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from shared.routing import INDEX_SPACE, RoutingError, read_routing, sidecar_path

log = logging.getLogger("services.index_shard.store")


class ShardLoadError(RuntimeError):
    """The shard cannot serve: missing or inconsistent routing, sidecar or index file."""


@dataclass
class LoadedIndex:
    key: str
    index: hnswlib.Index
    ids: list[str]
    dimension: int
    model_version: str

    @property
    def count(self) -> int:
        return len(self.ids)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Return up to k (product id, cosine distance) pairs, nearest first."""
        available = min(k, self.count)
        if available == 0:
            return []
        # hnswlib searches with max(ef, k) candidates, so ef never limits k.
        labels, distances = self.index.knn_query(vector[None, :], k=available)
        return [(self.ids[label], float(distance)) for label, distance in zip(labels[0], distances[0])]


def load_index(index_dir: Path, key: str, route, ef: int) -> LoadedIndex:
    """Load one key's index after checking its sidecar against the routing entry."""
    path = index_dir / route.file
    sidecar_file = sidecar_path(path)
    if not path.is_file():
        raise ShardLoadError(f"index file {path} of key {key} not found")
    if not sidecar_file.is_file():
        raise ShardLoadError(f"sidecar {sidecar_file} of key {key} not found")
    try:
        sidecar = json.loads(sidecar_file.read_text(encoding="utf-8"))
        dimension, model_version, ids = int(sidecar["dimension"]), str(sidecar["model_version"]), list(map(str, sidecar["ids"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ShardLoadError(f"sidecar {sidecar_file} of key {key} is invalid: {error!r}") from error
    if sidecar.get("key") != key:
        raise ShardLoadError(f"sidecar {sidecar_file} is for key {sidecar.get('key')!r}, but routing.json names it for {key!r}")
    if dimension != route.dimension:
        raise ShardLoadError(f"key {key}: sidecar {sidecar_file} has dimension {dimension} but routing.json has {route.dimension}")
    if model_version != route.model_version:
        raise ShardLoadError(f"key {key}: sidecar {sidecar_file} has model version {model_version} but routing.json has {route.model_version}")
    if len(ids) != route.count:
        raise ShardLoadError(f"key {key}: sidecar {sidecar_file} lists {len(ids)} ids but routing.json has count {route.count}")

    index = hnswlib.Index(space=INDEX_SPACE, dim=dimension)
    try:
        index.load_index(str(path), max_elements=0)
    except RuntimeError as error:
        # hnswlib names no file in its message ("Index seems to be corrupted").
        raise ShardLoadError(f"index file {path} of key {key} cannot be loaded (truncated or corrupt?): {error}") from error
    if index.get_current_count() != len(ids):
        raise ShardLoadError(f"index file {path} contains {index.get_current_count()} vectors but its sidecar lists {len(ids)} ids")
    if index.dim != dimension:
        raise ShardLoadError(f"index file {path} has dimension {index.dim} but its sidecar has {dimension}")
    index.set_num_threads(1)
    index.set_ef(ef)
    return LoadedIndex(key, index, ids, dimension, model_version)


def load_shard(index_dir: Path, name: str, ef: int) -> dict[str, LoadedIndex]:
    """Load, check and warm every index routing.json assigns to shard ``name``."""
    index_dir = Path(index_dir)
    try:
        routing = read_routing(index_dir)
    except RoutingError as error:
        raise ShardLoadError(str(error)) from error
    routes = routing.keys_of(name)
    if not routes:
        raise ShardLoadError(f"routing.json in {index_dir} assigns no key to shard {name!r}; its shards are {routing.shards}")
    loaded = {}
    for key, route in sorted(routes.items()):
        loaded[key] = load_index(index_dir, key, route, ef)
        log.info("loaded %s: %d vectors of dimension %d, model %s", key, loaded[key].count, loaded[key].dimension, loaded[key].model_version)
    # Warm-up: the first query of each index touches its memory pages.
    for index in loaded.values():
        index.search(np.ones(index.dimension, dtype=np.float32), 1)
    return loaded


def search_all(checked: list[tuple[np.ndarray, list[str], int]], indices: dict[str, LoadedIndex]) -> list[dict]:
    """Search every (vector, keys, k) query; return per query the hits of all its keys, nearest first."""
    results = []
    for vector, keys, k in checked:
        hits = [
            {"product_id": product_id, "distance": distance, "key": key}
            for key in keys
            for product_id, distance in indices[key].search(vector, k)
        ]
        hits.sort(key=lambda hit: hit["distance"])
        results.append({"hits": hits[:k]})
    return results
