"""Plumbing common to every service of the fleet: logging with the request id,
the ``X-Request-ID`` middleware, Prometheus metrics, and liveness and readiness
routes."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# One histogram for every stage of every service, labelled by both, so one
# dashboard query shows where a request's time goes.
STAGE_SECONDS = Histogram(
    "apparel_stage_seconds", "Seconds spent in one stage of a request", ["service", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12),
)
REQUESTS = Counter("apparel_requests_total", "Requests answered, by route and status", ["service", "route", "status"])


class RequestIdFilter(logging.Filter):
    """Put the current request id on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@contextmanager
def stage_timer(service: str, stage: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Time a stage into the stage histogram and, when given, a timings dict (milliseconds)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        STAGE_SECONDS.labels(service, stage).observe(elapsed)
        if timings is not None:
            timings[stage] = round(timings.get(stage, 0.0) + elapsed * 1000, 2)


class RequestIdMiddleware:
    """Give each request an id (the caller's ``X-Request-ID`` or a new one),
    echo it in the response, and time the request into the stage histogram.

    A plain ASGI middleware rather than ``@app.middleware("http")``, because
    Starlette's ``BaseHTTPMiddleware`` passes the body through an extra stream
    and task. Without it the classifier's decode stage (reading the request
    body) took 0.04 ms per call in reports/bench.md.
    """

    def __init__(self, app: ASGIApp, service: str):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        # Stays 500 when the app raises before it starts a response.
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            # FastAPI's router records the matched route in the scope.
            path = getattr(scope.get("route"), "path", "unmatched")
            if path not in ("/metrics", "/healthz", "/readyz"):
                STAGE_SECONDS.labels(self.service, "http").observe(time.perf_counter() - started)
            REQUESTS.labels(self.service, path, str(status)).inc()


def install_common(app: FastAPI, service: str, is_ready: Callable[[], tuple[bool, str]]) -> None:
    """Add the request-id middleware and the /healthz, /readyz and /metrics routes."""
    app.add_middleware(RequestIdMiddleware, service=service)

    router = APIRouter()

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @router.get("/readyz", summary="Readiness: models or indices are loaded and warmed")
    async def readyz() -> Response:
        ready, detail = is_ready()
        return JSONResponse({"ready": ready, "service": service, "detail": detail}, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
