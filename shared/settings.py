"""Settings common to the services; each service subclasses ``ServiceSettings``
with its own environment prefix, and invalid values stop it at startup."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from shared.datasets import REPO_ROOT


class ServiceSettings(BaseSettings):
    log_level: str = Field("INFO", description="logging level: DEBUG, INFO, WARNING or ERROR")
    threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads of this process")


class ImageLimits(BaseSettings):
    """Limits on uploaded photos."""

    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="largest accepted upload, in bytes")
    max_image_pixels: int = Field(40_000_000, ge=10_000, description="largest accepted width x height")
    min_image_side: int = Field(32, ge=1, description="smallest accepted width or height, in pixels")


def repo_path(relative: str) -> Path:
    """Default paths are relative to the repository, so services start from any folder."""
    return REPO_ROOT / relative
