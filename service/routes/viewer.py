"""The viewer page (``/viewer``), the routes it reads (:mod:`service.web`), and ``/redoc``.

The page and its static files are open (they hold nothing but code); :data:`router`'s routes take
the same API key as the others, :data:`pages`' none.

``/redoc``: ReDoc's script comes from the ``fastapi-offline`` package (as Swagger UI's for
``/docs``), and the page's content security policy keeps it from fetching its makers' logo.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from cloudpose.io.clouds import CloudError
from service import schemas
from service.deps import Objects, ServiceSettings
from service.forms import read_cloud_file
from service.web import WEB_ROOT, example_files, geometry_json, shown_cloud_json

# fastapi-offline serves Swagger UI's and ReDoc's files here.
DOCS_STATIC = "/static-offline-docs"
# ReDoc's sidebar shows a logo from its makers' CDN; an offline page must not fetch it.
REDOC_POLICY = "img-src 'self' data: blob:"
# The page's own static files, mounted by create_app.
STATIC_PATH = "/viewer/static"

pages = APIRouter(include_in_schema=False)
router = APIRouter()


@pages.get("/redoc")
async def redoc(request: Request) -> Response:
    root = request.scope.get("root_path", "")
    app = request.app
    page = get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["content-security-policy"] = REDOC_POLICY
    return page


@pages.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/viewer")


@pages.get("/viewer")
async def viewer() -> FileResponse:
    return FileResponse(WEB_ROOT / "index.html", media_type="text/html")


@router.get(
    "/v1/objects/{name}/geometry",
    response_model=schemas.Geometry,
    responses=schemas.error_responses(404, 422),
)
async def object_geometry(name: str, registry: Objects) -> Response:
    """The object's model to draw: a surface sample (at most 2,000 points) and the mesh when
    it has at most 20,000 faces, in the canonical frame and the object's units. Divide by a
    pose answer's ``scale`` for the cloud's units; the answer's ``pose_matrix`` then places it
    over the cloud."""
    served = registry.get(name)
    return Response(await run_in_threadpool(geometry_json, served), media_type="application/json")


@router.get(
    "/v1/objects/{name}/examples",
    response_model=schemas.Examples,
    responses=schemas.error_responses(404, 422),
)
async def object_examples(name: str, registry: Objects) -> Response:
    """The example clouds shipped with the object (none for a bare model)."""
    served = registry.get(name)
    files = [{"file": path.name, "bytes": path.stat().st_size} for path in example_files(served)]
    return Response(orjson.dumps({"object": served.name, "examples": files}), media_type="application/json")


@router.get(
    "/v1/objects/{name}/examples/{file}",
    responses={
        200: {
            "description": "The example cloud file, as shipped.",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **schemas.error_responses(404, 422),
    },
)
async def object_example(name: str, file: str, registry: Objects) -> Response:
    """One shipped example cloud (a name from ``/v1/objects/{name}/examples``)."""
    served = registry.get(name)
    # Only the listed files are served: a name is looked up, never joined into a path.
    chosen = {path.name: path for path in example_files(served)}.get(file)
    if chosen is None:
        raise CloudError(404, f"object {served.name!r} ships no example {file!r}: see its examples list")
    return FileResponse(chosen, media_type="application/octet-stream", filename=chosen.name)


@router.post("/v1/clouds/read", include_in_schema=False)
async def read_cloud(
    request: Request,
    settings: ServiceSettings,
    frame: Annotated[bool, Query(description="Read the file as a whole frame (as /v1/detect does).")] = False,
) -> Response:
    """The points the service reads from the cloud file in the multipart field ``file``,
    thinned for drawing."""
    upload = await read_cloud_file(request, settings)
    limit = settings.max_frame_points if frame else settings.max_points
    body = await run_in_threadpool(shown_cloud_json, upload.filename, upload.data, frame, limit)
    return Response(body, media_type="application/json")
