"""The HTTP API: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the model.

Every package of the object store is served (``/v1/objects/{name}/pose``); ``/v1/pose`` answers for
the default object. Routes stay thin: parse and validate the payload (``service.clouds``), run
the object's estimator (``service.objects``), shape the response. Bad input is a 4xx with a
fixed ``detail``.
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
from service.objects import ObjectPose, ServedObject
from service.settings import Settings
from service.store import ObjectStore, StoreError

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
async def get_objects(request: Request) -> ObjectRegistry:
    return request.app.state.objects


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


Refine = Annotated[
    bool,
    Query(
        description="Register the cloud against the object's surface after the network (order-free models)."
    ),
]
Units = Annotated[
    str | None,
    Query(
        description="What the points are in (mm, cm, m, in, ...); the answer comes back in them. "
        "Without it, a cloud whose size does not fit the object is tried at the usual unit scales."
    ),
]
Objects = Annotated["ObjectRegistry", Depends(get_objects)]
ServiceSettings = Annotated[Settings, Depends(get_settings)]


class ObjectRegistry:
    """The served objects by name, and the one ``/v1/pose`` answers for."""

    def __init__(self, objects: dict[str, ServedObject], default: str | None) -> None:
        self.objects = objects
        self.default = default

    @classmethod
    def load(cls, settings: Settings) -> ObjectRegistry:
        """Every package of the store (or the one bare model); raises StoreError when there is none."""
        if settings.model_path is not None:
            served = ServedObject.from_model(settings.model_path, threads=settings.threads)
            return cls({served.name: served}, served.name)
        store = ObjectStore(settings.store)
        names = store.names()
        if not names:
            raise StoreError(
                f"the object store {settings.store} holds no objects: add one with "
                "`cloudpose object add NAME MESH_FILE`, or serve a model with --model"
            )
        objects = {
            name: ServedObject.from_package(store.get(name), threads=settings.threads) for name in names
        }
        default = settings.default_object if settings.default_object in objects else None
        if default is None and len(objects) == 1:
            default = names[0]
        return cls(objects, default)

    def get(self, name: str | None) -> ServedObject:
        """The object of that name (the default for None); 404 with the known names otherwise."""
        known = ", ".join(self.objects)
        if name is None:
            if self.default is None:
                raise CloudError(
                    404,
                    f"no default object is set: use /v1/objects/NAME/pose (known objects: {known}) or "
                    "start the service with CLOUDPOSE_DEFAULT_OBJECT=NAME",
                )
            return self.objects[self.default]
        if name not in self.objects:
            raise CloudError(404, f"unknown object {name!r}; known objects: {known}")
        return self.objects[name]


# Up to this many points in a request, inference runs on the event loop: an exam model answers
# in well under a millisecond and a refined order-free pose in a few, while a hop to the thread
# pool and back cost about 2 ms on a 2-core machine (benchmarks/latency.py, N = 2048 with
# refinement). Larger requests go to the pool so the event loop keeps answering meanwhile.
INLINE_ESTIMATE_POINTS = 16_384


async def estimate(
    served: ServedObject, clouds: list[np.ndarray], refine: bool, units: str | None
) -> list[ObjectPose]:
    """``served.estimate(clouds)``; inline for requests of up to ``INLINE_ESTIMATE_POINTS``
    points, in the thread pool for larger ones."""
    if sum(len(cloud) for cloud in clouds) <= INLINE_ESTIMATE_POINTS:
        return served.estimate(clouds, refine, units)
    return await run_in_threadpool(served.estimate, clouds, refine, units)


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


async def read_clouds(
    request: Request, settings: Settings, batch: bool
) -> tuple[list[np.ndarray], list[str | None], str | None]:
    """Clouds from a JSON body or a multipart upload (field ``file``; ``files`` for a batch).

    Returns:
        The clouds, the uploaded file names (None for JSON clouds), and the body's ``units``
        field when the JSON body has one.
    """
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
        clouds = [
            read_cloud_file(upload.filename or "", await upload.read(), settings.max_points)
            for upload in uploads
        ]
        return clouds, [upload.filename for upload in uploads], None
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
    units = payload.get("units") if isinstance(payload, dict) else None
    if units is not None and not isinstance(units, str):
        raise CloudError(422, '\'units\' must be a unit name such as "mm", "m" or "in"')
    if not batch:
        if not isinstance(payload, dict) or "points" not in payload:
            raise CloudError(422, "JSON body must be an object with a 'points' list of [x, y, z] triples")
        return [as_cloud(payload["points"], settings.max_points)], [None], units
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
    return result, [None] * len(result), units


def _units(query: str | None, body: str | None) -> str | None:
    if query is not None and body is not None and query != body:
        raise CloudError(422, f"units given twice and differently: ?units={query} and 'units': {body!r}")
    return query if query is not None else body


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. Settings come from the environment unless given."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.objects = ObjectRegistry.load(settings)
        yield

    app = FastAPI(
        title="cloudpose",
        summary="Rigid pose of known objects in point clouds",
        version="0.2.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(CloudError)
    async def cloud_error(_: Request, error: CloudError) -> Response:
        return json_response({"detail": error.detail}, status_code=error.status)

    @app.get("/health")
    async def health(objects: Objects) -> dict[str, Any]:
        """Liveness, the served objects and the default object's model id."""
        default = objects.objects.get(objects.default) if objects.default else None
        return {
            "status": "ok",
            "model_id": default.model_id if default else None,
            "objects": list(objects.objects),
        }

    @app.get("/v1/objects")
    async def list_objects(objects: Objects) -> Response:
        """Every served object: name, units, size, symmetry, model id, bench figures."""
        return json_response(
            {
                "objects": [served.describe() for served in objects.objects.values()],
                "default": objects.default,
            }
        )

    @app.get("/v1/objects/{name}")
    async def describe_object(name: str, objects: Objects) -> Response:
        """One served object."""
        return json_response(objects.get(name).describe())

    @app.get("/v1/model")
    def model(objects: Objects, settings: ServiceSettings) -> Response:
        """The default object's model: kind, expected N, convention, units, metrics, limits."""
        served = objects.get(None)
        description = served.estimator.describe()
        description["object"] = served.describe()
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

    async def answer_one(request: Request, served: ServedObject, refine: bool, units: str | None) -> Response:
        started = time.perf_counter()
        (points,), _, body_units = await read_clouds(request, settings, batch=False)
        served.check_cloud(points)
        (result,) = await estimate(served, [points], refine, _units(units, body_units))
        return json_response(
            {
                **result.to_dict(),
                "object": served.name,
                "model_id": served.model_id,
                "n_points": int(points.shape[0]),
                "server_time_ms": (time.perf_counter() - started) * 1000,
            }
        )

    async def answer_batch(
        request: Request, served: ServedObject, refine: bool, units: str | None
    ) -> Response:
        started = time.perf_counter()
        clouds, names, body_units = await read_clouds(request, settings, batch=True)
        for index, points in enumerate(clouds):
            served.check_cloud(points, where=f"clouds[{index}]")
        results = await estimate(served, clouds, refine, _units(units, body_units))
        return json_response(
            {
                "poses": [
                    {**result.to_dict(), "n_points": int(points.shape[0]), **({"file": name} if name else {})}
                    for result, points, name in zip(results, clouds, names, strict=True)
                ],
                "object": served.name,
                "model_id": served.model_id,
                "server_time_ms": (time.perf_counter() - started) * 1000,
            }
        )

    @app.post("/v1/pose", openapi_extra=body_doc)
    async def pose(
        request: Request, objects: Objects, refine: Refine = True, units: Units = None
    ) -> Response:
        """Pose of one cloud of the default object: JSON ``{"points": [[x, y, z], ...]}`` or a file."""
        return await answer_one(request, objects.get(None), refine, units)

    @app.post("/v1/pose/batch", openapi_extra=batch_doc)
    async def pose_batch(
        request: Request, objects: Objects, refine: Refine = True, units: Units = None
    ) -> Response:
        """Poses of several clouds of the default object: JSON ``{"clouds": [...]}`` or files."""
        return await answer_batch(request, objects.get(None), refine, units)

    @app.post("/v1/objects/{name}/pose", openapi_extra=body_doc)
    async def object_pose(
        name: str, request: Request, objects: Objects, refine: Refine = True, units: Units = None
    ) -> Response:
        """Pose of one cloud of the named object (file frame, the cloud's units)."""
        return await answer_one(request, objects.get(name), refine, units)

    @app.post("/v1/objects/{name}/pose/batch", openapi_extra=batch_doc)
    async def object_pose_batch(
        name: str, request: Request, objects: Objects, refine: Refine = True, units: Units = None
    ) -> Response:
        """Poses of several clouds of the named object."""
        return await answer_batch(request, objects.get(name), refine, units)

    return app
