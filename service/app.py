"""The HTTP API: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the object store.

Every package of the object store is served (``/v1/objects/{name}/pose``); ``/v1/pose`` answers for
the default object. Routes stay thin (:mod:`service.routes`): read the body on the event loop,
then parse, check and estimate in one job of the bounded pose pool (``service.compute``) under a
compute budget (``cloudpose.budget``), and send the answer. Bad input is a 4xx with a fixed
``detail``; a full pool is a 503 with ``Retry-After``.

Operations: ``/health`` (liveness) and ``/ready`` (readiness) are always open and never wait for
the pool; ``/metrics`` is Prometheus; every answer carries ``X-Request-ID`` and one JSON log line
(:mod:`service.middleware`); optional API keys; CORS off unless configured; ``POST
/v1/admin/reload`` or SIGHUP reloads and verifies the store while the old objects keep serving,
and so does a change of the store's packages, looked for every ``watch_store_s``
(:mod:`service.lifecycle`).
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from cloudpose.settings import Settings
from cloudpose.store.package import user_store_path
from service import schemas
from service.compute import PoseWorkers
from service.deps import require_key
from service.errors import add_error_handlers
from service.lifecycle import lifespan
from service.metrics import ServiceMetrics
from service.middleware import BodySizeLimit, RequestGuard
from service.openapi import openapi_document
from service.routes import admin, frames, health, objects, pose, viewer
from service.web import WEB_ROOT


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. Settings come from the environment unless given."""
    settings = settings if settings is not None else Settings()
    if settings.store is None and settings.user_store is None:
        # Fixed once, so a reload and the hard-cloud processes read the same folder.
        settings = settings.model_copy(update={"user_store": user_store_path()})
    metrics = ServiceMetrics()
    # /docs with Swagger UI served from the package, not a CDN (/redoc: service.routes.viewer).
    app = FastAPIOffline(
        redoc_url=None,
        title="cloudpose",
        summary="Rigid pose of known objects in point clouds",
        version="0.3.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.workers = PoseWorkers(
        settings.pool_threads,
        settings.queue_limit,
        settings.hard_lanes,
        settings.slow_after_ms / 1000,
        hard_in_processes=settings.hard_processes,
    )
    app.state.hard = None  # the hard-cloud processes, started by the lifespan when configured
    app.state.api_keys = [key.encode() for key in settings.keys()]

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.origins():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.origins(),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "x-api-key", "content-type", "x-request-id"],
            expose_headers=["x-request-id", "retry-after"],
        )
    app.add_middleware(RequestGuard, body_timeout_s=settings.body_timeout_s, metrics=metrics)
    add_error_handlers(app)

    # Routes declare the key only when keys are configured, so the OpenAPI document tells the truth.
    guarded = {
        "dependencies": [Depends(require_key)] if app.state.api_keys else [],
        "responses": schemas.error_responses(401) if app.state.api_keys else {},
    }
    app.include_router(health.router)
    for module in (objects, admin, pose, frames):
        app.include_router(module.router, **guarded)
    app.mount(viewer.STATIC_PATH, StaticFiles(directory=WEB_ROOT), name="viewer-static")
    app.include_router(viewer.pages)
    app.include_router(viewer.router, **guarded)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    metrics.expose(
        app,
        dependencies=guarded["dependencies"],
        responses={
            200: {
                "description": "Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **guarded["responses"],
        },
    )
    return app
