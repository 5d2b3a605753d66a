"""Gateway service: ``POST /search`` takes a street photo and returns, for each
item in it, the nearest catalog products; ``GET /products/{id}`` and
``GET /products/{id}/image`` let clients show them.

    uvicorn services.gateway.app:app --port 8000

A photo arrives as multipart (field ``image``), as JSON with ``image_base64``,
or as the raw body with an ``image/*`` content type. Options come as form
fields, JSON keys or query parameters respectively.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from services.gateway.cache import AnswerCache
from services.gateway.catalog import IndexMetadata, IndexMetadataError, load_index_metadata
from services.gateway.clients import Downstream, DownstreamError
from services.gateway.search import BadRegion, SearchContext, SearchOptions, run_search
from services.gateway.settings import GatewaySettings
from shared.imagecodec import InvalidImage, decode_image
from shared.service import configure_logging, install_common, request_id_var, stage_timer

SERVICE = "gateway"
log = logging.getLogger("services.gateway")

settings = GatewaySettings()

# Base64 grows data by 4/3; the multipart or JSON wrapping adds a little more.
_MAX_BODY_BYTES = settings.max_image_bytes * 4 // 3 + 64 * 1024
_LIST_OPTIONS = {"classes", "region"}


class State:
    index: IndexMetadata | None = None
    downstream: Downstream | None = None
    cache: AnswerCache | None = None
    session: aiohttp.ClientSession | None = None


state = State()


@asynccontextmanager
async def lifespan(app: FastAPI):
    configure_logging(settings.log_level)
    log.info("starting: detector %s, %d classifiers, shards %s, index %s",
             settings.detector_url, len(settings.classifier_urls), sorted(settings.shard_urls), settings.index_dir)
    state.index = load_index_metadata(settings.index_dir)
    timeout = aiohttp.ClientTimeout(total=settings.downstream_timeout_seconds, connect=settings.connect_timeout_seconds)
    # One pool of keep-alive connections serves every downstream call.
    state.session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64))
    state.downstream = Downstream(state.session)
    state.cache = AnswerCache(settings.redis_url, settings.cache_ttl_seconds, settings.local_cache_entries, settings.redis_timeout_seconds)
    await warm_up(state.downstream)
    log.info("ready: response cache %s, index created %s", state.cache.backend, state.index.version)
    yield
    await state.session.close()
    await state.cache.close()
    log.info("stopping")


async def warm_up(downstream: Downstream) -> None:
    """Read the detector's and every classifier's /info and open pooled
    connections before the first search, so it does not pay for them. A
    service that is not up yet is only logged: its /info is read again on
    first use."""
    results = await asyncio.gather(
        downstream.detector_info(settings.detector_url),
        *(downstream.info(category, url) for category, url in settings.classifier_urls.items()), return_exceptions=True,
    )
    failed = [str(result) for result in results if isinstance(result, Exception)]
    if failed:
        log.warning("warm-up: %d of %d services not reachable yet: %s", len(failed), len(results), "; ".join(failed))


app = FastAPI(title="Apparel visual search gateway", lifespan=lifespan)


def is_ready() -> tuple[bool, str]:
    if state.index is None:
        return False, "index metadata loading"
    return True, f"index created {state.index.version}, {len(state.index.products)} products"


install_common(app, SERVICE, is_ready)


@app.exception_handler(IndexMetadataError)
async def index_error_handler(request: Request, error: IndexMetadataError) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=503)


def options_error(error: ValidationError) -> HTTPException:
    problems = []
    for entry in error.errors():
        location = ".".join(str(part) for part in entry["loc"]) or "options"
        message = entry["msg"].removeprefix("Value error, ")
        if entry["type"] == "extra_forbidden":
            message = f"unknown option; accepted: {', '.join(SearchOptions.model_fields)}"
        problems.append(f"{location}: {message}")
    return HTTPException(422, "; ".join(problems))


def parse_options(raw: dict[str, Any]) -> SearchOptions:
    try:
        return SearchOptions.model_validate(raw)
    except ValidationError as error:
        raise options_error(error) from error


def split_list_option(name: str, value: str) -> list[Any]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if name == "region":
        try:
            return [float(p) for p in parts]
        except ValueError as error:
            raise HTTPException(422, f"region: expected four comma-separated numbers, got {value!r}") from error
    return parts


async def read_search_request(request: Request) -> tuple[bytes, SearchOptions]:
    """Return the photo bytes and the options, whatever the request's format."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > _MAX_BODY_BYTES:
        raise HTTPException(413, f"the request is {declared} bytes, over the limit of {_MAX_BODY_BYTES} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()

    if content_type == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=20)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            fields = sorted(form.keys())
            raise HTTPException(422, f"missing the photo: send it as the file field 'image' (fields received: {fields or 'none'})")
        data = await upload.read()
        raw = {k: v for k, v in form.items() if k != "image"}
        if any(isinstance(v, UploadFile) for v in raw.values()):
            raise HTTPException(422, "only one file field, 'image', is accepted")
        options = {k: split_list_option(k, v) if k in _LIST_OPTIONS else v for k, v in raw.items()}
        return data, parse_options(options)

    if content_type == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HTTPException(400, f"the body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise HTTPException(422, "the JSON body must be an object with 'image_base64' and options")
        encoded = body.pop("image_base64", None)
        if not isinstance(encoded, str):
            raise HTTPException(422, f"missing the photo: send it base64-encoded in 'image_base64' (keys received: {sorted(body) or 'none'})")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise HTTPException(400, "image_base64 is not valid base64") from error
        return data, parse_options(body)

    if content_type.startswith("image/") or content_type == "application/octet-stream":
        raw = {k: split_list_option(k, v) if k in _LIST_OPTIONS else v for k, v in request.query_params.items()}
        return await request.body(), parse_options(raw)

    raise HTTPException(415, f"unsupported content type {content_type or 'none'}; send multipart/form-data, application/json or image/*")


# Bump when a change to the search code changes responses, so cached ones expire unused.
PIPELINE_VERSION = 2
# Settings that shape responses. Changing one also starts a new cache generation.
_SETTINGS_DIGEST = hashlib.sha256(
    settings.model_dump_json(include={
        "top_fine_classes", "fine_class_floor", "wearer_min_probability", "crop_margin", "min_item_score",
        "cross_class_iou", "default_results_per_item", "default_max_items", "classifier_urls", "shard_urls",
    }).encode()
).hexdigest()[:12]


def cache_key(data: bytes, options: SearchOptions, index: IndexMetadata) -> str:
    """Return the cache key of a response: photo, options, index, search code and settings."""
    digest = hashlib.sha256(data).hexdigest()
    options_digest = hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:16]
    return f"search:v{PIPELINE_VERSION}:{_SETTINGS_DIGEST}:{index.version}:{digest}:{options_digest}"


@app.post("/search", summary="Find the catalog products nearest to each item in a photo")
async def search(request: Request) -> JSONResponse:
    started = time.perf_counter()
    index, downstream, cache = state.index, state.downstream, state.cache
    if index is None or downstream is None or cache is None:
        raise HTTPException(503, "the gateway is still starting")
    timings: dict[str, float] = {}

    with stage_timer(SERVICE, "read", timings):
        data, options = await read_search_request(request)
    key = cache_key(data, options, index)
    cached = await cache.get(key)
    if cached is not None:
        answer = json.loads(cached)
        answer.update({"request_id": request_id_var.get(), "cached": True})
        answer["timings_ms"] = {"total": round((time.perf_counter() - started) * 1000, 2)}
        return JSONResponse(answer)

    with stage_timer(SERVICE, "decode", timings):
        try:
            image = await run_in_threadpool(decode_image, data, settings.max_image_bytes, settings.max_image_pixels, settings.min_image_side)
        except InvalidImage as error:
            raise HTTPException(error.status, str(error)) from error

    context = SearchContext(settings, downstream, index, timings)
    try:
        answer = await run_search(context, image, options)
    except BadRegion as error:
        raise HTTPException(422, str(error)) from error
    except DownstreamError as error:
        # Only the detector is essential: without boxes there is nothing to search.
        log.error("search failed: %s", error)
        raise HTTPException(503, f"the detector is unavailable ({error}); try again shortly") from error

    context.versions["index"] = index.version
    answer.update({
        "request_id": request_id_var.get(),
        "cached": False,
        "degraded": context.degraded,
        "model_versions": context.versions,
    })
    timings["total"] = round((time.perf_counter() - started) * 1000, 2)
    answer["timings_ms"] = timings
    if not context.degraded:
        await cache.set(key, json.dumps(answer).encode())
    return JSONResponse(answer)


@app.get("/products/{product_id}", summary="One catalog product's record")
async def product(product_id: str) -> dict[str, Any]:
    record = find_product(product_id)
    return {**{k: v for k, v in record.items() if k != "image_path"}, "image_url": f"/products/{product_id}/image"}


@app.get("/products/{product_id}/image", summary="One catalog product's photo")
async def product_image(product_id: str) -> FileResponse:
    record = find_product(product_id)
    path = Path(record.get("image_path", ""))
    if not path.is_file():
        raise HTTPException(404, f"the photo of product {product_id} is not available")
    return FileResponse(path)


def find_product(product_id: str) -> dict[str, Any]:
    if state.index is None:
        raise HTTPException(503, "the gateway is still starting")
    record = state.index.products.get(product_id)
    if record is None:
        raise HTTPException(404, f"product {product_id!r} not found")
    return record
