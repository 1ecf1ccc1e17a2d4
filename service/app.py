"""The HTTP API: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the object store.

Every package of the object store is served (``/v1/objects/{name}/pose``); ``/v1/pose`` answers for
the default object. Routes stay thin: read the body on the event loop, then parse, check and
estimate in one job of the bounded pose pool (``service.compute``) under a compute budget
(``cloudpose.budget``), and send the answer. Bad input is a 4xx with a fixed ``detail``; a full
pool is a 503 with ``Retry-After``.

Operations: ``/health`` (liveness) and ``/ready`` (readiness) are always open and never wait for
the pool; ``/metrics`` is Prometheus; every answer carries ``X-Request-ID`` and one JSON log line;
optional API keys; CORS off unless configured; ``POST /v1/admin/reload`` or SIGHUP reloads and
verifies the store while the old objects keep serving, and so does a change of the store's
packages, looked for every ``watch_store_s``.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import re
import signal
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudpose.budget import Budget, TurnedHard
from cloudpose.estimation.served import ObjectPose, ObjectRegistry, ServedObject
from cloudpose.io.clouds import CloudError, as_cloud, read_cloud_file, read_frame_file
from cloudpose.settings import Settings
from cloudpose.store.package import UNITS_M, StoreError, user_store_path
from service import schemas
from service.bodies import BodyTooLarge, BodyTooSlow
from service.compute import PoseWorkers, Saturated
from service.hard import HardProcesses
from service.metrics import ServiceMetrics
from service.web import add_request_examples, mount_web

access_log = logging.getLogger("cloudpose.access")
logger = logging.getLogger("cloudpose.service")

REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
RETRY_AFTER_S = 1


def _error_message(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"detail": detail}), status_code=status, media_type="application/json", headers=headers
    )


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
        response = _error_message(
            413,
            f"request body is larger than this service's limit of {self.max_bytes} bytes",
            {"connection": "close"},
        )
        await response(scope, receive, send)


class RequestGuard:
    """Outermost ASGI middleware: request id, one access-log line, the body deadline, and quiet
    client disconnects.

    - ``X-Request-ID``: the client's (if it is a short token) or a new one; echoed in the answer.
    - The body must arrive within ``body_timeout_s`` of the request's start: else 408 and the
      connection is closed (a client sending a byte every few seconds holds nothing for long).
    - A client that goes away mid-request is one log line, never a traceback.
    """

    def __init__(self, app: ASGIApp, body_timeout_s: float, metrics: ServiceMetrics) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        deadline = time.monotonic() + self.body_timeout_s
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise BodyTooSlow from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        outcome = None
        try:
            await self.app(scope, timed_receive, tagged_send)
        except BodyTooSlow:
            outcome = "body too slow"
            if not status:
                response = _error_message(
                    408,
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    {"connection": "close"},
                )
                await response(scope, receive, tagged_send)
        except ClientDisconnect:
            outcome = "client disconnected"
        finally:
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status or None,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                    **({"outcome": outcome} if outcome else {}),
                },
            )


# Dependencies and cheap endpoints are ``async def``: FastAPI runs plain ``def`` ones in the
# thread pool, a thread hop per call that costs more than the work they do.
async def get_objects(request: Request) -> ObjectRegistry:
    return request.app.state.objects


BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
HEADER_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    key: Annotated[str | None, Depends(HEADER_KEY)],
) -> None:
    """With API keys configured, a valid one is needed (compared in constant time)."""
    api_keys: list[bytes] = request.app.state.api_keys
    if not api_keys:
        return
    # Every credential offered must be valid: a wrong Authorization beside a right X-API-Key is
    # still refused. An Authorization that is not Bearer offers an empty (invalid) key.
    offered = []
    if "authorization" in request.headers:
        offered.append(credentials.credentials if credentials else "")
    if key is not None:
        offered.append(key)
    if not offered or not all(_valid_key(candidate.encode(), api_keys) for candidate in offered):
        raise CloudError(401, "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key'")


def _valid_key(offered: bytes, api_keys: list[bytes]) -> bool:
    matched = False
    for valid in api_keys:  # every key is compared, so timing tells nothing about which
        matched |= hmac.compare_digest(offered, valid)
    return matched


Refine = Annotated[
    bool,
    Query(
        description="Register the cloud against the object's surface after the network (order-free models)."
    ),
]
Units = Annotated[
    str | None,
    Query(
        json_schema_extra={"enum": list(UNITS_M)},
        description="What the points are in; the answer comes back in them. Without it, a cloud "
        "whose size does not fit the object is tried at the usual unit scales.",
    ),
]
Objects = Annotated[ObjectRegistry, Depends(get_objects)]
ObjectName = Annotated[str, "the object's name, as listed by GET /v1/objects"]


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def _request_units(query: str | None, body: str | None) -> str | None:
    """The cloud's declared unit: the query's or the body's, which must agree."""
    if query is not None and body is not None and query != body:
        raise CloudError(422, f"units given twice and differently: ?units={query} and 'units': {body!r}")
    return query if query is not None else body


def json_payload(body: bytes) -> tuple[Any, str | None]:
    """A JSON body and its ``units`` field (in a worker thread: parsing is CPU work)."""
    if not body:
        raise CloudError(400, 'empty request body: send JSON like {"points": [[x, y, z], ...]}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise CloudError(400, f"malformed JSON: {error}") from error
    units = payload.get("units") if isinstance(payload, dict) else None
    if units is not None and not isinstance(units, str):
        raise CloudError(422, '\'units\' must be a unit name such as "mm", "m" or "in"')
    return payload, units


def clouds_from_json(body: bytes, settings: Settings, batch: bool) -> tuple[list[np.ndarray], str | None]:
    """Clouds and the ``units`` field of a JSON body."""
    payload, units = json_payload(body)
    if not batch:
        if not isinstance(payload, dict) or "points" not in payload:
            raise CloudError(422, "JSON body must be an object with a 'points' list of [x, y, z] triples")
        return [as_cloud(payload["points"], settings.max_points)], units
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
    return result, units


async def read_body(request: Request, settings: Settings, batch: bool) -> tuple[str, Any]:
    """The raw request on the event loop: ``("json", bytes)`` or ``("files", [(name, bytes)])``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=settings.max_batch, max_part_size=settings.max_body_bytes)
        except (BodyTooLarge, BodyTooSlow, ClientDisconnect):
            raise
        except HTTPException as error:  # starlette's 400 for a broken body or a multipart limit
            if str(error.detail).startswith("Too many files"):
                raise CloudError(
                    413, f"too many clouds: more files than limit {settings.max_batch}"
                ) from error
            raise CloudError(400, "malformed multipart body") from error
        except Exception as error:  # python-multipart raises several types for broken bodies
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
        return "files", [(upload.filename or "", await upload.read()) for upload in uploads]
    if content_type not in ("application/json", ""):
        raise CloudError(
            415, f"unsupported content type {content_type!r}; send application/json or multipart/form-data"
        )
    return "json", await request.body()


def decode_clouds(
    kind: str, raw: Any, settings: Settings, batch: bool
) -> tuple[list[np.ndarray], list[str | None], str | None]:
    """Clouds, their file names (None for JSON) and the body's units, from :func:`read_body`'s result."""
    if kind == "files":
        clouds = [read_cloud_file(name, data, settings.max_points) for name, data in raw]
        return clouds, [name for name, _ in raw], None
    clouds, units = clouds_from_json(raw, settings, batch)
    return clouds, [None] * len(clouds), units


DEPTH_FIELDS = ("fx", "fy", "cx", "cy", "depth_scale")


async def read_frame_body(
    request: Request, settings: Settings, texts: tuple[str, ...] = ()
) -> tuple[str, Any, dict[str, str]]:
    """A frame request's raw frame on the event loop: ``("json", bytes)``, ``("file", (name,
    bytes))`` for a cloud file, or ``("depth", (name, bytes, fields))`` for a depth image; and the
    multipart text fields named in ``texts`` that the body holds."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        kind, raw = await read_body(request, settings, batch=False)
        return kind, raw, {}
    try:
        form = await request.form(max_files=2, max_part_size=settings.max_body_bytes)
    except (BodyTooLarge, BodyTooSlow, ClientDisconnect):
        raise
    except Exception as error:  # starlette's 400s and python-multipart's own types
        raise CloudError(400, "malformed multipart body") from error
    files = {key: value for key, value in form.multi_items() if hasattr(value, "read")}
    if set(files) - {"file", "depth"} or len(files) != 1:
        raise CloudError(
            422,
            "send one frame: a cloud file in the multipart field 'file', or a depth image (.png, "
            ".npy) in 'depth' with the fields fx, fy, cx, cy (and depth_scale)",
        )
    ((field, upload),) = files.items()
    data = await upload.read()
    extra = {key: form[key] for key in texts if isinstance(form.get(key), str)}
    if field == "file":
        return "file", (upload.filename or "", data), extra
    fields = {key: form.get(key) for key in DEPTH_FIELDS if isinstance(form.get(key), str)}
    return "depth", (upload.filename or "", data, fields), extra


def decode_frame(
    kind: str, raw: Any, settings: Settings, units: str | None = None
) -> tuple[np.ndarray, str | None, np.ndarray | None]:
    """The frame's points, the body's units and its viewpoint, from :func:`read_frame_body`
    (``units``: the request's ``?units=``, which a depth image cannot take)."""
    from cloudpose.io.frames import depth_frame_points

    if kind == "depth" and units not in (None, "m"):
        raise CloudError(
            422, "a depth image gives points in metres (depth_scale sets its raw unit): leave out ?units="
        )
    limit = settings.max_frame_points
    if kind == "file":
        name, data = raw
        return read_frame_file(name, data, limit), None, None
    if kind == "depth":
        name, data, fields = raw
        return depth_frame_points(name, data, fields, limit), None, None
    payload, units = json_payload(raw)
    points, viewpoint = frame_from_payload(payload, limit)
    return points, units, viewpoint


def frame_from_payload(payload: Any, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A JSON frame body's points and viewpoint."""
    if not isinstance(payload, dict) or "points" not in payload:
        raise CloudError(422, "JSON body must be an object with a 'points' list of [x, y, z] triples")
    viewpoint = None
    if payload.get("viewpoint") is not None:
        viewpoint = as_cloud([payload["viewpoint"]], 1, where="viewpoint")[0]
    return as_cloud(payload["points"], limit), viewpoint


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. Settings come from the environment unless given."""
    settings = settings if settings is not None else Settings()
    if settings.store is None and settings.user_store is None:
        # Fixed once, so a reload and the hard-cloud processes read the same folder.
        settings = settings.model_copy(update={"user_store": user_store_path()})
    metrics = ServiceMetrics()
    workers = PoseWorkers(
        settings.pool_threads,
        settings.queue_limit,
        settings.hard_lanes,
        settings.slow_after_ms / 1000,
        hard_in_processes=settings.hard_processes,
    )
    hard: list[HardProcesses] = []  # the current hard-cloud processes, replaced on reload
    api_keys = [key.encode() for key in settings.keys()]

    async def reload_objects(app: FastAPI) -> ObjectRegistry:
        """Load and verify the store beside the served one, then swap; requests in flight keep
        the objects they started with. Raises StoreError (the old objects stay)."""
        async with app.state.reload_lock:
            try:
                registry = await asyncio.to_thread(ObjectRegistry.load, settings)
            except StoreError as error:
                logger.error("reload refused, still serving the previous objects: %s", error)
                raise
            app.state.objects = registry
            if hard:
                # Fresh processes load the new store; the old ones finish their jobs and end.
                old, hard[0] = hard[0], HardProcesses(settings, settings.hard_lanes)
                old.shutdown()
            metrics.models(registry.model_ids())
            logger.info("reloaded the object store: %s", registry.model_ids())
            return registry

    async def watch_store(app: FastAPI) -> None:
        """Reload when a package of the served stores is added, replaced or removed: packages are
        renamed into place whole (cloudpose.store.package), so a change seen is a complete package. A
        broken one is refused once (logged) and tried again when the store changes again."""
        store = settings.object_store()
        refused = None
        while True:
            await asyncio.sleep(settings.watch_store_s)
            try:
                signature = await asyncio.to_thread(store.signature)
            except OSError as error:
                logger.warning("cannot look at the object store %s: %s", store, error)
                continue
            if signature == app.state.objects.signature or signature == refused:
                continue
            logger.info("the object store %s changed: reloading", store)
            try:
                await reload_objects(app)
                refused = None
            except StoreError:
                refused = signature

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.reload_lock = asyncio.Lock()
        app.state.objects = ObjectRegistry.load(settings)
        metrics.models(app.state.objects.model_ids())
        workers.start()
        if settings.hard_processes:
            hard.append(HardProcesses(settings, settings.hard_lanes))
            workers.hard_ready = lambda: hard[0].ready()
        loop = asyncio.get_running_loop()

        def on_hangup() -> None:
            async def reload() -> None:
                try:
                    await reload_objects(app)
                except StoreError:
                    pass  # logged; the previous objects keep serving

            loop.create_task(reload())

        try:
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals
            pass
        watcher = None
        if settings.watch_store_s > 0 and settings.model_path is None:
            watcher = loop.create_task(watch_store(app))
        yield
        if watcher is not None:
            watcher.cancel()
        workers.stop()
        for processes in hard:
            processes.shutdown()

    # /docs with Swagger UI served from the package, not a CDN (/redoc: service.web).
    app = FastAPIOffline(
        redoc_url=None,
        title="cloudpose",
        summary="Rigid pose of known objects in point clouds",
        version="0.3.0",
        lifespan=lifespan,
    )
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

    # Routes declare the key only when keys are configured, so the OpenAPI document tells the truth.
    Authorized = [Depends(require_key)] if api_keys else []
    unauthorized = (401,) if api_keys else ()

    app.state.api_keys = api_keys

    @app.exception_handler(CloudError)
    async def cloud_error(_: Request, error: CloudError) -> Response:
        headers = {"www-authenticate": "Bearer"} if error.status == 401 else None
        return _error_message(error.status, error.detail, headers)

    @app.exception_handler(Saturated)
    async def saturated(_: Request, error: Saturated) -> Response:
        return _error_message(
            503, f"busy: {error}; retry in {RETRY_AFTER_S} s", {"retry-after": str(RETRY_AFTER_S)}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(_: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        return _error_message(422, f"invalid request parameters: {problems}")

    @app.get("/health", response_model=schemas.Health)
    async def health(request: Request) -> Response:
        """Liveness: the process answers. Never waits for the pose workers; needs no key."""
        objects: ObjectRegistry = request.app.state.objects
        default = objects.objects.get(objects.default) if objects.default else None
        return json_response(
            {
                "status": "ok",
                "model_id": default.model_id if default else None,
                "objects": list(objects.objects),
            }
        )

    @app.get(
        "/ready",
        response_model=schemas.Ready,
        responses={503: {"model": schemas.Ready, "description": "Busy: the pose workers are full."}},
    )
    async def ready() -> Response:
        """Readiness: objects loaded and room in the pose workers (503 while saturated).
        ``hard_processes`` says whether the hard-cloud processes have loaded the store (until
        then, and for a moment after a reload, hard clouds get their best pose at once)."""
        busy = workers.saturated()
        hard_state = "off" if not hard else "ready" if hard[0].ready() else "loading"
        return Response(
            orjson.dumps(
                {
                    "status": "busy" if busy else "ready",
                    "pending": workers.pending,
                    "capacity": workers.threads + workers.queue_limit,
                    "hard_processes": hard_state,
                }
            ),
            status_code=503 if busy else 200,
            media_type="application/json",
            headers={"retry-after": str(RETRY_AFTER_S)} if busy else None,
        )

    @app.get(
        "/v1/objects",
        response_model=schemas.ObjectList,
        dependencies=Authorized,
        responses=schemas.error_responses(*unauthorized),
    )
    async def list_objects(objects: Objects) -> Response:
        """Every served object: name, units, size, symmetry, model id, bench figures."""
        return json_response(
            {
                "objects": [served.describe() for served in objects.objects.values()],
                "default": objects.default,
            }
        )

    @app.get(
        "/v1/objects/{name}",
        response_model=schemas.ObjectDescription,
        dependencies=Authorized,
        responses=schemas.error_responses(*unauthorized, 404, 422),
    )
    async def describe_object(name: ObjectName, objects: Objects) -> Response:
        """One served object."""
        return json_response(objects.get(name).describe())

    @app.get(
        "/v1/model",
        response_model=schemas.ModelDescription,
        dependencies=Authorized,
        responses=schemas.error_responses(*unauthorized, 404),
    )
    async def model(objects: Objects) -> Response:
        """The default object's model: kind, expected N, convention, units, limits, and its figures:
        ``metrics.served`` (network + refinement, as served) beside ``metrics.network_only``."""
        served = objects.get(None)
        description = served.estimator.describe()
        description["object"] = served.describe()
        # The labelled card (served figures and the network's alone), not the bare validation figures.
        description["metrics"] = description["object"]["metrics"]
        description["limits"] = {
            "max_points": settings.max_points,
            "max_body_bytes": settings.max_body_bytes,
            "max_batch": settings.max_batch,
            "pose_budget_ms": settings.pose_budget_ms,
            "batch_budget_s": settings.batch_budget_s,
        }
        return json_response(description)

    @app.post(
        "/v1/admin/reload",
        response_model=schemas.Reloaded,
        responses=schemas.error_responses(*unauthorized, 403, 409),
        dependencies=Authorized,
    )
    async def admin_reload(request: Request) -> Response:
        """Reload and verify the object store; the old objects serve until the new ones are ready
        (a broken package is refused and nothing changes). Needs API keys to be configured."""
        if not api_keys:
            raise CloudError(403, "admin routes are off: start the service with CLOUDPOSE_API_KEYS set")
        try:
            registry = await reload_objects(request.app)
        except StoreError as error:
            raise CloudError(409, f"reload refused, still serving the previous objects: {error}") from error
        return json_response({"objects": registry.model_ids()})

    pose_errors = schemas.error_responses(400, *unauthorized, 404, 408, 413, 415, 422, 503)

    def body_doc(model: type[schemas.BaseModel], file_field: str, many: bool) -> dict[str, Any]:
        binary = {"type": "string", "format": "binary"}
        return {
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": schemas.inline_schema(model)},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": [file_field],
                            "properties": {
                                file_field: {"type": "array", "items": binary, "minItems": 1}
                                if many
                                else binary
                            },
                        }
                    },
                },
            }
        }

    def estimate_clouds(
        served: ServedObject, clouds: list[np.ndarray], refine: bool, units: str | None
    ) -> list[ObjectPose]:
        """Each cloud under its budget (the per-cloud allowance, within the batch's cap); a cloud
        that turns out to be hard goes, with the rest of the request, to a hard-cloud process,
        or gets its best pose at once when those are all busy."""
        per_cloud_s = settings.pose_budget_ms / 1000
        total_s = min(settings.batch_budget_s, per_cloud_s * len(clouds))
        batch_end, end_wall = time.monotonic() + total_s, time.time() + total_s

        def left() -> float:
            return max(0.0, min(per_cloud_s, batch_end - time.monotonic()))

        try:
            return served.estimate(clouds, refine, units, budgets=lambda: workers.budget(left(), per_cloud_s))
        except TurnedHard as turned:
            rest = clouds[len(turned.answered) :]
            answers = (
                hard[0].estimate(served.name, rest, refine, units, per_cloud_s, end_wall) if hard else None
            )
            where = "process" if answers is not None else "at once"
            if answers is None:  # every hard-cloud process is busy: the best pose within what is left
                answers = served.estimate(
                    rest, refine, units, budgets=lambda: Budget(left(), nominal_s=per_cloud_s)
                )
            metrics.hard_clouds.labels(served.name, where).inc(len(rest))
            return turned.answered + answers

    def pose_job(
        served: ServedObject,
        kind: str,
        raw: Any,
        refine: bool,
        units: str | None,
        batch: bool,
        request_id: str,
    ) -> bytes:
        """Parse, check and estimate (a worker thread); returns the JSON answer."""
        started = time.perf_counter()
        clouds, names, body_units = decode_clouds(kind, raw, settings, batch)
        units = _request_units(units, body_units)
        for index, points in enumerate(clouds):
            served.check_cloud(points, where=f"clouds[{index}]" if batch else "points")
        results = estimate_clouds(served, clouds, refine, units)
        metrics.observe(served, results, time.perf_counter() - started)
        answers = [
            {**result.to_dict(), "n_points": int(points.shape[0]), **({"file": name} if name else {})}
            for result, points, name in zip(results, clouds, names, strict=True)
        ]
        common = {
            "object": served.name,
            "model_id": served.model_id,
            "server_time_ms": (time.perf_counter() - started) * 1000,
        }
        if batch:
            return orjson.dumps({"poses": answers, **common})
        return orjson.dumps({**answers[0], **common, "request_id": request_id})

    async def answer(
        request: Request, served: ServedObject, refine: bool, units: str | None, batch: bool
    ) -> Response:
        kind, raw = await read_body(request, settings, batch)
        request_id = request.scope["state"].get("request_id", "")
        metrics.queue(workers.pending + 1)
        try:
            body = await workers.run(
                lambda: pose_job(served, kind, raw, refine, units, batch, request_id),
                settings.queue_timeout_s,
            )
        finally:
            metrics.queue(workers.pending)
        return Response(body, media_type="application/json")

    one_doc = body_doc(schemas.CloudBody, "file", many=False)
    batch_doc = body_doc(schemas.BatchBody, "files", many=True)

    def pose_route(path: str, batch: bool):
        """``app.post`` with a pose route's documented body, answer, errors and key."""
        return app.post(
            path,
            openapi_extra=batch_doc if batch else one_doc,
            response_model=schemas.BatchResponse if batch else schemas.PoseResponse,
            responses=pose_errors,
            dependencies=Authorized,
        )

    @pose_route("/v1/pose", batch=False)
    async def pose(
        request: Request, objects: Objects, refine: Refine = True, units: Units = None
    ) -> Response:
        """Pose of one cloud of the default object: JSON ``{"points": [[x, y, z], ...]}`` or a file
        (.ply, .pcd, .xyz, .npy) in the multipart field ``file``."""
        return await answer(request, objects.get(None), refine, units, batch=False)

    @pose_route("/v1/pose/batch", batch=True)
    async def pose_batch(
        request: Request, objects: Objects, refine: Refine = True, units: Units = None
    ) -> Response:
        """Poses of several clouds of the default object: JSON ``{"clouds": [...]}`` or files."""
        return await answer(request, objects.get(None), refine, units, batch=True)

    @pose_route("/v1/objects/{name}/pose", batch=False)
    async def object_pose(
        name: ObjectName, request: Request, objects: Objects, refine: Refine = True, units: Units = None
    ) -> Response:
        """Pose of one cloud of the named object (file frame, the cloud's units)."""
        return await answer(request, objects.get(name), refine, units, batch=False)

    @pose_route("/v1/objects/{name}/pose/batch", batch=True)
    async def object_pose_batch(
        name: ObjectName, request: Request, objects: Objects, refine: Refine = True, units: Units = None
    ) -> Response:
        """Poses of several clouds of the named object."""
        return await answer(request, objects.get(name), refine, units, batch=True)

    def detect_job(
        objects: dict[str, ServedObject],
        kind: str,
        raw: Any,
        units: str | None,
        max_instances: int | None,
        request_id: str,
    ) -> bytes:
        """Parse the frame and find every instance (a worker thread); returns the JSON answer."""
        from cloudpose.detection.detect import detect

        started = time.perf_counter()
        points, body_units, viewpoint = decode_frame(kind, raw, settings, units)
        units = _request_units(units, body_units) or "m"
        report = detect(points, objects, units, viewpoint, max_instances, budget_s=settings.detect_budget_s)
        return orjson.dumps(
            {
                **report.answer(len(points), settings.detect_budget_s),
                "server_time_ms": (time.perf_counter() - started) * 1000,
                "request_id": request_id,
            }
        )

    detect_doc = body_doc(schemas.DetectBody, "file", many=False)
    detect_doc["requestBody"]["content"]["multipart/form-data"]["schema"] = {
        "type": "object",
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "A cloud file of the frame."},
            "depth": {
                "type": "string",
                "format": "binary",
                "description": "A depth image (16-bit .png or .npy (H, W)), with the intrinsics.",
            },
            **{name: {"type": "number"} for name in DEPTH_FIELDS},
        },
    }

    @app.post(
        "/v1/detect",
        openapi_extra=detect_doc,
        response_model=schemas.DetectResponse,
        responses=pose_errors,
        dependencies=Authorized,
    )
    async def detect_route(
        request: Request,
        registry: Objects,
        objects: Annotated[
            str | None,
            Query(description="Comma-separated object names to look for (default: every served object)."),
        ] = None,
        max_instances: Annotated[int | None, Query(ge=1, description="At most this many detections.")] = None,
        units: Units = None,
    ) -> Response:
        """Every instance of the known objects in a whole sensor frame: JSON ``{"points": [...]}``
        (sensor frame, metres unless ``units``), a cloud file in ``file`` (organized clouds may
        mark missing returns with NaN), or a depth image in ``depth`` with ``fx``, ``fy``, ``cx``,
        ``cy`` (and ``depth_scale``), back-projected on the server. Each detection's pose follows
        ``/v1/pose``'s convention."""
        names = list(registry.objects)
        if objects is not None:
            names = [name.strip() for name in objects.split(",") if name.strip()]
        chosen = {name: registry.get(name) for name in names}
        if not chosen:
            raise CloudError(422, "objects names no object: give comma-separated names, or leave it out")
        kind, raw, _ = await read_frame_body(request, settings)
        request_id = request.scope["state"].get("request_id", "")
        body = await workers.run(
            lambda: detect_job(chosen, kind, raw, units, max_instances, request_id), settings.queue_timeout_s
        )
        return Response(body, media_type="application/json")

    def track_job(
        objects: dict[str, ServedObject],
        kind: str,
        raw: Any,
        previous_text: str | None,
        units: str | None,
        request_id: str,
    ) -> bytes:
        """Parse the frame and the previous poses, and follow each (a worker thread)."""
        from cloudpose.detection.track import PreviousPose, track

        started = time.perf_counter()
        if kind == "json":
            payload, body_units = json_payload(raw)
            points, viewpoint = frame_from_payload(payload, settings.max_frame_points)
            previous = payload.get("previous")
        else:
            points, body_units, viewpoint = decode_frame(kind, raw, settings, units)
            if previous_text is None:
                raise CloudError(422, "a multipart track request needs the field 'previous' (a JSON list)")
            try:
                previous = orjson.loads(previous_text)
            except orjson.JSONDecodeError:
                raise CloudError(422, "the field 'previous' is not valid JSON") from None
        poses = PreviousPose.parse(previous, objects)
        report = track(points, objects, poses, _request_units(units, body_units) or "m", viewpoint)
        return orjson.dumps(
            {
                "tracks": report.answers(poses),
                "lost": report.lost,
                "n_points": int(len(points)),
                "server_time_ms": (time.perf_counter() - started) * 1000,
                "request_id": request_id,
            }
        )

    track_doc = body_doc(schemas.TrackBody, "file", many=False)
    track_doc["requestBody"]["content"]["multipart/form-data"]["schema"] = copy.deepcopy(
        detect_doc["requestBody"]["content"]["multipart/form-data"]["schema"]
    )
    track_doc["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["previous"] = {
        "type": "string",
        "description": "JSON list of the previous poses: [{object, rotation, translation}], as /v1/detect "
        "or /v1/track answered them.",
    }

    @app.post(
        "/v1/track",
        openapi_extra=track_doc,
        response_model=schemas.TrackResponse,
        responses=pose_errors,
        dependencies=Authorized,
    )
    async def track_route(request: Request, registry: Objects, units: Units = None) -> Response:
        """The instances of the frame before, followed into this frame (a sensor that moves, or
        parts that move, a little between frames): the same frame bodies as ``/v1/detect``, with
        the previous poses (``[{object, rotation, translation}]``, as ``/v1/detect`` answers
        them) in the JSON body's ``previous`` or the multipart field ``previous``. Each comes
        back, in order, followed or ``lost`` (moved too far, hidden, or gone: find it again
        with ``/v1/detect``)."""
        kind, raw, texts = await read_frame_body(request, settings, texts=("previous",))
        request_id = request.scope["state"].get("request_id", "")
        objects = dict(registry.objects)
        body = await workers.run(
            lambda: track_job(objects, kind, raw, texts.get("previous"), units, request_id),
            settings.queue_timeout_s,
        )
        return Response(body, media_type="application/json")

    mount_web(app, Authorized, unauthorized)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with the served object names as the values of ``{name}``."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
        document = copy.deepcopy(app.openapi_schema)
        registry = getattr(app.state, "objects", None)
        add_request_examples(document, registry)
        if registry is not None:
            for path in document["paths"].values():
                for operation in path.values():
                    for parameter in operation.get("parameters", []):
                        if parameter["in"] == "path" and parameter["name"] == "name":
                            parameter["schema"]["enum"] = list(registry.objects)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    metrics.expose(
        app,
        dependencies=Authorized,
        responses={
            200: {
                "description": "Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **schemas.error_responses(*unauthorized),
        },
    )
    return app
