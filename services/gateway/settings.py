from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared import taxonomy
from shared.settings import ImageLimits, ServiceSettings, repo_path

_DEFAULT_CLASSIFIERS = ",".join(
    f"{category}=http://127.0.0.1:{8110 + index}" for index, category in enumerate(taxonomy.CLASSIFIER_CATEGORIES)
)


def parse_url_map(value: str | dict[str, str]) -> dict[str, str]:
    """Parse "name=url,name=url" into a dict; a dict passes through."""
    if isinstance(value, dict):
        return value
    mapping = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, separator, url = part.partition("=")
        if not separator or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"expected name=http://host:port, got {part!r}")
        mapping[name.strip()] = url.strip().rstrip("/")
    return mapping


class GatewaySettings(ServiceSettings, ImageLimits):
    """Gateway settings, read from ``GATEWAY_*`` environment variables (and ``REDIS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    detector_url: str = Field("http://127.0.0.1:8100", description="base URL of the detector service")
    # NoDecode: these are "name=url" lists, not the JSON pydantic-settings expects for a dict.
    classifier_urls: Annotated[dict[str, str], NoDecode] = Field(default_factory=lambda: parse_url_map(_DEFAULT_CLASSIFIERS),
                                            description='classifier per category, as "top=http://host:port,..."')
    shard_urls: Annotated[dict[str, str], NoDecode] = Field(default_factory=lambda: parse_url_map("shard-0=http://127.0.0.1:8200,shard-1=http://127.0.0.1:8201"),
                                       description='index shard per name in routing.json, as "shard-0=http://host:port,..."')
    index_dir: Path = Field(repo_path("var/index"), description="folder with routing.json and products.jsonl")
    redis_url: str | None = Field(None, validation_alias="REDIS_URL", description="Redis for the response cache; in-process cache when unset")
    cache_ttl_seconds: int = Field(3600, ge=0, description="lifetime of a cached response in seconds; 0 disables caching")
    local_cache_entries: int = Field(256, ge=0, description="responses kept by the in-process cache")
    connect_timeout_seconds: float = Field(1.0, gt=0, description="timeout to connect to a downstream service")
    downstream_timeout_seconds: float = Field(10.0, gt=0, description="timeout of one downstream call")
    redis_timeout_seconds: float = Field(0.25, gt=0, description="timeout of one Redis call")
    top_fine_classes: int = Field(2, ge=1, le=5, description="fine classes of a crop whose indices are searched")
    fine_class_floor: float = Field(0.15, ge=0, le=1, description="a fine class below this probability is not searched (the best one always is)")
    wearer_min_probability: float = Field(0.7, gt=0, le=1, description="below this, the wearer's gender is uncertain and no gender filter applies")
    crop_margin: float = Field(0.08, ge=0, le=0.5, description="margin added around each box before cropping, as a share of its size")
    # On the 128 held-out clothing-co-parsing photos, 74% of item detections
    # scoring 0.5 or more match a true item (IoU 0.5), 28% of those from 0.4 to
    # 0.5 and 17% of those from 0.3 to 0.4 (`python -m training.thresholds`).
    min_item_score: float = Field(0.5, ge=0, le=1, description="detections below this score are not searched")
    cross_class_iou: float = Field(0.7, gt=0, le=1, description="of two items of different classes overlapping this much, only the higher-scoring is searched")
    default_results_per_item: int = Field(10, ge=1, le=50)
    default_max_items: int = Field(8, ge=1, le=30)

    @field_validator("classifier_urls", "shard_urls", mode="before")
    @classmethod
    def parse_maps(cls, value):
        return parse_url_map(value)

    @field_validator("classifier_urls")
    @classmethod
    def check_categories(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(taxonomy.CLASSIFIER_CATEGORIES))
        if unknown:
            raise ValueError(f"unknown classifier categories {unknown}; known: {', '.join(taxonomy.CLASSIFIER_CATEGORIES)}")
        return value
