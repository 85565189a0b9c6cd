"""`create_app(settings)`: the FastAPI app, its Redis clients and its routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engage.api import live, quality, scores
from engage.api.dashboard import DASHBOARD_HTML
from engage.api.health import HealthChecker
from engage.api.metrics import ApiMetrics, MetricsMiddleware
from engage.api.model_cache import ModelCache
from engage.api.models import Health
from engage.redact import redact_url
from engage.redis_client import connect
from engage.settings import Settings

log = logging.getLogger("engage.api")
REDIS_DOWN_LOG_EVERY_S = 10.0  # one log line per outage stretch, not one per request
REDIS_RETRY_AFTER_S = 2


def create_app(settings: Settings) -> FastAPI:
    # One pooled sync client: handlers run in the threadpool, the pool is thread-safe, and
    # short timeouts turn a dead Redis into a fast error instead of a hung request.
    client = connect(settings, socket_timeout=2, socket_connect_timeout=1, max_connections=64)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()

    app = FastAPI(
        title="engage",
        summary="Real-time engagement scores: current scores, leaderboard, live updates.",
        version="0.1.0",
        lifespan=lifespan,
    )
    metrics = ApiMetrics()
    app.state.settings = settings
    app.state.redis = client
    app.state.models = ModelCache(settings)
    app.state.health = HealthChecker(settings, client)
    app.state.metrics = metrics
    app.state.quality = quality.QualityCache(settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_input(_request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming the fields; the offending input is not echoed (it may be NaN, which
        JSON cannot carry, or something large or secret)."""
        detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    redis_down_logged = [0.0]  # monotonic time of the last "Redis down" log line

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def redis_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        """503 naming Redis (as /healthz does), one log line and no traceback: an outage is
        not a bug. The client is not told the address: the log has it."""
        now = time.monotonic()
        if now - redis_down_logged[0] >= REDIS_DOWN_LOG_EVERY_S:
            redis_down_logged[0] = now
            log.warning("Redis at %s unavailable: %s: answering 503",
                        redact_url(settings.redis_url), exc)  # fmt: skip
        return JSONResponse(
            {"detail": "Redis is unavailable: scores cannot be read now; retry shortly"},
            status_code=503,
            headers={"Retry-After": str(REDIS_RETRY_AFTER_S)},
        )

    app.include_router(scores.router)
    app.include_router(live.router)
    app.include_router(quality.router)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, tags=["ops"])
    async def healthz(request: Request) -> JSONResponse:
        """200 when Kafka and Redis both answer, else 503 naming which one does not."""
        state = await run_in_threadpool(request.app.state.health.check)
        return JSONResponse(state, status_code=200 if all(state.values()) else 503)

    @app.get("/metrics", response_class=Response, tags=["ops"])
    def prometheus() -> Response:
        """Request counts and latency histograms, Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML)

    return app
