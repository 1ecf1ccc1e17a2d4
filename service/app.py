"""The HTTP API: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the model.

Routes stay thin: parse and validate the payload (``service.clouds``), run the estimator
(``service.inference``), shape the response. Bad input is a 4xx with a fixed ``detail``.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.clouds import CloudError, as_cloud, read_cloud_file
from service.inference import Pose, PoseEstimator
from service.settings import Settings

JSON_BODY_EXAMPLE = {"points": [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]}


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware answering 413 for bodies over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body is larger than this service's limit of {self.max_bytes} bytes"},
            status_code=413,
        )
        await response(scope, receive, send)


# Dependencies and cheap endpoints are ``async def``: FastAPI runs plain ``def`` ones in the
# thread pool, a thread hop per call that costs more than the work they do.
async def get_estimator(request: Request) -> PoseEstimator:
    return request.app.state.estimator


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


Refine = Annotated[
    bool,
    Query(
        description="Register the cloud against the object's surface after the network (order-free models)."
    ),
]
Estimator = Annotated[PoseEstimator, Depends(get_estimator)]
ServiceSettings = Annotated[Settings, Depends(get_settings)]


# Up to this many points in a request, inference runs on the event loop: an exam model answers
# in well under a millisecond and a refined order-free pose in a few, while a hop to the thread
# pool and back cost about 2 ms on a 2-core machine (benchmarks/latency.py, N = 2048 with
# refinement). Larger requests go to the pool so the event loop keeps answering meanwhile.
INLINE_ESTIMATE_POINTS = 16_384


async def estimate(estimator: PoseEstimator, clouds: list[np.ndarray], refine: bool) -> list[Pose]:
    """``estimator.estimate(clouds)``; inline for requests of up to ``INLINE_ESTIMATE_POINTS``
    points, in the thread pool for larger ones."""
    if sum(len(cloud) for cloud in clouds) <= INLINE_ESTIMATE_POINTS:
        return estimator.estimate(clouds, refine)
    return await run_in_threadpool(estimator.estimate, clouds, refine)


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


async def read_clouds(request: Request, settings: Settings, batch: bool) -> list[np.ndarray]:
    """Clouds from a JSON body or a multipart upload (field ``file``; ``files`` for a batch)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=settings.max_batch, max_part_size=settings.max_body_bytes)
        except BodyTooLarge:  # a streamed body over the limit: BodySizeLimit answers 413
            raise
        except HTTPException as error:  # starlette's 400 for a broken body or a multipart limit
            if str(error.detail).startswith("Too many files"):
                raise CloudError(
                    413, f"too many clouds: more files than limit {settings.max_batch}"
                ) from error
            raise CloudError(400, "malformed multipart body") from error
        except Exception as error:  # starlette raises several types for broken multipart
            raise CloudError(400, "malformed multipart body") from error
        uploads = [
            value for key, value in form.multi_items() if key in ("file", "files") and hasattr(value, "read")
        ]
        if not uploads:
            raise CloudError(422, "multipart body has no file: upload the cloud in a field named 'file'")
        if not batch and len(uploads) > 1:
            raise CloudError(422, "send one file to /v1/pose, or several to /v1/pose/batch")
        if len(uploads) > settings.max_batch:
            raise CloudError(413, f"too many clouds: {len(uploads)} > limit {settings.max_batch}")
        return [
            read_cloud_file(upload.filename or "", await upload.read(), settings.max_points)
            for upload in uploads
        ]
    if content_type not in ("application/json", ""):
        raise CloudError(
            415, f"unsupported content type {content_type!r}; send application/json or multipart/form-data"
        )
    body = await request.body()
    if not body:
        raise CloudError(400, 'empty request body: send JSON like {"points": [[x, y, z], ...]}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise CloudError(400, f"malformed JSON: {error}") from error
    if not batch:
        if not isinstance(payload, dict) or "points" not in payload:
            raise CloudError(422, "JSON body must be an object with a 'points' list of [x, y, z] triples")
        return [as_cloud(payload["points"], settings.max_points)]
    clouds = payload.get("clouds") if isinstance(payload, dict) else None
    if not isinstance(clouds, list) or not clouds:
        raise CloudError(
            422, "JSON body must be an object with a non-empty 'clouds' list of {\"points\": [...]} objects"
        )
    if len(clouds) > settings.max_batch:
        raise CloudError(413, f"too many clouds: {len(clouds)} > limit {settings.max_batch}")
    result = []
    for index, cloud in enumerate(clouds):
        if not isinstance(cloud, dict) or "points" not in cloud:
            raise CloudError(422, f"clouds[{index}] must be an object with a 'points' list")
        result.append(as_cloud(cloud["points"], settings.max_points, where=f"clouds[{index}].points"))
    return result


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. Settings come from the environment unless given."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.estimator = PoseEstimator(settings.model_path, threads=settings.threads)
        yield

    app = FastAPI(
        title="cloudpose",
        summary="Rigid pose of a known object in a point cloud",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(CloudError)
    async def cloud_error(_: Request, error: CloudError) -> Response:
        return json_response({"detail": error.detail}, status_code=error.status)

    @app.get("/health")
    async def health(estimator: Estimator) -> dict[str, str]:
        """Liveness and the served model's id."""
        return {"status": "ok", "model_id": estimator.model_id}

    @app.get("/v1/model")
    def model(estimator: Estimator, settings: ServiceSettings) -> Response:
        """The served model: kind, expected N, convention, units, metrics, limits, template."""
        description = estimator.describe()
        description["limits"] = {
            "max_points": settings.max_points,
            "max_body_bytes": settings.max_body_bytes,
            "max_batch": settings.max_batch,
        }
        return json_response(description)

    body_doc = {
        "requestBody": {
            "content": {
                "application/json": {"example": JSON_BODY_EXAMPLE},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
            }
        }
    }

    @app.post("/v1/pose", openapi_extra=body_doc)
    async def pose(
        request: Request, estimator: Estimator, settings: ServiceSettings, refine: Refine = True
    ) -> Response:
        """Pose of one cloud: JSON ``{"points": [[x, y, z], ...]}`` or a file (.ply .pcd .xyz .npy)."""
        started = time.perf_counter()
        (points,) = await read_clouds(request, settings, batch=False)
        estimator.check_cloud(points)
        (result,) = await estimate(estimator, [points], refine)
        return json_response(
            {
                **result.to_dict(),
                "model_id": estimator.model_id,
                "n_points": int(points.shape[0]),
                "server_time_ms": (time.perf_counter() - started) * 1000,
            }
        )

    batch_doc = {
        "requestBody": {
            "content": {
                "application/json": {"example": {"clouds": [JSON_BODY_EXAMPLE, JSON_BODY_EXAMPLE]}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                        },
                    }
                },
            }
        }
    }

    @app.post("/v1/pose/batch", openapi_extra=batch_doc)
    async def pose_batch(
        request: Request, estimator: Estimator, settings: ServiceSettings, refine: Refine = True
    ) -> Response:
        """Poses of several clouds: JSON ``{"clouds": [{"points": [...]}, ...]}`` or files."""
        started = time.perf_counter()
        clouds = await read_clouds(request, settings, batch=True)
        for index, points in enumerate(clouds):
            estimator.check_cloud(points, where=f"clouds[{index}]")
        results = await estimate(estimator, clouds, refine)
        return json_response(
            {
                "poses": [
                    {**result.to_dict(), "n_points": int(points.shape[0])}
                    for result, points in zip(results, clouds, strict=True)
                ],
                "model_id": estimator.model_id,
                "server_time_ms": (time.perf_counter() - started) * 1000,
            }
        )

    return app
