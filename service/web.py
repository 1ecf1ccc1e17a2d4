"""What the viewer page (``/viewer``, :mod:`service.routes.viewer`) draws: objects, examples, clouds.

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

This module computes those answers; the routes are in :mod:`service.routes.viewer`.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import orjson

from cloudpose.estimation.served import ObjectRegistry, ServedObject
from cloudpose.io.clouds import CLOUD_SUFFIXES, CloudError, read_cloud_file, read_frame_file

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


# One drawing per served object; a reload serves new objects and their entries go with the old.
_geometry_cache: weakref.WeakKeyDictionary[ServedObject, bytes] = weakref.WeakKeyDictionary()


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


def geometry_json(served: ServedObject) -> bytes:
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


def shown_cloud_json(name: str, data: bytes, frame: bool, max_points: int) -> bytes:
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
