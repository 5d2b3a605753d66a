"""Compact encodings for arrays sent between services: float32 vectors as
base64 in JSON, and batches of crops as raw uint8 bytes."""

from __future__ import annotations

import base64

import numpy as np

CROP_SIZE_HEADER = "X-Crop-Size"
IMAGE_SHAPE_HEADER = "X-Image-Shape"
RAW_CONTENT_TYPE = "application/octet-stream"


def encode_vector(vector: np.ndarray) -> str:
    """Encode a float vector as base64 of little-endian float32."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    """Decode ``encode_vector`` output; raises ValueError on malformed input."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as error:
        raise ValueError("vector is not valid base64") from error
    if len(raw) % 4:
        raise ValueError(f"vector has {len(raw)} bytes, not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def crops_from_bytes(body: bytes, size: int) -> np.ndarray:
    """Turn a raw body of N square RGB uint8 crops into an (N, size, size, 3) array."""
    per_crop = size * size * 3
    if size <= 0 or not body or len(body) % per_crop:
        raise ValueError(f"body of {len(body)} bytes is not a whole number of {size}x{size} RGB crops ({per_crop} bytes each)")
    return np.frombuffer(body, dtype=np.uint8).reshape(-1, size, size, 3)
