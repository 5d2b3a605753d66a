"""Latency and throughput of POST /search through a running fleet, next to
the same models and indices called in one process, and where the time goes.

- closed loop at several concurrencies: each of C clients sends its next
  photo as soon as the response to its previous one arrives;
- open loop at a fixed rate (70% of the best closed-loop throughput):
  requests start on a schedule whatever the responses do, which is how load
  from many users behaves and what shows queueing in the tail;
- time per stage, read from every service's own ``apparel_stage_seconds``
  histogram before and after the concurrency-1 run.

The gateway's response cache is off (``GATEWAY_CACHE_TTL_SECONDS=0``) so every
request is computed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from evaluation.pipeline import Pipeline
from evaluation.retrieval import load_photo
from services.gateway.search import SearchOptions
from shared.imagecodec import decode_image

log = logging.getLogger(__name__)

STAGE_LINE = re.compile(r'^apparel_stage_seconds_(sum|count)\{service="([^"]+)",stage="([^"]+)"\} ([0-9.e+-]+)$')


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = np.asarray(sorted(values), np.float64)
    return {
        "p50": float(np.percentile(ordered, 50)),
        "p95": float(np.percentile(ordered, 95)),
        "p99": float(np.percentile(ordered, 99)),
        "mean": float(ordered.mean()),
    }


def check_answer(response: httpx.Response) -> None:
    """Raise when a search failed or came back degraded, because it would time less work."""
    response.raise_for_status()
    degraded = response.json().get("degraded")
    if degraded:
        raise RuntimeError(f"the gateway returned a degraded response: {degraded}")


async def _post(client: httpx.AsyncClient, gateway: str, data: bytes) -> float:
    started = time.perf_counter()
    response = await client.post(f"{gateway}/search", content=data, headers={"content-type": "image/jpeg"})
    elapsed = (time.perf_counter() - started) * 1000
    check_answer(response)
    return elapsed


async def closed_loop(gateway: str, photos: list[bytes], concurrency: int, requests: int) -> dict[str, Any]:
    """Send ``requests`` searches from ``concurrency`` clients, each waiting for
    its response before sending the next; returns latency percentiles and throughput."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for number in counter:
            latencies.append(await _post(client, gateway, photos[number % len(photos)]))

    async with httpx.AsyncClient(timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": requests, "latency_ms": percentiles(latencies),
            "throughput_per_second": requests / wall}


async def open_loop(gateway: str, photos: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Start searches at a fixed ``rate`` per second for ``seconds``; latency
    includes any time a request waits behind earlier ones."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        started = time.perf_counter()

        async def scheduled(number: int) -> None:
            await asyncio.sleep(max(0.0, started + number / rate - time.perf_counter()))
            latencies.append(await _post(client, gateway, photos[number % len(photos)]))

        await asyncio.gather(*(scheduled(n) for n in range(total)))
        wall = time.perf_counter() - started
    return {"rate_per_second": rate, "requests": total, "latency_ms": percentiles(latencies),
            "achieved_per_second": total / wall}


def read_stage_totals(client: httpx.Client, urls: dict[str, str]) -> dict[tuple[str, str], list[float]]:
    """Return (service, stage) -> [seconds sum, count] over every service's /metrics."""
    totals: dict[tuple[str, str], list[float]] = {}
    for url in urls.values():
        for line in client.get(f"{url}/metrics").text.splitlines():
            match = STAGE_LINE.match(line)
            if match:
                kind, service, stage, value = match.groups()
                entry = totals.setdefault((service, stage), [0.0, 0.0])
                entry[0 if kind == "sum" else 1] += float(value)
    return totals


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """Mean milliseconds per call of each (service, stage) between two readings."""
    means = {}
    for key, (seconds, count) in after.items():
        earlier_seconds, earlier_count = before.get(key, [0.0, 0.0])
        if count > earlier_count:
            means[f"{key[0]}.{key[1]}"] = (seconds - earlier_seconds) / (count - earlier_count) * 1000
    return dict(sorted(means.items()))


def _timed_in_process(pipeline: Pipeline, data: bytes) -> float:
    started = time.perf_counter()
    image = decode_image(data, 50 * 1024 * 1024, 60_000_000, 8)
    pipeline.search(image, SearchOptions())
    return (time.perf_counter() - started) * 1000


def _timed_fleet(client: httpx.Client, gateway: str, data: bytes) -> float:
    started = time.perf_counter()
    response = client.post(f"{gateway}/search", content=data, headers={"content-type": "image/jpeg"})
    elapsed = (time.perf_counter() - started) * 1000
    check_answer(response)
    return elapsed


def side_by_side(gateway: str, pipeline: Pipeline, photos: list[bytes], rounds: int = 2) -> dict[str, Any]:
    """Search each photo in-process (decode included) and through the fleet,
    one search at a time, alternating photo by photo.

    Alternating keeps the two series under the same background load: on this
    shared 2-core machine the fleet's p50 moved by up to a quarter between two
    passes a minute apart, more than the gap being measured. Which side goes
    first alternates too.
    """
    in_process: list[float] = []
    fleet: list[float] = []
    with httpx.Client(timeout=60) as client:
        for number, data in enumerate(photos * rounds):
            if number % 2:
                fleet.append(_timed_fleet(client, gateway, data))
                in_process.append(_timed_in_process(pipeline, data))
            else:
                in_process.append(_timed_in_process(pipeline, data))
                fleet.append(_timed_fleet(client, gateway, data))
    in_process_p50, fleet_p50 = percentiles(in_process)["p50"], percentiles(fleet)["p50"]
    return {
        "requests": len(in_process),
        "in_process_latency_ms": percentiles(in_process),
        "fleet_latency_ms": percentiles(fleet),
        "fleet_vs_in_process_p50": fleet_p50 / in_process_p50,
    }


def run_fleet_bench(gateway: str, service_urls: dict[str, str], pipeline: Pipeline, paths: list[Path],
                    concurrencies: tuple[int, ...] = (1, 2, 4, 8), requests_per_level: int = 60,
                    open_loop_seconds: float = 20.0) -> dict[str, Any]:
    photos = [path.read_bytes() for path in paths]
    result: dict[str, Any] = {"photos": len(photos)}

    # Warm every service and the in-process models on photos of the set.
    asyncio.run(closed_loop(gateway, photos, 2, min(8, len(photos))))
    for path in paths[:3]:
        pipeline.search(load_photo(path), SearchOptions())

    result["side_by_side"] = side_by_side(gateway, pipeline, photos, rounds=1 if len(photos) < 10 else 2)
    log.info("side by side: in-process p50 %.1f ms, fleet p50 %.1f ms",
             result["side_by_side"]["in_process_latency_ms"]["p50"], result["side_by_side"]["fleet_latency_ms"]["p50"])

    with httpx.Client(timeout=10) as client:
        before = read_stage_totals(client, service_urls)
        levels = [asyncio.run(closed_loop(gateway, photos, concurrencies[0], max(requests_per_level, len(photos))))]
        after = read_stage_totals(client, service_urls)
    result["stage_ms"] = stage_means(before, after)
    for concurrency in concurrencies[1:]:
        levels.append(asyncio.run(closed_loop(gateway, photos, concurrency, requests_per_level)))
    for level in levels:
        log.info("concurrency %d: p50 %.1f ms, p99 %.1f ms, %.1f searches/s", level["concurrency"],
                 level["latency_ms"]["p50"], level["latency_ms"]["p99"], level["throughput_per_second"])
    result["closed_loop"] = levels

    peak = max(level["throughput_per_second"] for level in levels)
    result["peak_throughput_per_second"] = peak
    result["open_loop_70"] = asyncio.run(open_loop(gateway, photos, 0.7 * peak, open_loop_seconds))
    open_latency = result["open_loop_70"]["latency_ms"]
    result["p99_over_p50_at_70_percent"] = open_latency["p99"] / open_latency["p50"]
    log.info("open loop at %.1f/s: p50 %.1f ms, p99 %.1f ms", 0.7 * peak, open_latency["p50"], open_latency["p99"])

    result["fleet_p50_ms"] = levels[0]["latency_ms"]["p50"]
    result["fleet_vs_in_process_p50"] = result["side_by_side"]["fleet_vs_in_process_p50"]
    return result
