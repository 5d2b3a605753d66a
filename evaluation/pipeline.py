"""The search pipeline in one process: the gateway's own search code
(``services.gateway.search.run_search``) with its downstream calls served by
models and indices loaded here instead of by HTTP services.

Each downstream method calls the function its service calls (``analyse_photo``,
``describe_crops``, ``search_all``), so this pipeline and the fleet differ only
in transport, which lets the evaluation check that POST /search returns the
same products.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.classifier.results import describe_crops
from services.detector.analysis import analyse_photo, describe_models
from services.gateway.catalog import IndexMetadata, load_index_metadata
from services.gateway.search import SearchContext, SearchOptions, run_search
from services.gateway.settings import GatewaySettings
from services.index_shard.store import LoadedIndex, load_shard, search_all
from shared.inference import Classifier, Detector
from shared.routing import read_routing

# Never dialled: the gateway code needs a URL per classifier and shard to know
# which exist, and this pipeline serves them in-process.
_PLACEHOLDER_URL = "http://in-process"


class InProcessDownstream:
    """The gateway's ``Downstream`` interface over local models and indices."""

    def __init__(self, detector: Detector, wearer: Classifier, classifiers: dict[str, Classifier],
                 shards: dict[str, dict[str, LoadedIndex]], person_margin: float = 0.0, cache_detections: bool = True):
        self.detector = detector
        self.wearer = wearer
        self.classifiers = classifiers
        self.shards = shards
        self.person_margin = person_margin
        # A photo is detected once, however many region searches it serves.
        # A benchmark turns this off, so that every search pays for detection.
        self.cache_detections = cache_detections
        self._detections: dict[str, dict[str, Any]] = {}

    async def detect(self, base_url: str, pixels: np.ndarray) -> dict[str, Any]:
        if not self.cache_detections:
            return analyse_photo(self.detector, self.wearer, Image.fromarray(pixels), None, self.person_margin)
        digest = hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest() + str(pixels.shape)
        if digest not in self._detections:
            if len(self._detections) > 64:
                self._detections.clear()
            image = Image.fromarray(pixels)
            self._detections[digest] = analyse_photo(self.detector, self.wearer, image, None, self.person_margin)
        return self._detections[digest]

    async def detector_info(self, base_url: str) -> dict[str, Any]:
        return describe_models(self.detector, self.wearer)

    async def info(self, category: str, base_url: str) -> dict[str, Any]:
        model = self.classifiers[category]
        return {"category": category, "input_size": model.input_size, "model_version": model.version}

    async def classify(self, category: str, base_url: str, crops: np.ndarray) -> dict[str, Any]:
        model = self.classifiers[category]
        return {"model_version": model.version, "results": describe_crops(model, model.run(crops))}

    async def search_shard(self, shard: str, base_url: str, queries: list[tuple[np.ndarray, list[str], int]]) -> list[list[dict]]:
        checked = [(vector, list(dict.fromkeys(keys)), k) for vector, keys, k in queries]
        return [result["hits"] for result in search_all(checked, self.shards[shard])]


class Pipeline:
    """Models, indices and gateway settings for searching photos in-process."""

    def __init__(self, models: Path, index_dir: Path, threads: int = 2, ef: int = 64, cache_detections: bool = True,
                 **setting_overrides: Any):
        routing = read_routing(index_dir)
        self.index: IndexMetadata = load_index_metadata(index_dir)
        categories = sorted({key.split("/")[0] for key in routing.keys})
        self.detector = Detector(models / "detector", threads)
        self.wearer = Classifier(models / "wearer", threads)
        self.classifiers = {category: Classifier(models / "classifiers" / category, threads) for category in categories}
        self.shards = {name: load_shard(index_dir, name, ef) for name in routing.shards}
        self.downstream = InProcessDownstream(self.detector, self.wearer, self.classifiers, self.shards,
                                               cache_detections=cache_detections)
        self.settings = self.make_settings(**setting_overrides)

    def make_settings(self, **overrides: Any) -> GatewaySettings:
        """Gateway settings with every loaded classifier and shard reachable in-process."""
        return GatewaySettings(
            classifier_urls={category: f"{_PLACEHOLDER_URL}/{category}" for category in self.classifiers},
            shard_urls={name: f"{_PLACEHOLDER_URL}/{name}" for name in self.shards},
            redis_url=None,
            **overrides,
        )

    def search(self, image: Image.Image, options: SearchOptions, settings: GatewaySettings | None = None) -> dict[str, Any]:
        """Run one search exactly as the gateway does; returns its answer's body."""
        context = SearchContext(settings or self.settings, self.downstream, self.index)  # type: ignore[arg-type]
        answer = asyncio.run(run_search(context, image, options))
        answer["degraded"] = context.degraded
        return answer
