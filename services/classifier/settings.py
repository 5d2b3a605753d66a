from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared import taxonomy
from shared.settings import ServiceSettings, repo_path


class ClassifierSettings(ServiceSettings):
    """Classifier service settings, read from ``CLASSIFIER_*`` environment variables.

    One process serves one high-level class: ``CLASSIFIER_CATEGORY=top``.
    """

    model_config = SettingsConfigDict(env_prefix="CLASSIFIER_")

    category: str = Field(..., description=f"high-level class served, one of {', '.join(taxonomy.CLASSIFIER_CATEGORIES)}")
    models_dir: Path = Field(repo_path("models/classifiers"), description="folder with one sub-folder per category")
    max_batch: int = Field(64, ge=1, le=1024, description="most crops accepted in one request")
    # Off by default: with one ONNX Runtime thread a batch costs as much per crop
    # as single crops, and the fleet's throughput at concurrency 8 was no higher
    # with it on (0.94 times in reports/bench.md, 0.99 in an earlier run).
    micro_batching: bool = Field(False, description="run the crops of requests that arrive while the model is busy in one batch")

    @model_validator(mode="after")
    def check_category(self) -> "ClassifierSettings":
        if self.category not in taxonomy.CLASSIFIER_CATEGORIES:
            raise ValueError(f"CLASSIFIER_CATEGORY={self.category!r} is not one of {', '.join(taxonomy.CLASSIFIER_CATEGORIES)}")
        return self

    @property
    def model_dir(self) -> Path:
        return self.models_dir / self.category
