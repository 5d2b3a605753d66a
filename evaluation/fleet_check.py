"""Check that the running fleet returns what the in-process pipeline returns: POST
/search on every evaluated photo must return the same items with the same
top product ids, in the same order."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from evaluation.retrieval import RESULTS, PhotoSearch
from shared import datasets
from shared.processes import start_search_fleet

log = logging.getLogger(__name__)


def search_ids(client: httpx.Client, gateway: str, photo: datasets.StreetPhoto) -> list[list[str]]:
    """Return the top product ids of each item POST /search finds in a photo."""
    response = client.post(
        f"{gateway}/search", content=photo.path.read_bytes(),
        params={"results_per_item": RESULTS}, headers={"content-type": "image/jpeg"},
    )
    response.raise_for_status()
    answer = response.json()
    if answer.get("degraded"):
        raise RuntimeError(f"the fleet returned a degraded response for photo {photo.photo_id}: {answer['degraded']}")
    return [[result["product_id"] for result in item["results"]] for item in answer["items"]]


def compare_with_fleet(
    photos: list[datasets.StreetPhoto], searches: list[PhotoSearch], models: Path, index_dir: Path, gateway: str | None = None,
) -> dict[str, Any]:
    """Search every photo through a fleet and compare with the in-process results.

    With ``gateway`` unset, a private fleet is started on free loopback ports
    for the same models and index, with the response cache off, and stopped after.
    """
    by_photo = {search.photo_id: search.plain_search_ids for search in searches}
    mismatches: list[dict[str, Any]] = []
    fleet = None
    with tempfile.TemporaryDirectory(prefix="eval-fleet-") as log_dir:
        try:
            if gateway is None:
                log.info("starting a private fleet for %s", index_dir)
                fleet = start_search_fleet(index_dir, models, Path(log_dir), extra_env={"GATEWAY_CACHE_TTL_SECONDS": "0"})
                gateway = fleet.services["gateway"].url
            with httpx.Client(timeout=60) as client:
                for photo in tqdm(photos, desc="fleet comparison", unit="photo", mininterval=10):
                    fleet_ids = search_ids(client, gateway, photo)
                    if fleet_ids != by_photo.get(photo.photo_id):
                        mismatches.append({"photo": photo.photo_id, "fleet": fleet_ids, "in_process": by_photo.get(photo.photo_id)})
        finally:
            if fleet is not None:
                fleet.stop_all()
    if mismatches:
        log.warning("%d of %d photos differ between the fleet and the in-process pipeline", len(mismatches), len(photos))
    return {"equal": not mismatches, "photos": len(photos), "mismatches": mismatches[:10], "mismatch_count": len(mismatches)}
