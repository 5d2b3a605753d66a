"""Detector service: a photo in, apparel boxes with high-level class and score
out, and for each person box the wearer (man, woman, boy, girl).

The wearer model shares this process because it runs on the person boxes the
detector has just found, on the same decoded photo: the gateway saves a
round trip and a second copy of the photo on every search, and the wearer
model (about 1 MB) adds little memory.

    uvicorn services.detector.app:app --port 8100
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from services.detector.analysis import analyse_photo, describe_models, wearer_probabilities
from services.detector.settings import DetectorSettings
from shared.imagecodec import InvalidImage, decode_image
from shared.inference import Classifier, Detector
from shared.service import configure_logging, install_common, stage_timer
from shared.wire import IMAGE_SHAPE_HEADER, RAW_CONTENT_TYPE

SERVICE = "detector"
log = logging.getLogger("services.detector")


class Models:
    detector: Detector | None = None
    wearer: Classifier | None = None


models = Models()
settings = DetectorSettings()


@asynccontextmanager
async def lifespan(app: FastAPI):
    configure_logging(settings.log_level)
    log.info("starting: detector %s, wearer %s, %d threads", settings.model_dir, settings.wearer_model_dir, settings.threads)
    models.detector = Detector(settings.model_dir, settings.threads)
    models.wearer = Classifier(settings.wearer_model_dir, settings.threads)
    # Warm-up: the first ONNX Runtime run allocates buffers and is slow.
    warm = Image.new("RGB", (400, 600), (128, 128, 128))
    models.detector.detect([warm])
    models.wearer.run(np.zeros((1, models.wearer.input_size, models.wearer.input_size, 3), np.uint8))
    log.info("ready: detector %s, wearer %s", models.detector.version, models.wearer.version)
    yield
    log.info("stopping")


app = FastAPI(title="Apparel detector", lifespan=lifespan)


def is_ready() -> tuple[bool, str]:
    if models.detector is None or models.wearer is None:
        return False, "models loading"
    return True, f"detector {models.detector.version}, wearer {models.wearer.version}"


install_common(app, SERVICE, is_ready)


@app.get("/info", summary="Input size, classes and model versions")
async def info() -> dict:
    if models.detector is None or models.wearer is None:
        raise HTTPException(503, "the models are still loading")
    return describe_models(models.detector, models.wearer)


async def read_photo(request: Request) -> Image.Image:
    """Read the body as raw RGB (with ``X-Image-Shape: H,W``) or as an encoded photo."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(RAW_CONTENT_TYPE) and IMAGE_SHAPE_HEADER in request.headers:
            return raw_rgb(body, request.headers[IMAGE_SHAPE_HEADER])
        return await run_in_threadpool(decode_image, body, settings.max_image_bytes, settings.max_image_pixels, settings.min_image_side)
    except InvalidImage as error:
        raise HTTPException(error.status, str(error)) from error


def raw_rgb(body: bytes, shape_header: str) -> Image.Image:
    try:
        height, width = (int(v) for v in shape_header.split(","))
    except ValueError as error:
        raise InvalidImage(f"{IMAGE_SHAPE_HEADER} must be 'height,width', got {shape_header!r}") from error
    if height < settings.min_image_side or width < settings.min_image_side or height * width > settings.max_image_pixels:
        raise InvalidImage(f"raw image of {width}x{height} pixels is outside the accepted size")
    if len(body) != height * width * 3:
        raise InvalidImage(f"raw body has {len(body)} bytes; {width}x{height} RGB needs {height * width * 3}")
    return Image.fromarray(np.frombuffer(body, np.uint8).reshape(height, width, 3))


@app.post("/detect", summary="Detect apparel items and people in one photo")
async def detect(request: Request) -> JSONResponse:
    timings: dict[str, float] = {}
    with stage_timer(SERVICE, "decode", timings):
        image = await read_photo(request)
    assert models.detector is not None and models.wearer is not None
    with stage_timer(SERVICE, "detect", timings):
        answer = await run_in_threadpool(
            analyse_photo, models.detector, models.wearer, image, settings.score_threshold, settings.person_margin,
        )
    answer["timings_ms"] = timings
    # The body contains only JSON types, so FastAPI's generic encoder is skipped.
    return JSONResponse(answer)


@app.post("/wearer", summary="Tell man, woman, boy or girl from one person crop")
async def wearer(request: Request) -> dict:
    image = await read_photo(request)
    assert models.wearer is not None
    whole_photo = np.array([0, 0, image.width, image.height], np.float32)
    probabilities = await run_in_threadpool(wearer_probabilities, models.wearer, image, [whole_photo], settings.person_margin)
    return {"wearer": probabilities[0], "model_version": models.wearer.version}
