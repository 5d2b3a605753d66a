"""Classifier service throughput: one batch per photo against one request per
crop, and two single-threaded replicas against one process with two threads.

Crops are real: ground-truth boxes of top-class items in held-out street
photos, cut as the gateway cuts them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.fleet_bench import percentiles
from shared import datasets
from shared.boxes import expand_box
from shared.imaging import square_crop
from shared.inference import Classifier
from shared.processes import Fleet
from shared.wire import CROP_SIZE_HEADER, RAW_CONTENT_TYPE

log = logging.getLogger(__name__)

CATEGORY = "top"
CROPS_PER_PHOTO = 4


def real_crops(photos: list[datasets.StreetPhoto], size: int, count: int) -> np.ndarray:
    """Cut up to ``count`` crops of street items (any class), as the gateway does."""
    crops = []
    for photo in photos:
        image = Image.open(photo.path).convert("RGB")
        for item in photo.items:
            if item.high_level != "person":
                crops.append(square_crop(image, expand_box(item.box, 0.08, image.width, image.height), size))
            if len(crops) == count:
                return np.stack(crops)
    return np.stack(crops)


def _body(crops: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return np.ascontiguousarray(crops).tobytes(), {"content-type": RAW_CONTENT_TYPE, CROP_SIZE_HEADER: str(crops.shape[1])}


def batch_versus_single(url: str, model: Classifier, groups: list[np.ndarray], rounds: int = 3) -> dict[str, Any]:
    """Time each group of crops sent as one request and as one request per crop,
    through the service and in-process; the best of ``rounds`` counts."""
    timings = {"service_batch": [], "service_single": [], "model_batch": [], "model_single": []}
    with httpx.Client(timeout=30) as client:
        for group in groups[:2]:  # warm-up
            client.post(f"{url}/classify", content=_body(group)[0], headers=_body(group)[1])
        for _ in range(rounds):
            started = time.perf_counter()
            for group in groups:
                body, headers = _body(group)
                client.post(f"{url}/classify", content=body, headers=headers).raise_for_status()
            timings["service_batch"].append(time.perf_counter() - started)
            started = time.perf_counter()
            for group in groups:
                for crop in group:
                    body, headers = _body(crop[None])
                    client.post(f"{url}/classify", content=body, headers=headers).raise_for_status()
            timings["service_single"].append(time.perf_counter() - started)
    for _ in range(rounds):
        started = time.perf_counter()
        for group in groups:
            model.run(group)
        timings["model_batch"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for group in groups:
            for crop in group:
                model.run(crop[None])
        timings["model_single"].append(time.perf_counter() - started)
    crops = sum(len(group) for group in groups)
    best = {name: min(values) for name, values in timings.items()}
    return {
        "crops": crops,
        "crops_per_request": CROPS_PER_PHOTO,
        "ms_per_crop": {name: seconds / crops * 1000 for name, seconds in best.items()},
        "batch_speedup": best["service_single"] / best["service_batch"],
        "model_batch_speedup": best["model_single"] / best["model_batch"],
    }


async def _drive(urls: list[str], groups: list[np.ndarray], concurrency: int, requests: int) -> dict[str, Any]:
    """Send ``requests`` batches from ``concurrency`` clients, spread round-robin over ``urls``."""
    latencies: list[float] = []
    numbers = iter(range(requests))
    targets = itertools.cycle(urls)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for number in numbers:
            body, headers = _body(groups[number % len(groups)])
            started = time.perf_counter()
            response = await client.post(f"{next(targets)}/classify", content=body, headers=headers)
            response.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)

    async with httpx.AsyncClient(timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"latency_ms": percentiles(latencies), "requests_per_second": requests / wall,
            "crops_per_second": requests * CROPS_PER_PHOTO / wall}


def start_classifiers(fleet: Fleet, models: Path, names_and_threads: list[tuple[str, int]], extra_env: dict[str, str]) -> list[str]:
    for name, threads in names_and_threads:
        fleet.add(name, "services.classifier.app:app", {
            "CLASSIFIER_CATEGORY": CATEGORY, "CLASSIFIER_MODELS_DIR": str(models / "classifiers"),
            "CLASSIFIER_THREADS": str(threads), **extra_env,
        })
        fleet.start(name, wait=False)
    for name, _ in names_and_threads:
        fleet.wait_ready(name)
    return [fleet.services[name].url for name, _ in names_and_threads]


def run_classifier_bench(models: Path, photos: list[datasets.StreetPhoto], groups_count: int = 30,
                         concurrency: int = 4, requests: int = 200, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    extra_env = extra_env or {}
    model = Classifier(models / "classifiers" / CATEGORY, threads=1)
    crops = real_crops(photos, model.input_size, groups_count * CROPS_PER_PHOTO)
    groups = [crops[i : i + CROPS_PER_PHOTO] for i in range(0, len(crops) - CROPS_PER_PHOTO + 1, CROPS_PER_PHOTO)]
    result: dict[str, Any] = {"category": CATEGORY}

    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as log_dir:
        fleet = Fleet(Path(log_dir))
        try:
            [url] = start_classifiers(fleet, models, [("one-thread", 1)], extra_env)
            result["batching"] = batch_versus_single(url, model, groups)
            log.info("batch speedup through the service %.2f, in-process %.2f",
                     result["batching"]["batch_speedup"], result["batching"]["model_batch_speedup"])
            fleet.stop_all()

            [url] = start_classifiers(fleet, models, [("two-threads", 2)], extra_env)
            asyncio.run(_drive([url], groups, concurrency, 10))
            one_process = asyncio.run(_drive([url], groups, concurrency, requests))
            fleet.stop_all()

            urls = start_classifiers(fleet, models, [("replica-a", 1), ("replica-b", 1)], extra_env)
            asyncio.run(_drive(urls, groups, concurrency, 10))
            replicas = asyncio.run(_drive(urls, groups, concurrency, requests))
        finally:
            fleet.stop_all()
    result["replicas"] = {
        "concurrency": concurrency,
        "one_process_two_threads": one_process,
        "two_processes_one_thread": replicas,
        "replicas_vs_threads_throughput": replicas["crops_per_second"] / one_process["crops_per_second"],
    }
    log.info("two replicas %.0f crops/s, one process with two threads %.0f crops/s",
             replicas["crops_per_second"], one_process["crops_per_second"])
    return result
