"""HTTP clients of the downstream services, over one pooled ``httpx.AsyncClient``.

Every call has a timeout. Any failure (refused connection, timeout, an error
status, a malformed answer) becomes ``DownstreamError`` naming the service, so
the search can degrade that part of the answer instead of failing.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
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
    def __init__(self, client: httpx.AsyncClient):
        self.client = client
        # Classifier input size and version, fetched once per category from /info.
        self.classifier_info: dict[str, dict[str, Any]] = {}

    async def _post(self, service: str, url: str, **kwargs) -> dict[str, Any]:
        headers = {REQUEST_ID_HEADER: request_id_var.get(), **kwargs.pop("headers", {})}
        try:
            response = await self.client.post(url, headers=headers, **kwargs)
        except httpx.TimeoutException as error:
            raise DownstreamError(service, f"timed out calling {url}") from error
        except httpx.HTTPError as error:
            raise DownstreamError(service, f"request to {url} failed: {error!r}") from error
        if response.status_code != 200:
            raise DownstreamError(service, f"{url} returned {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError as error:
            raise DownstreamError(service, f"{url} returned invalid JSON") from error

    async def detect(self, base_url: str, pixels: np.ndarray) -> dict[str, Any]:
        """Send the decoded photo as raw RGB, sparing the detector a second decode."""
        height, width = pixels.shape[:2]
        return await self._post(
            "detector", f"{base_url}/detect", content=np.ascontiguousarray(pixels).tobytes(),
            headers={"content-type": RAW_CONTENT_TYPE, IMAGE_SHAPE_HEADER: f"{height},{width}"},
        )

    async def info(self, category: str, base_url: str) -> dict[str, Any]:
        if category not in self.classifier_info:
            service = f"classifier:{category}"
            try:
                response = await self.client.get(f"{base_url}/info", headers={REQUEST_ID_HEADER: request_id_var.get()})
                response.raise_for_status()
                self.classifier_info[category] = response.json()
            except (httpx.HTTPError, ValueError) as error:
                raise DownstreamError(service, f"could not read {base_url}/info: {error!r}") from error
        return self.classifier_info[category]

    async def classify(self, category: str, base_url: str, crops: np.ndarray) -> dict[str, Any]:
        answer = await self._post(
            f"classifier:{category}", f"{base_url}/classify", content=np.ascontiguousarray(crops).tobytes(),
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
        answer = await self._post(f"shard:{shard}", f"{base_url}/search", json=payload)
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(queries):
            raise DownstreamError(f"shard:{shard}", "returned a result list that does not match the queries")
        return [result.get("hits", []) for result in results]
