"""HTTP clients of the downstream services, over one pooled ``aiohttp.ClientSession``.

aiohttp rather than httpx, because a search makes five or six calls. In a
one-off probe on loopback (500 GETs of a shard's /healthz, not part of
``make bench``), an httpx call took about 1.0 ms of client time, an aiohttp
call 0.3 ms and a bare socket 0.2 ms.

Every call has a timeout. Any failure (refused connection, timeout, an error
status, a malformed answer) becomes ``DownstreamError`` naming the service, so
the search can degrade that part of the answer instead of failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import numpy as np

from shared.service import REQUEST_ID_HEADER, request_id_var
from shared.wire import CROP_SIZE_HEADER, IMAGE_SHAPE_HEADER, RAW_CONTENT_TYPE, encode_vector

log = logging.getLogger(__name__)


class DownstreamError(RuntimeError):
    """A downstream call failed; ``service`` names it for the ``degraded`` list."""

    def __init__(self, service: str, message: str):
        super().__init__(f"{service}: {message}")
        self.service = service


class Downstream:
    def __init__(self, session: aiohttp.ClientSession):
        self.session = session
        # Classifier input size and version, fetched once per category from /info.
        self.classifier_info: dict[str, dict[str, Any]] = {}
        # The detector's input size and model versions, from its /info.
        self.detector_info_cache: dict[str, Any] | None = None

    async def _request(self, service: str, method: str, url: str, **kwargs) -> dict[str, Any]:
        headers = {REQUEST_ID_HEADER: request_id_var.get(), **kwargs.pop("headers", {})}
        try:
            async with self.session.request(method, url, headers=headers, **kwargs) as response:
                body = await response.read()
        except asyncio.TimeoutError as error:
            raise DownstreamError(service, f"timed out calling {url}") from error
        except aiohttp.ClientError as error:
            raise DownstreamError(service, f"request to {url} failed: {error!r}") from error
        if response.status != 200:
            raise DownstreamError(service, f"{url} returned {response.status}: {body[:200].decode(errors='replace')}")
        try:
            answer = json.loads(body)
        except ValueError as error:
            raise DownstreamError(service, f"{url} returned invalid JSON") from error
        if not isinstance(answer, dict):
            raise DownstreamError(service, f"{url} returned JSON that is not an object")
        return answer

    async def detector_info(self, base_url: str) -> dict[str, Any]:
        if self.detector_info_cache is None:
            self.detector_info_cache = await self._request("detector", "GET", f"{base_url}/info")
        return self.detector_info_cache

    async def detect(self, base_url: str, pixels: np.ndarray) -> dict[str, Any]:
        """Send the decoded photo as raw RGB, sparing the detector a second decode."""
        height, width = pixels.shape[:2]
        answer = await self._request(
            "detector", "POST", f"{base_url}/detect", data=np.ascontiguousarray(pixels).tobytes(),
            headers={"content-type": RAW_CONTENT_TYPE, IMAGE_SHAPE_HEADER: f"{height},{width}"},
        )
        known = (self.detector_info_cache or {}).get("model_versions")
        if known is not None and answer.get("model_versions") != known:
            # The detector was restarted with another model: read its /info again next time.
            self.detector_info_cache = None
        return answer

    async def info(self, category: str, base_url: str) -> dict[str, Any]:
        if category not in self.classifier_info:
            self.classifier_info[category] = await self._request(f"classifier:{category}", "GET", f"{base_url}/info")
        return self.classifier_info[category]

    async def classify(self, category: str, base_url: str, crops: np.ndarray) -> dict[str, Any]:
        answer = await self._request(
            f"classifier:{category}", "POST", f"{base_url}/classify", data=np.ascontiguousarray(crops).tobytes(),
            headers={"content-type": RAW_CONTENT_TYPE, CROP_SIZE_HEADER: str(crops.shape[1])},
        )
        if len(answer.get("results", [])) != len(crops):
            raise DownstreamError(f"classifier:{category}", f"returned {len(answer.get('results', []))} results for {len(crops)} crops")
        if answer.get("model_version") != self.classifier_info.get(category, {}).get("model_version"):
            # The classifier was restarted with another model: read its /info again next time.
            self.classifier_info.pop(category, None)
        return answer

    async def search_shard(self, shard: str, base_url: str, queries: list[tuple[np.ndarray, list[str], int]]) -> list[list[dict]]:
        payload = {"queries": [{"vector": encode_vector(v), "keys": keys, "k": k} for v, keys, k in queries]}
        answer = await self._request(f"shard:{shard}", "POST", f"{base_url}/search", json=payload)
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(queries):
            raise DownstreamError(f"shard:{shard}", "returned a result list that does not match the queries")
        return [result.get("hits", []) for result in results]
