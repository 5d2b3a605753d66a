from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ImageLimits, ServiceSettings, repo_path


class DetectorSettings(ServiceSettings, ImageLimits):
    """Detector service settings, read from ``DETECTOR_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="DETECTOR_")

    model_dir: Path = Field(repo_path("models/detector"), description="folder with detector.onnx and card.json")
    wearer_model_dir: Path = Field(repo_path("models/wearer"), description="folder with wearer.onnx and card.json")
    score_threshold: float | None = Field(None, gt=0, lt=1, description="detection score threshold; the card's when unset")
    # The wearer model learned from tight person boxes (a catalog photo's
    # non-white pixels). On street photos a 5% margin changed some predictions
    # (reports/thresholds.md compares both margins).
    person_margin: float = Field(0.0, ge=0, le=0.5, description="margin around a person box for the wearer crop, as a share of its size")
