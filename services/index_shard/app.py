"""Index shard service: nearest-neighbour search over the catalog indices that
``routing.json`` assigns to this shard.

    SHARD_NAME=shard-0 SHARD_INDEX_DIR=var/index uvicorn services.index_shard.app:app --port 8200

``POST /search`` takes query vectors (base64 float32, ``shared.wire``), each
with the index keys to search and k. For each query it returns the hits of all
its keys merged, nearest first. ``GET /keys`` lists the loaded indices. The shard
refuses to start when its indices disagree with ``routing.json``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import anyio
from anyio.to_thread import run_sync
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.index_shard.settings import ShardSettings
from services.index_shard.store import LoadedIndex, ShardLoadError, load_shard, search_all
from shared.service import configure_logging, install_common, stage_timer
from shared.wire import decode_vector

SERVICE = "index_shard"
log = logging.getLogger("services.index_shard")

settings = ShardSettings()


class State:
    indices: dict[str, LoadedIndex] | None = None
    limiter: anyio.CapacityLimiter | None = None


state = State()


@asynccontextmanager
async def lifespan(app: FastAPI):
    configure_logging(settings.log_level)
    log.info("starting: shard %s, index folder %s, ef %d", settings.name, settings.index_dir, settings.ef)
    try:
        state.indices = load_shard(settings.index_dir, settings.name, settings.ef)
    except ShardLoadError as error:
        log.error("cannot start shard %s: %s", settings.name, error)
        raise
    state.limiter = anyio.CapacityLimiter(settings.threads)
    total = sum(index.count for index in state.indices.values())
    log.info("ready: shard %s serves %d keys, %d vectors", settings.name, len(state.indices), total)
    yield
    log.info("stopping")


app = FastAPI(title="Catalog index shard", lifespan=lifespan)


def is_ready() -> tuple[bool, str]:
    if state.indices is None:
        return False, "indices loading"
    return True, f"{settings.name}: {len(state.indices)} keys"


install_common(app, SERVICE, is_ready)


class Query(BaseModel):
    vector: str = Field(description="base64 of little-endian float32 values (shared.wire.encode_vector)")
    keys: list[str] = Field(description="index keys to search, e.g. top/tshirt/men")
    k: int = Field(10, description="maximum hits returned for this query")


class SearchRequest(BaseModel):
    queries: list[Query]


def require_indices() -> dict[str, LoadedIndex]:
    if state.indices is None:
        raise HTTPException(503, "the indices are still loading")
    return state.indices


@app.get("/keys", summary="The keys this shard serves, with counts and dimensions")
async def keys() -> dict:
    indices = require_indices()
    return {
        "shard": settings.name,
        "keys": {
            key: {"count": index.count, "dimension": index.dimension, "model_version": index.model_version}
            for key, index in sorted(indices.items())
        },
    }


def check_request(request: SearchRequest, indices: dict[str, LoadedIndex]) -> list:
    """Validate every query; return (vector, keys, k) per query or raise 400/404."""
    if not request.queries:
        raise HTTPException(400, "the request has no queries")
    if len(request.queries) > settings.max_queries:
        raise HTTPException(400, f"{len(request.queries)} queries in one request; the limit is {settings.max_queries}")
    unknown = sorted({key for query in request.queries for key in query.keys if key not in indices})
    checked = []
    for number, query in enumerate(request.queries):
        if not query.keys:
            raise HTTPException(400, f"query {number} has no keys")
        if not 1 <= query.k <= settings.max_k:
            raise HTTPException(400, f"query {number}: k is {query.k}; it must be between 1 and {settings.max_k}")
        if unknown:
            continue
        try:
            vector = decode_vector(query.vector)
        except ValueError as error:
            raise HTTPException(400, f"query {number}: {error}") from error
        for key in query.keys:
            if len(vector) != indices[key].dimension:
                raise HTTPException(400, f"query {number}: vector has {len(vector)} values; index {key} has dimension {indices[key].dimension}")
        checked.append((vector, list(dict.fromkeys(query.keys)), query.k))
    if unknown:
        raise HTTPException(404, f"shard {settings.name} does not serve keys: {', '.join(unknown)}")
    return checked


@app.post("/search", summary="Nearest catalog products of each query vector")
async def search(request: SearchRequest) -> JSONResponse:
    indices = require_indices()
    timings: dict[str, float] = {}
    with stage_timer(SERVICE, "decode", timings):
        checked = check_request(request, indices)
    with stage_timer(SERVICE, "search", timings):
        results = await run_sync(search_all, checked, indices, limiter=state.limiter)
    # The body contains only JSON types, so FastAPI's generic encoder is skipped.
    return JSONResponse({"shard": settings.name, "results": results, "timings_ms": timings})
