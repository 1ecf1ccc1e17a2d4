"""A virtual depth camera: single partial views of a mesh, as a real sensor would see them.

A view is what a pinhole depth camera at ``camera_position``, looking at the object's surface
centroid (the canonical origin), records:

* only first hits: rays are cast against the whole mesh, so self-occluded surface never appears;
* density that falls off with distance (a fixed angular pixel pitch gives ~1/d² points per unit
  area) and with the incidence angle (a hit is kept with probability ``cos(incidence) **
  incidence_power``, so grazing surface is sparse, as with real sensors);
* depth noise: Gaussian along the ray, with a standard deviation that grows with depth.

Points come back in the CANONICAL (object) frame. The pose of a view is always the pose of the
whole object: the view's own centroid is not the object's.

Every function takes a seeded ``numpy.random.Generator`` and never touches global state.
"""

from __future__ import annotations

import io
import json
import weakref
from pathlib import Path

import numpy as np

from pipeline.data.mesh import Mesh, sample_surface
from pipeline.files import atomic_write_bytes

DEFAULT_DISTANCE_RANGE = (1.5, 4.0)  # camera distance, in bounding-box diagonals
DEFAULT_FOV_DEG = 64.0
DEFAULT_PIXELS = 360  # 0.18 degrees per pixel with the default field of view
DEFAULT_DEPTH_NOISE = 0.001  # sigma at a depth of one diagonal, as a fraction of the diagonal
DEFAULT_DEPTH_NOISE_POWER = 2.0  # sigma grows with depth**power (structured-light sensors: ~2)

_SCENES: dict[int, tuple[weakref.ref, object, float]] = {}


def _scene(mesh: Mesh):
    """The mesh's raycasting scene and bounding radius, built once per mesh object."""
    import open3d as o3d

    key = id(mesh)
    cached = _SCENES.get(key)
    if cached is not None and cached[0]() is mesh:
        return cached[1], cached[2]
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.ascontiguousarray(mesh.vertices, dtype=np.float32)),
        o3d.core.Tensor(np.ascontiguousarray(mesh.faces, dtype=np.uint32)),
    )
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())
    if len(_SCENES) >= 8:
        _SCENES.clear()
    _SCENES[key] = (weakref.ref(mesh), scene, radius)
    return scene, radius


def _camera_axes(forward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and up unit vectors of a camera looking along ``forward`` (unit)."""
    up = np.array([0.0, 0.0, 1.0])
    if abs(forward @ up) > 0.99:
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    return right, np.cross(right, forward)


def _pixel_rays(
    forward: np.ndarray, distance: float, radius: float, width: int, height: int, fov_deg: float
) -> np.ndarray:
    """Unit ray directions (R, 3) of the pixels whose ray can reach the object's bounding sphere.

    The pixel grid is that of the full ``width`` × ``height`` image (``fov_deg`` across its
    width, square pixels); pixels that cannot see the object are simply not cast.
    """
    right, up = _camera_axes(forward)
    pitch = 2.0 * np.tan(np.deg2rad(fov_deg) / 2.0) / width  # image plane at focal length 1
    half_w, half_h = width / 2.0, height / 2.0
    if distance > radius * 1.0001:
        reach = np.tan(np.arcsin(radius / distance)) + 1.5 * pitch
    else:  # inside the bounding sphere: every pixel may see the object
        reach = np.inf
    cols = np.arange(width)
    rows = np.arange(height)
    xs = (cols + 0.5 - half_w) * pitch
    ys = (half_h - rows - 0.5) * pitch
    xs = xs[np.abs(xs) <= reach]
    ys = ys[np.abs(ys) <= reach]
    x, y = np.meshgrid(xs, ys)
    x, y = x.ravel(), y.ravel()
    if np.isfinite(reach):
        inside = x * x + y * y <= reach * reach
        x, y = x[inside], y[inside]
    directions = forward + x[:, None] * right + y[:, None] * up
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def render_view(
    mesh: Mesh,
    camera_position: np.ndarray,
    rng: np.random.Generator,
    *,
    width: int = DEFAULT_PIXELS,
    height: int = DEFAULT_PIXELS,
    fov_deg: float = DEFAULT_FOV_DEG,
    incidence_power: float = 1.0,
    depth_noise: float = DEFAULT_DEPTH_NOISE,
    depth_noise_power: float = DEFAULT_DEPTH_NOISE_POWER,
) -> np.ndarray:
    """Render one depth view of ``mesh`` and return its points in the canonical frame.

    The camera at ``camera_position`` looks at the canonical origin (the surface centroid). Rays
    go through the pixel centres of a ``width`` × ``height`` pinhole image spanning ``fov_deg``
    horizontally; each ray keeps its first hit only.

    Args:
        mesh: object in its canonical frame.
        camera_position: (3,) camera centre in the canonical frame.
        rng: seeded generator for the incidence dropout and the depth noise.
        width, height: image size in pixels (the angular pitch is ``fov_deg / width``).
        fov_deg: horizontal field of view.
        incidence_power: a hit whose ray meets the surface at incidence angle θ is kept with
            probability ``cos(θ) ** incidence_power``; 0 keeps every hit.
        depth_noise: standard deviation of the Gaussian noise along the ray at a depth of one
            bounding-box diagonal, as a fraction of the diagonal; 0 gives exact surface points.
        depth_noise_power: the standard deviation scales with ``(depth / diagonal) ** power``.

    Returns:
        (K, 3) float64 points in raster order; K may be 0 if nothing is hit.
    """
    scene, radius = _scene(mesh)
    import open3d as o3d

    origin = np.asarray(camera_position, dtype=np.float64).reshape(3)
    distance = float(np.linalg.norm(origin))
    if distance == 0.0:
        raise ValueError("the camera cannot sit at the object's centroid")
    forward = -origin / distance
    directions = _pixel_rays(forward, distance, radius, width, height, fov_deg)
    rays = np.empty((len(directions), 6), dtype=np.float32)
    rays[:, :3] = origin
    rays[:, 3:] = directions
    hits = scene.cast_rays(o3d.core.Tensor(rays))
    depth = hits["t_hit"].numpy().astype(np.float64)
    hit = np.isfinite(depth)
    face = hits["primitive_ids"].numpy()[hit].astype(np.int64)
    uv = hits["primitive_uvs"].numpy()[hit].astype(np.float64)
    normal = hits["primitive_normals"].numpy()[hit].astype(np.float64)
    directions, depth = directions[hit], depth[hit]

    # The exact surface point from barycentrics, in float64 (t_hit alone is float32).
    corners = mesh.vertices[mesh.faces[face]]
    points = (
        (1.0 - uv[:, :1] - uv[:, 1:]) * corners[:, 0] + uv[:, :1] * corners[:, 1] + uv[:, 1:] * corners[:, 2]
    )
    if incidence_power > 0 and len(points):
        cos_incidence = np.abs(np.einsum("ij,ij->i", directions, normal))
        keep = rng.random(len(points)) < cos_incidence**incidence_power
        points, directions, depth = points[keep], directions[keep], depth[keep]
    if depth_noise > 0 and len(points):
        diagonal = mesh.diagonal
        sigma = depth_noise * diagonal * (depth / diagonal) ** depth_noise_power
        points = points + (rng.standard_normal(len(points)) * sigma)[:, None] * directions
    return points


def random_viewpoint(
    rng: np.random.Generator,
    diagonal: float,
    distance_range: tuple[float, float] = DEFAULT_DISTANCE_RANGE,
) -> np.ndarray:
    """A camera position: direction uniform on the sphere, distance uniform in ``distance_range``.

    Args:
        diagonal: the object's bounding-box diagonal; ``distance_range`` is in diagonals.

    Returns:
        (3,) float64 camera centre in the canonical frame.
    """
    direction = rng.standard_normal(3)
    while np.linalg.norm(direction) < 1e-9:  # practically never
        direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    low, high = distance_range
    return direction * rng.uniform(low, high) * diagonal


_SURFACE_SAMPLES: dict[tuple[int, int], tuple[weakref.ref, np.ndarray]] = {}


def _dense_sample(mesh: Mesh, samples: int) -> np.ndarray:
    """A fixed (seed 0) uniform surface sample, cached per mesh object."""
    key = (id(mesh), samples)
    cached = _SURFACE_SAMPLES.get(key)
    if cached is not None and cached[0]() is mesh:
        return cached[1]
    dense = sample_surface(mesh, samples, np.random.default_rng(0))
    if len(_SURFACE_SAMPLES) >= 8:
        _SURFACE_SAMPLES.clear()
    _SURFACE_SAMPLES[key] = (weakref.ref(mesh), dense)
    return dense


def visible_fraction(
    view_points: np.ndarray,
    mesh: Mesh,
    *,
    radius: float | None = None,
    samples: int = 10_000,
) -> float:
    """Fraction of the object's surface area that a view covers.

    It is the fraction of a dense uniform surface sample (``samples`` points, fixed seed) that
    lies within ``radius`` of some view point. With the default radius it reads a few percent
    below the geometrically visible fraction, because surface seen only at grazing incidence
    gets few points (see :func:`render_view`) and counts as partly uncovered.

    Args:
        view_points: (K, 3) view in the canonical frame.
        radius: coverage radius; by default twice the view's median nearest-neighbour spacing,
            at least 1 % of the diagonal, so that sparse far views are not under-counted.
        samples: size of the dense surface sample (its sampling error is about 0.5 % at 10 000).

    Returns:
        A number in [0, 1].
    """
    from scipy.spatial import cKDTree

    view_points = np.asarray(view_points, dtype=np.float64).reshape(-1, 3)
    if len(view_points) == 0:
        return 0.0
    tree = cKDTree(view_points)
    if radius is None:
        radius = 0.01 * mesh.diagonal
        if len(view_points) > 1:
            probes = view_points[:: max(1, len(view_points) // 1000)]  # deterministic subsample
            spacing, _ = tree.query(probes, k=2)
            radius = max(radius, 2.0 * float(np.median(spacing[:, 1])))
    distance, _ = tree.query(_dense_sample(mesh, samples), k=1, distance_upper_bound=radius)
    return float(np.mean(np.isfinite(distance)))


def make_view_bank(
    mesh: Mesh,
    count: int,
    rng: np.random.Generator,
    *,
    min_points: int = 256,
    distance_range: tuple[float, float] = DEFAULT_DISTANCE_RANGE,
    visible_range: tuple[float, float] | None = None,
    max_attempts: int | None = None,
    **render_options,
) -> list[np.ndarray]:
    """Render ``count`` views from random viewpoints, for training on partial clouds.

    Views with fewer than ``min_points`` points, or (when ``visible_range`` is given) whose
    :func:`visible_fraction` lies outside it, are rejected and redrawn.

    Args:
        render_options: passed on to :func:`render_view` (resolution, noise, dropout).

    Returns:
        ``count`` arrays (K_i, 3) float32 in the canonical frame, K_i ≥ ``min_points``.

    Raises:
        RuntimeError: the constraints rejected more than ``max_attempts`` views
            (default ``20 * count + 100``).
    """
    max_attempts = 20 * count + 100 if max_attempts is None else max_attempts
    views: list[np.ndarray] = []
    attempts = 0
    while len(views) < count:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(
                f"only {len(views)} of {count} views met min_points={min_points}, "
                f"visible_range={visible_range} after {max_attempts} attempts"
            )
        camera = random_viewpoint(rng, mesh.diagonal, distance_range)
        points = render_view(mesh, camera, rng, **render_options)
        if len(points) < min_points:
            continue
        if visible_range is not None:
            fraction = visible_fraction(points, mesh)
            if not visible_range[0] <= fraction <= visible_range[1]:
                continue
        views.append(points.astype(np.float32))
    return views


def save_view_bank(path: str | Path, views: list[np.ndarray], meta: dict | None = None) -> Path:
    """Write views to one ``.npz`` file, atomically.

    The file holds ``points`` (sum K_i, 3) float32, the views one after another, ``offsets``
    (count + 1,) int64 so that view i is ``points[offsets[i]:offsets[i + 1]]``, and ``meta``
    (a JSON string).
    """
    sizes = np.array([len(view) for view in views], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    points = (
        np.concatenate([np.asarray(view, dtype=np.float32).reshape(-1, 3) for view in views])
        if views
        else np.empty((0, 3), dtype=np.float32)
    )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, points=points, offsets=offsets, meta=np.asarray(json.dumps(meta or {})))
    return atomic_write_bytes(path, buffer.getvalue())


def load_view_bank(path: str | Path) -> list[np.ndarray]:
    """Read the views written by :func:`save_view_bank`: a list of (K_i, 3) float32 arrays."""
    with np.load(Path(path)) as stored:
        points = stored["points"]
        offsets = stored["offsets"]
    return [points[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
