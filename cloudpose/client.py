"""A typed Python client of the cloudpose HTTP API (httpx, numpy and pydantic only).

Example::

    from cloudpose import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.pose(points)  # (N, 3) array, a cloud file's path, or a list
        if result.found:
            canonical = result.to_canonical(points)  # points @ rotation + translation

numpy arrays go up as ``.npy`` uploads (exact float64, no JSON text), paths as the file they
name (any format the service reads: .ply, .pcd, .xyz, .npy...), plain lists as JSON. Answers come
back as the dataclasses of :mod:`cloudpose.results`, read through the wire models of
:mod:`cloudpose.wire`; a refusal raises the typed error of its status
(:class:`~cloudpose.results.InvalidCloud`, :class:`~cloudpose.results.NotFound`...) carrying the
service's ``detail``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from cloudpose import wire
from cloudpose.results import (
    BatchResult,
    CloudposeError,
    DetectResult,
    Health,
    ModelInfo,
    ObjectInfo,
    ObjectList,
    Overloaded,
    PoseResult,
    Ready,
    ServiceUnreachable,
    Track,
    TrackResult,
    error_for,
)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0
# Intrinsics fields of a depth image, as /v1/detect takes them.
INTRINSIC_FIELDS = ("fx", "fy", "cx", "cy", "depth_scale")

# A cloud: an (N, 3) array (sent as .npy), a path to a cloud file, or a list of [x, y, z] (JSON).
Cloud = np.ndarray | str | os.PathLike | Sequence[Sequence[float]]


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of an ``.npy`` file (``numpy.save``, never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))


def _upload(value: np.ndarray | str | os.PathLike, name: str) -> tuple[str, bytes, str]:
    """A multipart file: a path's bytes under its own name, or an array as ``name``."""
    if _is_path(value):
        path = Path(value)
        return path.name, path.read_bytes(), "application/octet-stream"
    return name, npy_bytes(value), "application/octet-stream"


def _query(**values: Any) -> dict[str, str]:
    """Query parameters, without the ones left out (None) and booleans as the service reads them."""
    return {
        key: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for key, value in values.items()
        if value is not None
    }


@dataclass
class Call:
    """One HTTP request and how its answer becomes a result."""

    method: str
    path: str
    parse: Callable[[httpx.Response], Any]
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None

    def arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"params": self.params}
        if self.json is not None:
            arguments["json"] = self.json
        if self.files is not None:
            arguments["files"] = self.files
        if self.data is not None:
            arguments["data"] = self.data
        return arguments


def _json(parse: Callable[[Any], Any]) -> Callable[[httpx.Response], Any]:
    return lambda response: parse(response.json())


def _geometry(data: Any) -> dict[str, Any]:
    """The geometry answer as its JSON, once it reads as the wire model says."""
    wire.Geometry.model_validate(data)
    return dict(data)


def raise_for_answer(response: httpx.Response) -> None:
    """Raise the typed error of a refusal (any status >= 400), with the service's ``detail``."""
    if response.status_code < 400:
        return
    try:
        detail = response.json()["detail"]
        detail = detail if isinstance(detail, str) else str(detail)
    except (ValueError, KeyError, TypeError):
        detail = response.text.strip() or response.reason_phrase
    retry_after = response.headers.get("retry-after")
    try:
        retry_after_s = float(retry_after) if retry_after is not None else None
    except ValueError:
        retry_after_s = None
    raise error_for(response.status_code, detail, response.headers.get("x-request-id"), retry_after_s)


class _Routes:
    """The requests of every route; :class:`Client` and :class:`AsyncClient` send them."""

    def __init__(
        self, base_url: str, api_key: str | None, timeout: float | httpx.Timeout, retries: int
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    @staticmethod
    def _object_path(object_name: str | None, route: str) -> str:
        if object_name is None:
            return f"/v1/{route}"
        return f"/v1/objects/{quote(object_name, safe='')}/{route}"

    def _health(self) -> Call:
        return Call("GET", "/health", _json(Health.from_json))

    def _ready(self) -> Call:
        # A busy service answers 503 with the same body: that is an answer, not an error.
        def parse(response: httpx.Response) -> Ready:
            return Ready.from_json(response.json())

        return Call("GET", "/ready", parse)

    def _objects(self) -> Call:
        return Call("GET", "/v1/objects", _json(ObjectList.from_json))

    def _object(self, name: str) -> Call:
        return Call("GET", f"/v1/objects/{quote(name, safe='')}", _json(ObjectInfo.from_json))

    def _model(self) -> Call:
        return Call("GET", "/v1/model", _json(ModelInfo.from_json))

    def _metrics(self) -> Call:
        return Call("GET", "/metrics", lambda response: response.text)

    def _reload(self) -> Call:
        return Call(
            "POST", "/v1/admin/reload", _json(lambda data: wire.Reloaded.model_validate(data).objects)
        )

    def _pose(self, cloud: Cloud, object_name: str | None, units: str | None, refine: bool) -> Call:
        call = Call(
            "POST",
            self._object_path(object_name, "pose"),
            _json(PoseResult.from_json),
            params=_query(refine=refine, units=units),
        )
        if isinstance(cloud, np.ndarray) or _is_path(cloud):
            call.files = [("file", _upload(cloud, "points.npy"))]
        else:
            call.json = {"points": _plain(cloud)}
        return call

    def _pose_batch(
        self, clouds: Sequence[Cloud], object_name: str | None, units: str | None, refine: bool
    ) -> Call:
        call = Call(
            "POST",
            self._object_path(object_name, "pose/batch"),
            _json(BatchResult.from_json),
            params=_query(refine=refine, units=units),
        )
        clouds = list(clouds)
        if clouds and not any(isinstance(cloud, np.ndarray) or _is_path(cloud) for cloud in clouds):
            call.json = {"clouds": [{"points": _plain(cloud)} for cloud in clouds]}
            return call
        files = []
        for index, cloud in enumerate(clouds):
            if not (isinstance(cloud, np.ndarray) or _is_path(cloud)):
                cloud = np.asarray(cloud)
            files.append(("files", _upload(cloud, f"clouds[{index}].npy")))
        call.files = files
        return call

    def _frame_call(
        self,
        path: str,
        parse: Callable[[httpx.Response], Any],
        frame: np.ndarray | str | os.PathLike | None,
        depth: np.ndarray | str | os.PathLike | None,
        intrinsics: Any,
        params: dict[str, str],
    ) -> Call:
        """A whole frame as a file (``file``), or a depth image (``depth``) with its camera."""
        if (frame is None) == (depth is None):
            raise ValueError(
                "give one frame: a cloud (frame=...) or a depth image (depth=..., intrinsics=...)"
            )
        call = Call("POST", path, parse, params=params)
        if frame is not None:
            if not (isinstance(frame, np.ndarray) or _is_path(frame)):
                frame = np.asarray(frame)
            call.files = [("file", _upload(frame, "frame.npy"))]
            return call
        if intrinsics is None:
            raise ValueError("a depth image needs its camera's intrinsics: fx, fy, cx, cy (and depth_scale)")
        if not isinstance(depth, np.ndarray) and not _is_path(depth):
            depth = np.asarray(depth)
        call.files = [("depth", _upload(depth, "depth.npy"))]
        call.data = _intrinsics(intrinsics)
        return call

    def _detect(
        self,
        frame: np.ndarray | str | os.PathLike | None,
        depth: np.ndarray | str | os.PathLike | None,
        intrinsics: Any,
        objects: Sequence[str] | str | None,
        units: str | None,
        max_instances: int | None,
    ) -> Call:
        if isinstance(objects, str):
            objects = [objects]
        params = _query(
            objects=None if objects is None else ",".join(objects), max_instances=max_instances, units=units
        )
        return self._frame_call("/v1/detect", _json(DetectResult.from_json), frame, depth, intrinsics, params)

    def _track(
        self,
        frame: np.ndarray | str | os.PathLike | None,
        previous: Sequence[Any],
        depth: np.ndarray | str | os.PathLike | None,
        intrinsics: Any,
        units: str | None,
    ) -> Call:
        call = self._frame_call(
            "/v1/track", _json(TrackResult.from_json), frame, depth, intrinsics, _query(units=units)
        )
        call.data = {
            **(call.data or {}),
            "previous": json.dumps([previous_pose_json(item) for item in previous]),
        }
        return call

    def _examples(self, name: str) -> Call:
        return Call(
            "GET",
            f"/v1/objects/{quote(name, safe='')}/examples",
            _json(lambda data: [item.file for item in wire.Examples.model_validate(data).examples]),
        )

    def _example(self, name: str, file: str) -> Call:
        return Call(
            "GET",
            f"/v1/objects/{quote(name, safe='')}/examples/{quote(file, safe='')}",
            lambda response: response.content,
        )

    def _geometry(self, name: str) -> Call:
        return Call("GET", f"/v1/objects/{quote(name, safe='')}/geometry", _json(_geometry))


def previous_pose_json(item: Any) -> dict[str, Any]:
    """A previous pose as ``/v1/track`` takes it: from a detection, a followed track, a pose
    result (with its ``object``) or a mapping with ``object``, ``rotation`` and ``translation``."""
    if isinstance(item, Track):
        if item.detection is None:
            raise ValueError(f"a lost track of {item.object!r} has no pose to follow: detect it again")
        item = item.detection
    if isinstance(item, Mapping):
        return {
            "object": item["object"],
            "rotation": np.asarray(item["rotation"]).tolist(),
            "translation": np.asarray(item["translation"]).tolist(),
        }
    if getattr(item, "object", None) is None:
        raise ValueError("a previous pose needs its object's name")
    return {
        "object": item.object,
        "rotation": item.rotation.tolist(),
        "translation": item.translation.tolist(),
    }


def _plain(cloud: Any) -> Any:
    """A JSON-ready list of points (tuples and numpy scalars become lists and floats)."""
    return np.asarray(cloud).tolist() if not isinstance(cloud, list) else cloud


def _intrinsics(intrinsics: Any) -> dict[str, str]:
    """Form fields of a camera: a mapping, or an object with ``fx``, ``fy``, ``cx``, ``cy``
    (and ``depth_scale``) attributes, such as :class:`cloudpose.io.frames.Intrinsics`."""
    if isinstance(intrinsics, Mapping):
        values = {name: intrinsics.get(name) for name in INTRINSIC_FIELDS}
    else:
        values = {name: getattr(intrinsics, name, None) for name in INTRINSIC_FIELDS}
    return {name: repr(float(value)) for name, value in values.items() if value is not None}


class Client(_Routes):
    """The cloudpose HTTP API, one method a route (a context manager: it holds a connection pool).

    Args:
        base_url: where the service listens.
        api_key: sent as ``Authorization: Bearer KEY`` when the service needs one.
        timeout: seconds to wait for an answer (or an ``httpx.Timeout``).
        retries: how many times a busy answer (503/429) is retried after its ``Retry-After``.
        transport: an httpx transport to send through instead of the default one (e.g.
            ``httpx.HTTPTransport(retries=3)`` to retry failed connections).

    Raises (every method):
        InvalidCloud: 413, 415 or 422, the cloud cannot be used (``detail`` says why).
        BadRequest: another 4xx caused by the request.
        Unauthorized: 401; NotFound: 404; Forbidden: 403.
        Overloaded: 503 or 429 (``retry_after`` seconds) once the retries are spent.
        ServerError: another 5xx.
        ServiceUnreachable: no answer (connection refused, timed out).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retries: int = 0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retries)
        self.http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: Call) -> Any:
        """Send one request (retrying busy answers) and parse its answer."""
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(call.method, call.path, **call.arguments())
            except httpx.TransportError as error:
                raise ServiceUnreachable(None, f"no answer from {self.base_url}: {error!r}") from error
            try:
                if not (call.path == "/ready" and response.status_code == 503):
                    raise_for_answer(response)
            except Overloaded as busy:
                if attempt == self.retries:
                    raise
                time.sleep(busy.retry_after if busy.retry_after is not None else 1.0)
                continue
            return call.parse(response)
        raise AssertionError("unreachable")  # the loop returns or raises

    def health(self) -> Health:
        """``GET /health``: liveness (needs no key)."""
        return self.send(self._health())

    def ready(self) -> Ready:
        """``GET /ready``: whether the pose workers have room (a busy service is an answer)."""
        return self.send(self._ready())

    def objects(self) -> ObjectList:
        """``GET /v1/objects``: every served object, and the default one."""
        return self.send(self._objects())

    def object(self, name: str) -> ObjectInfo:
        """``GET /v1/objects/{name}``: one served object (NotFound for an unknown name)."""
        return self.send(self._object(name))

    def model(self) -> ModelInfo:
        """``GET /v1/model``: the default object's model, its figures and the service's limits."""
        return self.send(self._model())

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text."""
        return self.send(self._metrics())

    def pose(
        self, cloud: Cloud, object: str | None = None, units: str | None = None, refine: bool = True
    ) -> PoseResult:
        """The pose of one cloud of an object (``POST /v1/pose`` or ``/v1/objects/{object}/pose``).

        Args:
            cloud: (N, 3) array (sent as .npy), a cloud file's path, or a list of [x, y, z].
            object: the object's name (default: the service's default object).
            units: what the points are in (``"mm"``, ``"m"``, ``"in"``...); the answer's
                translation comes back in them. None: the object's units, or a fitting scale.
            refine: register the cloud against the object's surface after the network.

        Returns:
            The pose; check ``found`` before using it.
        """
        return self.send(self._pose(cloud, object, units, refine))

    def pose_batch(
        self,
        clouds: Sequence[Cloud],
        object: str | None = None,
        units: str | None = None,
        refine: bool = True,
    ) -> BatchResult:
        """Poses of several clouds of one object in one request, in their order.

        Args:
            clouds: each an (N, 3) array, a path or a list (a batch of lists only goes as JSON;
                otherwise every cloud is a file, named ``clouds[i].npy`` for arrays).
            object: as :meth:`pose`.
            units: as :meth:`pose`.
            refine: as :meth:`pose`.

        Returns:
            One result per cloud; each names its file (``file``) when it was one.
        """
        return self.send(self._pose_batch(clouds, object, units, refine))

    def detect(
        self,
        frame: np.ndarray | str | os.PathLike | None = None,
        *,
        depth: np.ndarray | str | os.PathLike | None = None,
        intrinsics: Any = None,
        objects: Sequence[str] | str | None = None,
        units: str | None = None,
        max_instances: int | None = None,
    ) -> DetectResult:
        """Every instance of the known objects in a whole sensor frame (``POST /v1/detect``).

        Args:
            frame: the frame's points in the sensor's frame: (N, 3), or an organized (H, W, 3)
                array whose missing returns are NaN rows, or a cloud file's path.
            depth: instead of ``frame``, a depth image: (H, W) array (integers: raw units times
                ``depth_scale``; floats: metres), or a 16-bit .png or .npy file's path.
            intrinsics: the depth camera's ``fx``, ``fy``, ``cx``, ``cy`` (and ``depth_scale``),
                as a mapping or an object with those attributes.
            objects: the objects to look for (default: every served object).
            units: what a frame's points are in (default metres; not for a depth image).
            max_instances: at most this many detections.
        """
        return self.send(self._detect(frame, depth, intrinsics, objects, units, max_instances))

    def track(
        self,
        frame: np.ndarray | str | os.PathLike | None = None,
        *,
        previous: Sequence[Any],
        depth: np.ndarray | str | os.PathLike | None = None,
        intrinsics: Any = None,
        units: str | None = None,
    ) -> TrackResult:
        """The instances of the frame before followed into this one (``POST /v1/track``).

        Args:
            frame: this frame, as :meth:`detect` takes it.
            depth: as :meth:`detect` takes it.
            intrinsics: as :meth:`detect` takes them.
            units: as :meth:`detect` takes them.
            previous: the poses to follow, most trusted first: detections (e.g. a
                :class:`DetectResult`'s ``detections``), the last answer's tracks, or mappings
                with ``object``, ``rotation`` (3, 3) and ``translation`` (3,).

        Returns:
            One :class:`~cloudpose.results.Track` per previous pose, in their order.
        """
        return self.send(self._track(frame, previous, depth, intrinsics, units))

    def examples(self, name: str) -> list[str]:
        """The example cloud files shipped with an object (``GET /v1/objects/{name}/examples``)."""
        return self.send(self._examples(name))

    def example(self, name: str, file: str) -> bytes:
        """One shipped example cloud file's bytes (a name from :meth:`examples`)."""
        return self.send(self._example(name, file))

    def geometry(self, name: str) -> dict[str, Any]:
        """The object's model to draw (``GET /v1/objects/{name}/geometry``), as JSON: a surface
        sample and, when small, the mesh, in the canonical frame and the object's units."""
        return self.send(self._geometry(name))

    def reload(self) -> dict[str, str]:
        """``POST /v1/admin/reload``: reload and verify the store; returns names and model ids.
        Needs a service started with API keys (Forbidden otherwise)."""
        return self.send(self._reload())


class AsyncClient(_Routes):
    """:class:`Client` for asyncio: the same methods, awaited (``async with AsyncClient() as c``)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        retries: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retries)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, call: Call) -> Any:
        """Send one request (retrying busy answers) and parse its answer."""
        for attempt in range(self.retries + 1):
            try:
                response = await self.http.request(call.method, call.path, **call.arguments())
            except httpx.TransportError as error:
                raise ServiceUnreachable(None, f"no answer from {self.base_url}: {error!r}") from error
            try:
                if not (call.path == "/ready" and response.status_code == 503):
                    raise_for_answer(response)
            except Overloaded as busy:
                if attempt == self.retries:
                    raise
                await asyncio.sleep(busy.retry_after if busy.retry_after is not None else 1.0)
                continue
            return call.parse(response)
        raise AssertionError("unreachable")

    async def health(self) -> Health:
        return await self.send(self._health())

    async def ready(self) -> Ready:
        return await self.send(self._ready())

    async def objects(self) -> ObjectList:
        return await self.send(self._objects())

    async def object(self, name: str) -> ObjectInfo:
        return await self.send(self._object(name))

    async def model(self) -> ModelInfo:
        return await self.send(self._model())

    async def metrics(self) -> str:
        return await self.send(self._metrics())

    async def pose(
        self, cloud: Cloud, object: str | None = None, units: str | None = None, refine: bool = True
    ) -> PoseResult:
        """As :meth:`Client.pose`."""
        return await self.send(self._pose(cloud, object, units, refine))

    async def pose_batch(
        self,
        clouds: Sequence[Cloud],
        object: str | None = None,
        units: str | None = None,
        refine: bool = True,
    ) -> BatchResult:
        """As :meth:`Client.pose_batch`."""
        return await self.send(self._pose_batch(clouds, object, units, refine))

    async def detect(
        self,
        frame: np.ndarray | str | os.PathLike | None = None,
        *,
        depth: np.ndarray | str | os.PathLike | None = None,
        intrinsics: Any = None,
        objects: Sequence[str] | str | None = None,
        units: str | None = None,
        max_instances: int | None = None,
    ) -> DetectResult:
        """As :meth:`Client.detect`."""
        return await self.send(self._detect(frame, depth, intrinsics, objects, units, max_instances))

    async def track(
        self,
        frame: np.ndarray | str | os.PathLike | None = None,
        *,
        previous: Sequence[Any],
        depth: np.ndarray | str | os.PathLike | None = None,
        intrinsics: Any = None,
        units: str | None = None,
    ) -> TrackResult:
        """As :meth:`Client.track`."""
        return await self.send(self._track(frame, previous, depth, intrinsics, units))

    async def examples(self, name: str) -> list[str]:
        return await self.send(self._examples(name))

    async def example(self, name: str, file: str) -> bytes:
        return await self.send(self._example(name, file))

    async def geometry(self, name: str) -> dict[str, Any]:
        return await self.send(self._geometry(name))

    async def reload(self) -> dict[str, str]:
        return await self.send(self._reload())


__all__ = ["AsyncClient", "Call", "Client", "CloudposeError", "npy_bytes", "raise_for_answer"]
