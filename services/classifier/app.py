"""Classifier service: a batch of crops of one high-level class in; per crop the
fine classes with probabilities, the attributes, the search embedding and the
128-D task features out.

    CLASSIFIER_CATEGORY=top uvicorn services.classifier.app:app --port 8110

The body is the crops as raw bytes: N square RGB uint8 crops of the model's
input size, back to back, with ``X-Crop-Size`` giving the side. ``GET /info``
returns that size. An encoded photo (``image/*``) is also accepted, as a single
crop, for trying the service with curl.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.classifier.results import describe_crops
from services.classifier.settings import ClassifierSettings
from shared.imagecodec import InvalidImage, decode_image
from shared.batching import MicroBatcher
from shared.inference import Classifier, ClassifierOutput
from shared.service import configure_logging, install_common, stage_timer
from shared.wire import CROP_SIZE_HEADER, RAW_CONTENT_TYPE, crops_from_bytes

SERVICE = "classifier"
log = logging.getLogger("services.classifier")

settings = ClassifierSettings()


class State:
    model: Classifier | None = None
    batcher: MicroBatcher[ClassifierOutput] | None = None


state = State()


@asynccontextmanager
async def lifespan(app: FastAPI):
    configure_logging(settings.log_level)
    log.info("starting: category %s, model %s, %d threads", settings.category, settings.model_dir, settings.threads)
    state.model = Classifier(settings.model_dir, settings.threads)
    if state.model.card.get("category") != settings.category:
        raise RuntimeError(f"model in {settings.model_dir} is for {state.model.card.get('category')!r}, not {settings.category!r}")
    # Warm-up at the batch sizes a search sends, so the first request is not slow.
    for batch in (1, 4):
        state.model.run(np.zeros((batch, state.model.input_size, state.model.input_size, 3), np.uint8))
    if settings.micro_batching:
        state.batcher = MicroBatcher(state.model.run, ClassifierOutput.split, settings.max_batch)
    log.info("ready: %s classifier %s, batching across requests %s", settings.category, state.model.version,
             "on" if settings.micro_batching else "off")
    yield
    log.info("stopping")


app = FastAPI(title="Apparel classifier", lifespan=lifespan)


def is_ready() -> tuple[bool, str]:
    if state.model is None:
        return False, "model loading"
    return True, f"{settings.category} classifier {state.model.version}"


install_common(app, SERVICE, is_ready)


@app.get("/info", summary="Category, input size, vocabularies and model version")
async def info() -> dict:
    model = require_model()
    return {
        "category": settings.category,
        "input_size": model.input_size,
        "tasks": model.tasks,
        "embedding_size": model.embedding_size,
        "model_version": model.version,
    }


def require_model() -> Classifier:
    if state.model is None:
        raise HTTPException(503, "the model is still loading")
    return state.model


async def read_crops(request: Request, model: Classifier) -> np.ndarray:
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(RAW_CONTENT_TYPE):
        try:
            size = int(request.headers.get(CROP_SIZE_HEADER, "0"))
        except ValueError as error:
            raise HTTPException(400, f"{CROP_SIZE_HEADER} must be an integer") from error
        if size != model.input_size:
            raise HTTPException(400, f"{CROP_SIZE_HEADER} is {size}; this model takes {model.input_size}x{model.input_size} crops")
        try:
            crops = crops_from_bytes(body, size)
        except ValueError as error:
            raise HTTPException(400, str(error)) from error
    else:
        try:
            image = await run_in_threadpool(decode_image, body, 10 * 1024 * 1024, 40_000_000, 8)
        except InvalidImage as error:
            raise HTTPException(error.status, str(error)) from error
        crops = model.crop(image, np.array([0, 0, image.width, image.height], np.float32))[None]
    if len(crops) > settings.max_batch:
        raise HTTPException(413, f"{len(crops)} crops in one request; the limit is {settings.max_batch}")
    return crops


@app.post("/classify", summary="Classify and embed a batch of crops")
async def classify(request: Request) -> JSONResponse:
    model = require_model()
    timings: dict[str, float] = {}
    with stage_timer(SERVICE, "decode", timings):
        crops = await read_crops(request, model)
    with stage_timer(SERVICE, "classify", timings):
        if state.batcher is not None:
            output = await state.batcher.submit(crops)
        else:
            output = await run_in_threadpool(model.run, crops)
    results = describe_crops(model, output)
    # The body contains only JSON types, so FastAPI's generic encoder is skipped.
    return JSONResponse({"category": settings.category, "model_version": model.version, "results": results, "timings_ms": timings})
