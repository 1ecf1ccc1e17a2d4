"""The viewer page (``/viewer``) and the routes it reads, served by the API itself.

The page is static: ``service/web/`` holds its HTML, one JavaScript module and its CSS, and
three.js vendored from npm (``service/web/vendor/three/``, version and licence beside it), mapped
with an import map, so it works offline and needs no build step. Besides the pose and detect
routes, it reads:

- ``GET /v1/objects/{name}/geometry``: the object's model to draw, in the canonical frame (the
  mesh file's own coordinates) and the object's units: a thinned surface sample and, when small
  enough, the mesh itself. A pose answer's ``scale`` (the cloud's units in object units) turns it
  into the cloud's units: ``canonical_cloud_units = geometry / scale``.
- ``GET /v1/objects/{name}/examples`` and ``.../examples/{file}``: the example clouds shipped in
  the object's package (``example.json``, ``example.xyz``, ...).
- ``POST /v1/clouds/read``: the points the service reads from an uploaded cloud file, thinned for
  drawing (5,000 of a cloud, 20,000 of a frame), so the page shows every format the API takes
  exactly as the pose routes read it. It is the page's own route and stays out of the OpenAPI
  document.

These routes take the same API key as the others; the page and its static files are open (they
hold nothing but code).

``/redoc`` is here too: ReDoc's script comes from the ``fastapi-offline`` package (as Swagger UI's
for ``/docs``), and the page's content security policy keeps it from fetching its makers' logo.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cloudpose.estimation.served import ObjectRegistry, ServedObject
from cloudpose.io.clouds import CLOUD_SUFFIXES, CloudError, read_cloud_file, read_frame_file
from service import schemas
from service.bodies import BodyTooLarge, BodyTooSlow

WEB_ROOT = Path(__file__).resolve().parent / "web"
# Enough points to see a shape and its pose, few enough to send and draw at once.
MAX_SHOWN_POINTS = 5000
# A whole frame needs more to show its scene (and the instances in it).
MAX_SHOWN_FRAME_POINTS = 20_000
MAX_SURFACE_POINTS = 2000
# Meshes up to this many faces are sent whole; larger ones are drawn from the surface sample.
MAX_MESH_FACES = 20_000
# The documented request example: a thinned copy of the default object's shipped example cloud.
EXAMPLE_POINTS = 256
EXAMPLE_PREFIX = "example."
# fastapi-offline serves Swagger UI's and ReDoc's files here.
DOCS_STATIC = "/static-offline-docs"
# ReDoc's sidebar shows a logo from its makers' CDN; an offline page must not fetch it.
REDOC_POLICY = "img-src 'self' data: blob:"
POSE_PATHS = ("/v1/pose", "/v1/objects/{name}/pose")
BATCH_PATHS = ("/v1/pose/batch", "/v1/objects/{name}/pose/batch")


async def get_objects(request: Request) -> ObjectRegistry:
    return request.app.state.objects


Objects = Annotated[ObjectRegistry, Depends(get_objects)]
# One drawing per served object; a reload serves new objects and their entries go with the old.
_geometry_cache: weakref.WeakKeyDictionary[ServedObject, bytes] = weakref.WeakKeyDictionary()


class Mesh(BaseModel):
    vertices: list[list[float]] = Field(description="(V, 3) vertex positions, canonical frame.")
    faces: list[list[int]] = Field(description="(F, 3) vertex indices of each triangle.")


class Geometry(BaseModel):
    """An object's model to draw, in the canonical frame and the object's units."""

    object: str
    units: str | None = Field(description="The object's units (None when it was added without).")
    frame: str
    points: list[list[float]] = Field(description="A thinned surface sample, (M, 3).")
    mesh: Mesh | None = Field(description="The mesh, when it is small enough to send.")


class Example(BaseModel):
    file: str
    bytes: int


class Examples(BaseModel):
    object: str
    examples: list[Example] = Field(description="The example clouds shipped in the object's package.")


def thinned(points: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` rows, evenly spread: a seeded random choice in the file's order (every
    k-th row of an organized frame would draw its scan lines)."""
    if len(points) <= limit:
        return points
    chosen = np.random.default_rng(0).choice(len(points), size=limit, replace=False)
    return points[np.sort(chosen)]


def package_folder(served: ServedObject) -> Path | None:
    """The object's package folder (None for a bare model, which has no package)."""
    return None if served.mesh_path is None else served.mesh_path.parent


def example_files(served: ServedObject) -> list[Path]:
    """The package's example clouds: ``example.*`` in a format the service reads."""
    folder = package_folder(served)
    if folder is None:
        return []
    readable = {*CLOUD_SUFFIXES, ".json"}
    return sorted(
        path
        for path in folder.iterdir()
        if path.name.startswith(EXAMPLE_PREFIX) and path.suffix.lower() in readable and path.is_file()
    )


def _geometry(served: ServedObject) -> bytes:
    """The object's drawing as JSON (computed once per served object)."""
    cached = _geometry_cache.get(served)
    if cached is not None:
        return cached
    surface = served.estimator.surface
    mesh = None
    if served.mesh_path is not None:
        import trimesh

        try:
            loaded = trimesh.load(served.mesh_path, force="mesh")
        except Exception:  # a mesh trimesh cannot read again: the surface sample still draws
            loaded = None
        if loaded is not None and 0 < len(loaded.faces) <= MAX_MESH_FACES:
            mesh = {
                "vertices": np.asarray(loaded.vertices, dtype=np.float32),
                "faces": np.asarray(loaded.faces, dtype=np.int32),
            }
    if surface is not None:
        # The surface sample lives in the internal frame (centroid at the origin).
        points = thinned(surface.points, MAX_SURFACE_POINTS) + served.centroid
    elif mesh is not None:
        points = thinned(mesh["vertices"].astype(np.float64), MAX_SURFACE_POINTS)
    elif len(served.estimator.template):  # an exam-setting model: its template is the object
        points = thinned(served.estimator.template.astype(np.float64), MAX_SURFACE_POINTS) + served.centroid
    else:
        raise CloudError(404, f"object {served.name!r} has neither a surface model nor a mesh to draw")
    body = orjson.dumps(
        {
            "object": served.name,
            "units": served.units,
            "frame": "canonical (the mesh file's coordinates)" if served.mesh_path else "internal",
            "points": points.astype(np.float32),
            "mesh": mesh,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    _geometry_cache[served] = body
    return body


def _shown_cloud(name: str, data: bytes, frame: bool, max_points: int) -> bytes:
    points = (read_frame_file if frame else read_cloud_file)(name, data, max_points)
    return orjson.dumps(
        {
            "points": thinned(points, MAX_SHOWN_FRAME_POINTS if frame else MAX_SHOWN_POINTS).astype(
                np.float32
            ),
            "n_points": int(len(points)),
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def example_cloud(registry: ObjectRegistry) -> list[list[float]] | None:
    """A thinned copy of the default (else first) object's ``example.json`` points, or None."""
    name = registry.default or next(iter(registry.objects), None)
    if name is None:
        return None
    folder = package_folder(registry.objects[name])
    path = None if folder is None else folder / f"{EXAMPLE_PREFIX}json"
    if path is None or not path.is_file():
        return None
    try:
        points = np.asarray(orjson.loads(path.read_bytes())["points"], dtype=np.float64)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if points.ndim != 2 or points.shape[1] != 3:
        return None
    return thinned(points, EXAMPLE_POINTS).tolist()


def add_request_examples(document: dict[str, Any], registry: ObjectRegistry | None) -> None:
    """Put a real cloud (the shipped example) as the JSON example of the pose routes' bodies (and
    of ``/v1/track``'s, with a pose to follow), so that "Try it out" in ``/docs`` answers 200."""
    points = None if registry is None else example_cloud(registry)
    if points is None:
        return
    name = registry.default or next(iter(registry.objects))
    previous = [{"object": name, "rotation": np.eye(3).tolist(), "translation": [0.0, 0.0, 0.0]}]
    bodies = (
        (POSE_PATHS, {"points": points}),
        (BATCH_PATHS, {"clouds": [{"points": points}]}),
        (("/v1/track",), {"points": points, "previous": previous}),
    )
    for paths, example in bodies:
        for path in paths:
            operation = document["paths"].get(path, {}).get("post")
            if operation is not None:
                operation["requestBody"]["content"]["application/json"]["example"] = example


def mount_web(app: FastAPI, dependencies: list[Any], unauthorized: tuple[int, ...]) -> None:
    """Add the viewer page, its static files and the routes it reads to ``app``.

    Args:
        app: the API, whose ``state.objects`` holds the served objects.
        dependencies: the API key check of the other routes (empty when no keys are configured).
        unauthorized: ``(401,)`` when keys are configured, for the documented errors.
    """

    app.mount("/viewer/static", StaticFiles(directory=WEB_ROOT), name="viewer-static")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["content-security-policy"] = REDOC_POLICY
        return page

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/viewer")

    @app.get("/viewer", include_in_schema=False)
    async def viewer() -> FileResponse:
        return FileResponse(WEB_ROOT / "index.html", media_type="text/html")

    @app.get(
        "/v1/objects/{name}/geometry",
        response_model=Geometry,
        responses=schemas.error_responses(*unauthorized, 404, 422),
        dependencies=dependencies,
    )
    async def object_geometry(name: str, registry: Objects) -> Response:
        """The object's model to draw: a surface sample (at most 2,000 points) and the mesh when
        it has at most 20,000 faces, in the canonical frame and the object's units. Divide by a
        pose answer's ``scale`` for the cloud's units; the answer's ``pose_matrix`` then places it
        over the cloud."""
        served = registry.get(name)
        return Response(await run_in_threadpool(_geometry, served), media_type="application/json")

    @app.get(
        "/v1/objects/{name}/examples",
        response_model=Examples,
        responses=schemas.error_responses(*unauthorized, 404, 422),
        dependencies=dependencies,
    )
    async def object_examples(name: str, registry: Objects) -> Response:
        """The example clouds shipped with the object (none for a bare model)."""
        served = registry.get(name)
        files = [{"file": path.name, "bytes": path.stat().st_size} for path in example_files(served)]
        return Response(
            orjson.dumps({"object": served.name, "examples": files}), media_type="application/json"
        )

    @app.get(
        "/v1/objects/{name}/examples/{file}",
        responses={
            200: {
                "description": "The example cloud file, as shipped.",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            **schemas.error_responses(*unauthorized, 404, 422),
        },
        dependencies=dependencies,
    )
    async def object_example(name: str, file: str, registry: Objects) -> Response:
        """One shipped example cloud (a name from ``/v1/objects/{name}/examples``)."""
        served = registry.get(name)
        # Only the listed files are served: a name is looked up, never joined into a path.
        chosen = {path.name: path for path in example_files(served)}.get(file)
        if chosen is None:
            raise CloudError(404, f"object {served.name!r} ships no example {file!r}: see its examples list")
        return FileResponse(chosen, media_type="application/octet-stream", filename=chosen.name)

    @app.post("/v1/clouds/read", include_in_schema=False, dependencies=dependencies)
    async def read_cloud(
        request: Request,
        frame: Annotated[
            bool, Query(description="Read the file as a whole frame (as /v1/detect does).")
        ] = False,
    ) -> Response:
        """The points the service reads from the cloud file in the multipart field ``file``,
        thinned for drawing."""
        settings = request.app.state.settings
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data":
            raise CloudError(415, "send the cloud file as multipart/form-data in the field 'file'")

        try:
            form = await request.form(max_files=1, max_part_size=settings.max_body_bytes)
        except (BodyTooLarge, BodyTooSlow, ClientDisconnect):
            raise
        except Exception as error:  # starlette's 400s and python-multipart's own types
            raise CloudError(400, "malformed multipart body") from error
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise CloudError(422, "multipart body has no file: upload the cloud in a field named 'file'")
        data = await upload.read()
        limit = settings.max_frame_points if frame else settings.max_points
        body = await run_in_threadpool(_shown_cloud, upload.filename or "", data, frame, limit)
        return Response(body, media_type="application/json")
