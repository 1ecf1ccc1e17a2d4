"""Pose refinement: register an observed cloud against the object's surface model.

The network gives a coarse object pose ``observed = canonical @ R_obj + t_obj`` (row vectors, as in
:mod:`models.geometry`). :func:`refine_pose` improves it by robust point-to-plane ICP from the
observed cloud (source) to the canonical surface model (target): the observed points are a subset
of the surface (partial views, any order, any size), so every observed point looks for its nearest
model point and never the other way round.

Schedule (the choice is measured by ``benchmarks/refine_choice.py``):

* the observed cloud is randomly subsampled (seeded) to at most ``max_points`` points, and a
  smaller ``coarse_points`` subset of those drives the coarse stages;
* two coarse stages against a voxel-downsampled copy of the model, correspondences within 20%
  then 5% of the object's diagonal, Tukey weights of the same scale (the wide first stage gives
  a basin of convergence of about 45 degrees, also on partial views); their nearest points come
  from a lookup table (one array access per point, within about a cell of 1% of the diagonal of
  the true nearest point), and their fitness decides whether the start is doubtful, confirmed
  with exact distances when it looks so;
* one fine stage against the full model: correspondences within 5% of the diagonal, Tukey weights
  whose scale follows the residuals (4.685 robust sigmas, clipped to 1%-5% of the diagonal), so
  clean clouds converge tightly and noisy ones keep their informative points; it uses
  ``fine_points`` of the points, or all ``max_points`` when its first step shows noise;
* when the first coarse result is doubtful (fitness below 0.9), the caller's alternatives, half
  turns about the model's and the observed cloud's principal axes and 40-degree turns about the
  model's axes are screened (first coarse stage on fewer points, every start at once in one
  batched ICP, :func:`screen_starts`), and the best by fitness (then RMSE) is finished.

The fine stage's nearest neighbours and the fitness come from an exact index built once per model
(``small_gicp.KdTree`` when that package is installed, else open3d's ``NearestNeighborSearch``);
the results do not depend on which is used, only the speed does.

Only numpy, scipy (the lookup table's distance transform) and open3d (optionally small_gicp) are
used here: the service never imports torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open3d as o3d

from cloudpose import budget

try:  # optional: a faster exact nearest-neighbour index, same results
    import small_gicp
except ImportError:  # pragma: no cover - depends on the environment
    small_gicp = None

# Tukey's constant for 95% efficiency under Gaussian noise, and the MAD-to-sigma factor.
TUKEY_C = 4.685
MAD_SIGMA = 1.4826


@dataclass(frozen=True)
class SurfaceGrid:
    """How a :class:`SurfaceModel` prepares its coarse copy (fractions of the object's diagonal).

    Attributes:
        voxel: voxel of the model's downsampled copy that the coarse stages register against;
            set with the schedule on the synthetic bench sets (``benchmarks/refine_choice.py``).
        cell: cell of the coarse copy's nearest-point lookup table: the nearest point it gives
            lies within about a cell of the true one, close enough for the coarse stages.
        margin: how far beyond the model the table reaches; the widest coarse stage's
            correspondence distance (``RefineCriteria.coarse_schedule[0]``), so every point a
            coarse stage may match is inside it.
        lookup_slack: how much the table's distance may exceed the exact one (about a cell's
            diagonal plus half a voxel's, with margin): points farther than an inlier by more
            are ruled out without an exact search.
    """

    voxel: float = 0.015
    cell: float = 0.01
    margin: float = 0.20
    lookup_slack: float = 0.03


@dataclass(frozen=True)
class RefineCriteria:
    """The refinement's schedule and decisions (distances are fractions of the object's diagonal;
    the choices are measured by ``benchmarks/refine_choice.py``).

    Attributes:
        max_points: the cloud is subsampled (seeded) to at most this many points for the fine
            stage and the fitness; more buys no accuracy on the synthetic bench sets.
        fine_points: points of those that the fine stage uses on a clean cloud (all of them
            when its first step shows noise): clean clouds pin the pose down with few points.
        coarse_points: points of those that drive the coarse stages.
        coarse_schedule: correspondence distance (and Tukey scale) of each coarse stage; the
            wide 20 % first stage gives a basin of about 45 degrees, on partial views too
            (synthetic bench sets).
        coarse_iterations: iteration cap of each coarse stage.
        fine_iterations: iteration cap of the fine stage.
        wide_tolerance: (degrees, distance) a step of the first (widest) coarse stage must stay
            under to stop it: it only has to bring the pose into the next stage's basin.
        coarse_tolerance: the same for the other coarse stages.
        fine_tolerance: the same for the fine stage; point-to-plane ICP converges fast, so the
            pose ends much closer than this to the optimum (clean clouds of 1024 points about
            0.02 degrees from the truth, median).
        fine_distance: correspondence distance of the fine stage.
        fine_kernel_range: (low, high) clip of the fine stage's Tukey scale, which follows the
            residuals (``TUKEY_C`` robust sigmas): clean clouds converge tightly, noisy ones keep
            their informative points.
        inlier_distance: a point this close to the model is an inlier of the fitness: set on
            the synthetic bench sets (1 % noise stays inside); on the dragon's real laser scans
            (../shared/real) every point of a right pose is an inlier (fitness 1.000 at p10), and
            wrong poses keep 0.55-0.78 of them.
        noisy_rmse: inlier RMSE above which a cloud counts as noisy and the fine stage uses all
            ``max_points``: clean samples of the surface fit to about 0.0004, clouds with 1 %
            noise to about 0.008 (synthetic bench sets).
        min_correspondences: fewer correspondences than this cannot fix 6 degrees of freedom
            robustly: the stage stops, or the pose is returned unrefined.
        doubt_fitness: below this coarse fitness a start is doubtful and more are screened: set
            on the synthetic sets; real dragon scans in their right pose reach 1.0, wrong poses
            of them 0.55-0.78.
        nudge_degrees: doubtful starts also try turns of this many degrees either way about each
            model axis, beyond the basin of convergence (partial views have the narrowest).
        screen_stages: coarse stages that screened starts go through before the best is
            finished.
        screen_points: points that screened starts are driven and measured with.
        screen_iterations: iteration cap of each screening stage.
        screen_prune_margin: screened starts whose share of points near the surface after the
            first stage falls this far below the best start's stop there.
        rival_screen_margin: screened starts this close to the best one's screening fitness are
            finished too (with a ``distinct`` test), and kept as competitors when they end
            within the margins of the best fit.
        rival_finish: at most this many of them are finished.
        rival_fitness_margin: a fit competes when its fitness is within this of the reference's.
        rival_rmse_ratio: ... and its inlier RMSE within this many times the reference's.
        polish_shift: polishing (detection) restarts from copies shifted this far along each of
            the cloud's principal axes.
        polish_rmse_gain: a polished copy wins when its inlier RMSE is below this share of the
            best so far.
    """

    max_points: int = 1024
    fine_points: int = 512
    coarse_points: int = 256
    coarse_schedule: tuple[float, ...] = (0.20, 0.05)
    coarse_iterations: int = 8
    fine_iterations: int = 6
    wide_tolerance: tuple[float, float] = (0.5, 2e-3)
    coarse_tolerance: tuple[float, float] = (0.2, 1e-3)
    fine_tolerance: tuple[float, float] = (0.05, 3e-4)
    fine_distance: float = 0.05
    fine_kernel_range: tuple[float, float] = (0.01, 0.05)
    inlier_distance: float = 0.025
    noisy_rmse: float = 0.002
    min_correspondences: int = 8
    doubt_fitness: float = 0.9
    nudge_degrees: float = 40.0
    screen_stages: int = 1
    screen_points: int = 128
    screen_iterations: int = 5
    screen_prune_margin: float = 0.15
    rival_screen_margin: float = 0.1
    rival_finish: int = 3
    rival_fitness_margin: float = 0.03
    rival_rmse_ratio: float = 1.5
    polish_shift: float = 0.03
    polish_rmse_gain: float = 0.97

    def tolerance(self, fraction: float, diagonal: float) -> tuple[float, float]:
        """The stop test (radians, mesh units) of the coarse stage at ``fraction``: the widest
        stage's is the loosest."""
        tolerance = self.wide_tolerance if fraction == self.coarse_schedule[0] else self.coarse_tolerance
        return np.radians(tolerance[0]), tolerance[1] * diagonal


REFINE_CRITERIA = RefineCriteria()
SURFACE_GRID = SurfaceGrid()
# The defaults under the names other modules and benchmarks read.
COARSE_SCHEDULE = REFINE_CRITERIA.coarse_schedule
COARSE_ITERATIONS = REFINE_CRITERIA.coarse_iterations
INLIER_DISTANCE = REFINE_CRITERIA.inlier_distance
DOUBT_FITNESS = REFINE_CRITERIA.doubt_fitness
RIVAL_FITNESS_MARGIN = REFINE_CRITERIA.rival_fitness_margin
DEFAULT_MAX_POINTS = REFINE_CRITERIA.max_points
# Confidence: the fitness, discounted as the inlier RMSE grows towards this fraction of the diagonal.
# Set on the synthetic sets; on real dragon scans right poses score about 0.97, wrong ones up to
# 0.57 (another object's scan): confidence alone does not refuse them, the explained test does
# (cloudpose.estimation.inference.EXPLAINED_RATIO).
CONFIDENCE_RMSE = 0.03
CONFIDENT = 0.5


def sample_surface_with_normals(
    vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Points uniformly distributed on a triangle mesh, each with its face's outward unit normal.

    Faces are drawn with probability proportional to their area and points uniformly inside them.
    Normals follow the face winding, ``(b - a) x (c - a)``; when the mesh's signed volume is
    negative (a closed mesh wound inward), all of them are flipped, so for a closed, consistently
    wound mesh they point outward.

    Args:
        vertices: (V, 3) mesh vertices.
        faces: (F, 3) vertex indices.
        count: number of points.
        rng: seeded generator (global state is never touched).

    Returns:
        (count, 6) float32: x, y, z, nx, ny, nz.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    corners = vertices[np.asarray(faces, dtype=np.int64)]  # (F, 3, 3)
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    double_area = np.linalg.norm(cross, axis=1)
    if not np.isfinite(double_area).all() or double_area.sum() <= 0:
        raise ValueError("mesh has no surface area")
    if (corners[:, 0] * cross).sum() < 0:  # six times the signed volume
        cross = -cross
    face_index = rng.choice(len(double_area), size=count, p=double_area / double_area.sum())
    u, v = rng.random((2, count))
    outside = u + v > 1
    u[outside], v[outside] = 1 - u[outside], 1 - v[outside]
    a, b, c = corners[face_index, 0], corners[face_index, 1], corners[face_index, 2]
    points = a + u[:, None] * (b - a) + v[:, None] * (c - a)
    normals = cross[face_index] / double_area[face_index, None]
    return np.concatenate([points, normals], axis=1).astype(np.float32)


INDEX_BACKENDS = ("small_gicp", "open3d")
# A batch of this many queries or more is split over QUERY_THREADS threads (smaller batches
# lose more to starting the threads than they gain: 1,000 queries of an 8,000-point tree take
# 0.16 ms in one thread, 0.10 ms in two).
THREADED_QUERIES = 1000
QUERY_THREADS = max(1, min(2, os.cpu_count() or 1))


class _NearestIndex:
    """Exact nearest model point for a batch of query points, built once."""

    def __init__(self, points: np.ndarray, backend: str | None = None) -> None:
        if backend is None:
            backend = "small_gicp" if small_gicp is not None else "open3d"
        if backend not in INDEX_BACKENDS:
            raise ValueError(f"unknown nearest-neighbour backend {backend!r}; use one of {INDEX_BACKENDS}")
        if backend == "small_gicp" and small_gicp is None:
            raise ValueError("the small_gicp backend needs the small_gicp package")
        self.backend = backend
        if backend == "small_gicp":
            self._tree = small_gicp.KdTree(np.ascontiguousarray(points, dtype=np.float64))
        else:
            self._tree = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(points))
            self._tree.knn_index()

    def query(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of and squared distance to the nearest model point, shapes (Q,) and (Q,)."""
        if self.backend == "small_gicp":
            threads = QUERY_THREADS if len(queries) >= THREADED_QUERIES else 1
            index, squared = self._tree.batch_nearest_neighbor_search(
                np.ascontiguousarray(queries), num_threads=threads
            )
            # Indices come as uint64 below 2**63: reinterpret them instead of copying.
            return np.asarray(index).view(np.int64), np.asarray(squared)
        index, squared = self._tree.knn_search(o3d.core.Tensor(np.ascontiguousarray(queries)), 1)
        return index.numpy()[:, 0].astype(np.int64), squared.numpy()[:, 0].astype(np.float64)


class _GridIndex:
    """Approximate nearest model point from a lookup table, for the coarse stages.

    The box around the model (enlarged by ``margin`` on every side) is cut into cubic cells of
    side ``cell``. Each cell holding model points keeps the one nearest its centre; every other
    cell keeps the point of the nearest such cell (an exact Euclidean distance transform over the
    cells). A query costs one table lookup, however far it is from the surface, and the point
    found lies within about one cell of the true nearest point, which is all the coarse stages
    need; the fine stage and the fitness use the exact index.
    """

    def __init__(self, points: np.ndarray, cell: float, margin: float) -> None:
        from scipy import ndimage

        self.points = np.ascontiguousarray(points, dtype=np.float64)
        self.low = self.points.min(axis=0) - margin
        self.inverse_cell = 1.0 / cell
        self.shape = (
            np.ceil((self.points.max(axis=0) + margin - self.low) * self.inverse_cell).astype(np.int64) + 1
        )
        cells = np.floor((self.points - self.low) * self.inverse_cell).astype(np.int64)
        flat = np.ravel_multi_index(cells.T, self.shape)
        offset = np.square(self.points - (self.low + (cells + 0.5) * cell)).sum(axis=1)
        order = np.lexsort((offset, flat))  # by cell, then nearest to the cell's centre first
        flat = flat[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = flat[1:] != flat[:-1]
        table = np.full(int(np.prod(self.shape)), -1, dtype=np.int64)
        table[flat[first]] = order[first]
        occupied = (table >= 0).reshape(tuple(self.shape))
        nearest_cell = ndimage.distance_transform_edt(~occupied, return_distances=False, return_indices=True)
        # The smallest index type that holds every point: the table is read at random, and a
        # quarter (int16) or half (int32) of int64's bytes keeps more of it in the caches.
        index_type = np.int16 if len(self.points) <= np.iinfo(np.int16).max else np.int32
        self.table = table[np.ravel_multi_index(tuple(nearest_cell), self.shape).ravel()].astype(index_type)
        self.strides = np.array([self.shape[1] * self.shape[2], self.shape[2], 1], dtype=np.int64)

    def query(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of and squared distance to a near model point, shapes (Q,) and (Q,).

        A query outside the box gets the point of the nearest cell on its border; the box is
        ``margin`` larger than the model, so that point is farther than ``margin`` away, beyond
        every correspondence distance the lookup serves.
        """
        cells = ((queries - self.low) * self.inverse_cell).astype(np.int64)  # truncation = floor inside
        np.clip(cells, 0, self.shape - 1, out=cells)
        index = np.take(self.table, cells @ self.strides)
        squared = np.square(queries - np.take(self.points, index, axis=0)).sum(axis=1)
        return index, squared


class SurfaceModel:
    """The canonical object surface that observed clouds are registered against.

    Built once (at service start) from points sampled on the mesh with their outward normals.

    Attributes:
        points: (M, 3) float64 surface points, canonical frame.
        normals: (M, 3) float64 outward unit normals.
        diagonal: the object's bounding-box diagonal, in mesh units; every distance threshold
            of the refinement is a fraction of it.
        cloud: open3d PointCloud of the points with their normals.
        coarse_points, coarse_normals: voxel-downsampled copy for the coarse ICP stages.
        index: exact nearest-point index of ``points``; coarse_index: lookup table of
            ``coarse_points`` (:class:`_GridIndex`).
        grid: how the coarse copy and its lookup table were made.
        axes: (3, 3) principal axes of the surface, one per row (canonical frame).
    """

    def __init__(
        self,
        points: np.ndarray,
        normals: np.ndarray,
        diagonal: float,
        *,
        index_backend: str | None = None,
        grid: SurfaceGrid = SURFACE_GRID,
    ) -> None:
        points = np.asarray(points, dtype=np.float64)
        normals = np.asarray(normals, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3 or normals.shape != points.shape or len(points) < 3:
            raise ValueError(f"surface model needs (M, 3) points and normals, got {points.shape}")
        if not (np.isfinite(points).all() and np.isfinite(normals).all()):
            raise ValueError("surface model holds non-finite values")
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        if (length < 1e-6).any():
            raise ValueError("surface model has zero-length normals")
        if not (np.isfinite(diagonal) and diagonal > 0):
            raise ValueError(f"diagonal must be a positive number, got {diagonal}")
        self.points = np.ascontiguousarray(points)
        self.normals = np.ascontiguousarray(normals / length)
        self.diagonal = float(diagonal)
        self.grid = grid
        self.cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(self.points))
        self.cloud.normals = o3d.utility.Vector3dVector(self.normals)
        coarse = self.cloud.voxel_down_sample(grid.voxel * self.diagonal)
        coarse_normals = np.asarray(coarse.normals)
        self.coarse_points = np.ascontiguousarray(np.asarray(coarse.points))
        self.coarse_normals = np.ascontiguousarray(
            coarse_normals / np.maximum(np.linalg.norm(coarse_normals, axis=1, keepdims=True), 1e-12)
        )
        self.index = _NearestIndex(self.points, index_backend)
        self.coarse_index = _GridIndex(
            self.coarse_points, grid.cell * self.diagonal, grid.margin * self.diagonal
        )
        self.axes = principal_axes(self.points)[1]

    @classmethod
    def from_array(
        cls, array: np.ndarray, diagonal: float, *, index_backend: str | None = None
    ) -> SurfaceModel:
        """From an (M, 6) array of points and outward normals (``surface.npy``)."""
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[1] != 6:
            raise ValueError(f"surface array must have shape (M, 6), got {array.shape}")
        return cls(array[:, :3], array[:, 3:], diagonal, index_backend=index_backend)

    @classmethod
    def load(cls, path: str | Path, diagonal: float, *, index_backend: str | None = None) -> SurfaceModel:
        """Read ``surface.npy`` (written by the exporter beside the ONNX model)."""
        return cls.from_array(np.load(path, allow_pickle=False), diagonal, index_backend=index_backend)

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class Refinement:
    """A refined object pose and how well the observed cloud fits the model in it.

    Attributes:
        object_rotation: (3, 3), ``observed = canonical @ object_rotation + object_translation``.
        object_translation: (3,).
        fitness: fraction of the (subsampled) observed points with a model point within the
            inlier distance (``INLIER_DISTANCE`` of the diagonal).
        inlier_rmse: RMS point-to-plane distance of those inliers, in mesh units.
        inlier_rmse_percent: the same as a percentage of the object's diagonal.
        hypotheses: starting poses refined (1 when the first was not doubtful).
        refined: False when the cloud had too few usable points and the input pose is returned.
        confidence: fitness discounted by the RMSE, in [0, 1]; high for the object, low for a
            cloud of another shape or a wrong pose.
        competitors: other refined poses, more than the symmetry-aware ``distinct`` test apart,
            that fit the cloud about as well (within ``RIVAL_FITNESS_MARGIN``): a view that
            several poses explain.
        explained: False when the inlier RMSE is well beyond what the cloud's own scatter about
            its local surface (:func:`surface_noise`) and the object's surface tolerance explain:
            a wrong pose that still lies near the surface.
        surface_noise: that scatter, in mesh units, when it was measured.
        surface_tolerance: the object's surface tolerance the verdict allowed, mesh units.
    """

    object_rotation: np.ndarray
    object_translation: np.ndarray
    fitness: float
    inlier_rmse: float
    inlier_rmse_percent: float
    hypotheses: int
    refined: bool
    confidence: float
    competitors: list[Refinement] = field(default_factory=list)
    explained: bool = True
    surface_noise: float | None = None
    surface_tolerance: float | None = None

    @property
    def confident(self) -> bool:
        """Whether the confidence reaches ``CONFIDENT``."""
        return self.confidence >= CONFIDENT

    def summary(self) -> dict[str, float | int | bool | None]:
        """The confidence figures as plain JSON-ready values (None for an RMSE without inliers)."""
        # Plain Python types: numpy scalars would not serialize as JSON.
        finite = bool(np.isfinite(self.inlier_rmse))
        return {
            "confidence": round(float(self.confidence), 4),
            "confident": bool(self.confident),
            "fitness": round(float(self.fitness), 4),
            "inlier_rmse": float(self.inlier_rmse) if finite else None,
            "inlier_rmse_percent": round(float(self.inlier_rmse_percent), 4) if finite else None,
            "hypotheses": int(self.hypotheses),
            "refined": bool(self.refined),
            "explained": bool(self.explained),
            "surface_noise": None if self.surface_noise is None else float(self.surface_noise),
        }


def principal_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (3,) and principal axes (3, 3), one unit axis per row, largest variance first."""
    centroid = points.mean(axis=0)
    centered = points - centroid
    _, vectors = np.linalg.eigh(centered.T @ centered)
    return centroid, vectors[:, ::-1].T


def confidence_score(fitness: float, inlier_rmse_fraction: float) -> float:
    """Fitness discounted linearly as the inlier RMSE grows to ``CONFIDENCE_RMSE`` of the diagonal."""
    return float(fitness * np.clip(1.0 - inlier_rmse_fraction / CONFIDENCE_RMSE, 0.0, 1.0))


def back_matrix(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Column-vector 4x4 that maps observed points to the canonical frame for an object pose."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = -rotation @ translation
    return matrix


def object_pose(back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object pose (row vectors) of a back transform, the rotation re-orthonormalized."""
    u, _, vh = np.linalg.svd(back[:3, :3])
    rotation = u @ vh
    return rotation, -back[:3, 3] @ rotation


def _rotation_from_vector(vector: np.ndarray) -> np.ndarray:
    """Rotation matrix (column vectors) of a rotation vector, by Rodrigues' formula."""
    x, y, z = (float(value) for value in vector)
    angle = math.sqrt(x * x + y * y + z * z)
    if angle < 1e-15:
        return np.eye(3)
    x, y, z = x / angle, y / angle, z / angle
    sin, cos = math.sin(angle), 1.0 - math.cos(angle)  # plain floats: numpy is slow on 3x3 scalars
    return np.array(
        [
            [1.0 - cos * (y * y + z * z), cos * x * y - sin * z, cos * x * z + sin * y],
            [cos * x * y + sin * z, 1.0 - cos * (x * x + z * z), cos * y * z - sin * x],
            [cos * x * z - sin * y, cos * y * z + sin * x, 1.0 - cos * (x * x + y * y)],
        ]
    )


def _point_to_plane_jacobian(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """The point-to-plane residuals' Jacobian in (rotation, translation) about the model's origin,
    transposed: rows (x cross n, n), shape (6, K) for (K, 3) points and normals, for contiguous
    writes."""
    px, py, pz = points.T
    nx, ny, nz = normals.T
    jacobian = np.empty((6, len(points)))
    np.multiply(py, nz, out=jacobian[0])
    jacobian[0] -= pz * ny
    np.multiply(pz, nx, out=jacobian[1])
    jacobian[1] -= px * nz
    np.multiply(px, ny, out=jacobian[2])
    jacobian[2] -= py * nx
    jacobian[3:] = normals.T
    return jacobian


def _point_to_plane_step(
    points: np.ndarray, normals: np.ndarray, residuals: np.ndarray, weights: np.ndarray
) -> np.ndarray | None:
    """One weighted Gauss-Newton step of point-to-plane ICP, as a column-vector 4x4 increment.

    Minimizes ``sum w * ((x + omega cross x + v - target) . n)^2`` over the small rotation ``omega``
    and translation ``v``, about the model's origin.
    """
    jacobian = _point_to_plane_jacobian(points, normals)
    weighted = jacobian * weights
    hessian = weighted @ jacobian.T
    hessian.flat[::7] += 1e-12 * hessian.trace()
    try:
        solution = np.linalg.solve(hessian, -(weighted @ residuals))
    except np.linalg.LinAlgError:
        return None
    step = np.eye(4)
    step[:3, :3] = _rotation_from_vector(solution[:3])
    step[:3, 3] = solution[3:]
    return step


def _icp(
    source: np.ndarray,
    index: _NearestIndex,
    model_points: np.ndarray,
    model_normals: np.ndarray,
    back: np.ndarray,
    distance: float,
    iterations: int,
    kernel: float | tuple[float, float],
    tolerance: tuple[float, float],
    inlier_distance: float,
    min_correspondences: int = REFINE_CRITERIA.min_correspondences,
) -> tuple[np.ndarray, float, float, bool]:
    """Robust point-to-plane ICP from ``source`` (observed points) to the model points.

    Args:
        back: column-vector 4x4 from the observed to the canonical frame, the starting pose.
        distance: correspondences farther than this are ignored.
        kernel: a fixed Tukey scale, or a (low, high) range for a scale re-estimated from the
            residuals at each iteration (``TUKEY_C`` robust sigmas).
        tolerance: stop after a step that rotates less than this many radians and moves less
            than this distance (the step is applied).
        inlier_distance: threshold of the fitness (at most ``distance``).
        min_correspondences: the stage stops with fewer correspondences or weighted points.

    Returns:
        The new back transform, the fitness and inlier RMSE (point-to-plane) measured with the
        last correspondence search (the RMSE at the returned pose), and whether the last step
        met the tolerance.
    """
    total = len(source)
    fitness, rmse, done = 0.0, float("inf"), False
    inlier_squared = inlier_distance * inlier_distance
    for iteration in range(iterations):
        posed = source @ back[:3, :3].T + back[:3, 3]
        nearest, squared = index.query(posed)
        near = squared < distance * distance
        if np.count_nonzero(near) < min_correspondences:
            fitness, rmse = 0.0, float("inf")
            break
        if not near.all():
            # Points this far away stay unmatched while the pose moves little: stop querying them.
            keep = squared < 4 * distance * distance
            source = source[keep]
            posed, nearest, squared = posed[near], nearest[near], squared[near]
        targets, normals = np.take(model_points, nearest, axis=0), np.take(model_normals, nearest, axis=0)
        residuals = np.einsum("ij,ij->i", posed - targets, normals)
        if isinstance(kernel, tuple):
            middle = len(residuals) // 2
            sigma = MAD_SIGMA * float(np.partition(np.abs(residuals), middle)[middle])
            scale = float(np.clip(TUKEY_C * sigma, kernel[0], kernel[1]))
        else:
            scale = kernel
        weights = np.square(1.0 - np.minimum(np.square(residuals / scale), 1.0))
        step = None
        if np.count_nonzero(weights) >= min_correspondences:
            step = _point_to_plane_step(posed, normals, residuals, weights)
        inlier = squared < inlier_squared
        fitness = np.count_nonzero(inlier) / total
        if step is None:
            rmse = _rms(residuals[inlier])
            break
        back = step @ back
        angle = math.acos(min(1.0, max(-1.0, (step[0, 0] + step[1, 1] + step[2, 2] - 1.0) / 2.0)))
        done = angle < tolerance[0] and math.hypot(*step[:3, 3]) < tolerance[1]
        if done or iteration == iterations - 1:
            # The inliers' RMSE after the last step (point-to-plane, same correspondences).
            moved = posed[inlier] @ step[:3, :3].T + step[:3, 3]
            rmse = _rms(np.einsum("ij,ij->i", moved - targets[inlier], normals[inlier]))
            break
    return back, fitness, rmse, done


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if len(values) else float("inf")


def _measure(
    source: np.ndarray, model: SurfaceModel, back: np.ndarray, inlier_distance: float
) -> tuple[float, float]:
    """Fitness and inlier RMSE (point-to-plane) of ``source`` posed by ``back``."""
    fitness, rmse = _measure_batch(source, model, back[None], inlier_distance)
    return float(fitness[0]), float(rmse[0])


def _rotations_from_vectors(vectors: np.ndarray) -> np.ndarray:
    """Rotation matrices (column vectors) of rotation vectors, (K, 3) -> (K, 3, 3)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(vectors).as_matrix()


def _posed_batch(source: np.ndarray, backs: np.ndarray) -> np.ndarray:
    """``source`` (N, 3) under each back transform of ``backs`` (K, 4, 4): (K, N, 3)."""
    return np.matmul(source, backs[:, :3, :3].transpose(0, 2, 1)) + backs[:, None, :3, 3]


def _icp_batch(
    source: np.ndarray,
    index: _GridIndex | _NearestIndex,
    model_points: np.ndarray,
    model_normals: np.ndarray,
    backs: np.ndarray,
    distance: float,
    iterations: int,
    tolerance: tuple[float, float],
    min_correspondences: int = REFINE_CRITERIA.min_correspondences,
) -> np.ndarray:
    """Robust point-to-plane ICP of one cloud from many starting poses at once.

    The coarse stages of :func:`_icp` (a fixed Tukey scale equal to ``distance``), run for every
    start together: one nearest-point query and one batched solve per iteration for all of them,
    so screening dozens of starts costs about as much Python as refining one. Points beyond
    ``distance`` get no weight (rather than being dropped), and each start stops once a step
    meets ``tolerance`` (or at the cap), as :func:`_icp` does.

    Args:
        source: (N, 3) observed points.
        backs: (K, 4, 4) column-vector back transforms, the starting poses.

    Returns:
        (K, 4, 4) the back transforms after the stage.
    """
    backs = np.array(backs, dtype=np.float64)
    total = len(source)
    active = np.arange(len(backs))  # starts still moving
    for _ in range(iterations):
        if budget.expired():  # the starts stop where they are; the caller ranks them as they stand
            break
        count = len(active)
        posed = _posed_batch(source, backs[active]).reshape(-1, 3)  # (K*N, 3)
        nearest, squared = index.query(posed)
        normals = np.take(model_normals, nearest, axis=0)
        residuals = np.einsum("ij,ij->i", posed - np.take(model_points, nearest, axis=0), normals)
        weights = np.square(1.0 - np.minimum(np.square(residuals / distance), 1.0))
        weights[squared >= distance * distance] = 0.0
        jacobian = _point_to_plane_jacobian(posed, normals).reshape(6, count, total).transpose(1, 0, 2)
        weighted = jacobian * weights.reshape(count, 1, total)
        hessian = np.matmul(weighted, jacobian.transpose(0, 2, 1))  # (K, 6, 6)
        gradient = np.matmul(weighted, residuals.reshape(count, total, 1))[:, :, 0]
        usable = np.count_nonzero(weights.reshape(count, total), axis=1) >= min_correspondences
        hessian += (1e-12 * np.trace(hessian, axis1=1, axis2=2) + 1e-300)[:, None, None] * np.eye(6)
        try:
            solution = np.linalg.solve(hessian, -gradient[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            return backs
        solution[~usable] = 0.0
        steps = np.zeros((count, 4, 4))
        steps[:, :3, :3] = _rotations_from_vectors(solution[:, :3])
        steps[:, :3, 3] = solution[:, 3:]
        steps[:, 3, 3] = 1.0
        backs[active] = steps @ backs[active]
        rotated = np.linalg.norm(solution[:, :3], axis=1)
        moved = np.linalg.norm(solution[:, 3:], axis=1)
        active = active[(rotated >= tolerance[0]) | (moved >= tolerance[1])]
        if not len(active):
            break
    return backs


def _may_be_inliers(posed: np.ndarray, model: SurfaceModel, inlier_distance: float) -> np.ndarray:
    """(Q,) bool: the points (Q, 3) that the lookup table does not rule out as inliers (its
    distance exceeds the exact one by at most ``model.grid.lookup_slack`` of the diagonal)."""
    reach = inlier_distance + model.grid.lookup_slack * model.diagonal
    return model.coarse_index.query(posed)[1] < reach * reach


def _measure_batch(
    source: np.ndarray, model: SurfaceModel, backs: np.ndarray, inlier_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fitness and inlier RMSE (point-to-plane) of ``source`` (N, 3) under each of ``backs``
    (K, 4, 4), with exact nearest points: shapes (K,) and (K,), RMSE inf without inliers.

    The lookup table rules out the points that cannot be inliers first (its distance is within
    ``model.grid.lookup_slack`` of the diagonal of the exact one): an exact search far from the surface is
    slow, and a wrong pose puts many points there.
    """
    count, total = len(backs), len(source)
    posed = _posed_batch(source, backs).reshape(-1, 3)
    near = np.flatnonzero(_may_be_inliers(posed, model, inlier_distance))
    nearest, squared = model.index.query(posed[near])
    residuals = np.zeros(len(posed))
    residuals[near] = np.einsum(
        "ij,ij->i",
        posed[near] - np.take(model.points, nearest, axis=0),
        np.take(model.normals, nearest, axis=0),
    )
    residuals = residuals.reshape(count, total)
    inlier = np.zeros(len(posed), dtype=bool)
    inlier[near] = squared < inlier_distance * inlier_distance
    inlier = inlier.reshape(count, total)
    inliers = np.count_nonzero(inlier, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse = np.sqrt(np.where(inlier, np.square(residuals), 0.0).sum(axis=1) / inliers)
    rmse[inliers == 0] = np.inf
    return inliers / total, rmse


def screen_starts(
    observed: np.ndarray,
    model: SurfaceModel,
    starts: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    points: int | None = None,
    stages: Sequence[float] | None = None,
    iterations: int | None = None,
    seed: int = 0,
    criteria: RefineCriteria = REFINE_CRITERIA,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bring many starting object poses a few coarse steps towards the cloud, all at once, and
    measure each: what screening hypotheses costs.

    Args:
        observed: (N, 3) cloud; a seeded subsample of ``points`` drives the stages and the measure.
        starts: object poses (rotation (3, 3), translation (3,)).
        points: default ``criteria.screen_points``.
        stages: the coarse stages to run (fractions of the diagonal), ``iterations`` at most each;
            default the criteria's screening stages and iterations.
        criteria: the refinement's knobs.

    Returns:
        (K, 4, 4) back transforms after the stages, and their fitness (K,) and inlier RMSE (K,).
    """
    points = criteria.screen_points if points is None else points
    stages = criteria.coarse_schedule[: criteria.screen_stages] if stages is None else stages
    iterations = criteria.screen_iterations if iterations is None else iterations
    source = np.asarray(observed, dtype=np.float64).reshape(-1, 3)
    source = source[np.isfinite(source).all(axis=1)]
    if len(source) > points:
        source = source[np.random.default_rng(seed).choice(len(source), size=points, replace=False)]
    backs = np.stack([back_matrix(*_as_pose(pose)) for pose in starts])
    backs = _coarse_batch(source, model, backs, stages[:1], iterations, criteria)
    if len(stages) > 1 and len(backs) > 1:
        # Starts that the first stage left far behind the best cannot catch up: only the others
        # go on (the lookup table's distances, with its slack, are enough to tell).
        posed = _posed_batch(source, backs).reshape(-1, 3)
        inlier_distance = criteria.inlier_distance * model.diagonal
        rough = _may_be_inliers(posed, model, inlier_distance).reshape(len(backs), -1).mean(axis=1)
        going = rough >= rough.max() - criteria.screen_prune_margin
        backs[going] = _coarse_batch(source, model, backs[going], stages[1:], iterations, criteria)
    fitness, rmse = _measure_batch(source, model, backs, criteria.inlier_distance * model.diagonal)
    return backs, fitness, rmse


def _coarse_batch(
    source: np.ndarray,
    model: SurfaceModel,
    backs: np.ndarray,
    stages: Sequence[float],
    iterations: int,
    criteria: RefineCriteria = REFINE_CRITERIA,
) -> np.ndarray:
    """The coarse stages (:func:`_icp_batch` against the lookup table) for many starts."""
    diagonal = model.diagonal
    for fraction in stages:
        backs = _icp_batch(
            source,
            model.coarse_index,
            model.coarse_points,
            model.coarse_normals,
            backs,
            fraction * diagonal,
            iterations,
            criteria.tolerance(fraction, diagonal),
            criteria.min_correspondences,
        )
    return backs


def _turn(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation matrix by ``degrees`` about the unit ``axis``."""
    return _rotation_from_vector(np.radians(degrees) * axis)


def rotation_about(axis: np.ndarray, degrees: float) -> np.ndarray:
    """(3, 3) turn by ``degrees`` about the unit ``axis``, the matrix that left-multiplies an
    object rotation as the half turns of :func:`search_starts` do."""
    return _turn(np.asarray(axis, dtype=np.float64), degrees)


def search_starts(
    rotation: np.ndarray,
    translation: np.ndarray,
    model: SurfaceModel,
    observed: np.ndarray,
    nudge_degrees: float = REFINE_CRITERIA.nudge_degrees,
) -> list[np.ndarray]:
    """Starting poses near the given one that ICP alone would not reach.

    Half turns about each principal axis of the model (canonical frame, about the object's centre)
    and of the observed cloud (about its centroid), which undo the symmetric confusions of a
    coarse estimate, and turns of ``nudge_degrees`` either way about each model axis, which reach
    beyond the basin of convergence (partial views have the narrowest).
    """
    starts = []
    for axis in model.axes:
        flip = 2.0 * np.outer(axis, axis) - np.eye(3)
        starts.append(back_matrix(flip @ rotation, translation))
    centroid, axes = principal_axes(observed)
    for axis in axes:
        flip = 2.0 * np.outer(axis, axis) - np.eye(3)
        starts.append(back_matrix(rotation @ flip, (translation - centroid) @ flip + centroid))
    for axis in model.axes:
        for sign in (1.0, -1.0):
            starts.append(back_matrix(_turn(axis, sign * nudge_degrees) @ rotation, translation))
    return starts


class _Registration:
    """One cloud's registration against the surface model: its seeded subsample and the stages
    that :func:`refine_pose` runs on it.

    Args:
        points: (N, 3) the subsampled cloud, in its seeded order (the first ones drive the
            coarse stages).
        model: the canonical surface.
        criteria: the schedule.
        coarse_points, fine_points, coarse_iterations, fine_iterations: the call's values.
    """

    def __init__(
        self,
        points: np.ndarray,
        model: SurfaceModel,
        criteria: RefineCriteria,
        coarse_points: int,
        fine_points: int,
        coarse_iterations: int,
        fine_iterations: int,
    ) -> None:
        self.points, self.model, self.criteria = points, model, criteria
        self.coarse = points[:coarse_points]
        self.fine_points, self.coarse_iterations, self.fine_iterations = (
            fine_points,
            coarse_iterations,
            fine_iterations,
        )
        diagonal = model.diagonal
        self.diagonal = diagonal
        self.coarse_tolerance = (
            np.radians(criteria.coarse_tolerance[0]),
            criteria.coarse_tolerance[1] * diagonal,
        )
        self.wide_tolerance = (np.radians(criteria.wide_tolerance[0]), criteria.wide_tolerance[1] * diagonal)
        self.inlier_distance = criteria.inlier_distance * diagonal
        self.hypotheses = 1  # starting poses refined

    def coarse_stages(
        self, back: np.ndarray, source: np.ndarray, schedule: Sequence[float]
    ) -> tuple[np.ndarray, float]:
        """The pose after the coarse stages, and the last stage's fitness (lookup-table distances)."""
        model, criteria = self.model, self.criteria
        fitness = 0.0
        for fraction in schedule:
            distance = fraction * self.diagonal
            back, fitness, _, _ = _icp(
                source,
                model.coarse_index,
                model.coarse_points,
                model.coarse_normals,
                back,
                distance,
                self.coarse_iterations,
                distance,
                self.wide_tolerance if fraction == criteria.coarse_schedule[0] else self.coarse_tolerance,
                min(distance, self.inlier_distance),
                criteria.min_correspondences,
            )
        return back, fitness

    def fine_stage(
        self, back: np.ndarray, source: np.ndarray, iterations: int
    ) -> tuple[np.ndarray, float, float, bool]:
        """:func:`_icp` against the full model, the Tukey scale following the residuals."""
        model, criteria, diagonal = self.model, self.criteria, self.diagonal
        return _icp(
            source,
            model.index,
            model.points,
            model.normals,
            back,
            criteria.fine_distance * diagonal,
            iterations,
            (criteria.fine_kernel_range[0] * diagonal, criteria.fine_kernel_range[1] * diagonal),
            (np.radians(criteria.fine_tolerance[0]), criteria.fine_tolerance[1] * diagonal),
            self.inlier_distance,
            criteria.min_correspondences,
        )

    def finish(self, back: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray]:
        """The fine stage from ``back``: the final back transform, its fitness and inlier RMSE,
        and the points it used."""
        # Clean clouds pin the pose down with few points; noisy ones need more (the error of the
        # fit falls as noise / sqrt(points)). The first step tells them apart by its inliers' RMSE.
        points = self.points
        fitted = points[: self.fine_points]
        final, fitness, rmse, converged = self.fine_stage(back, fitted, 1)
        if len(points) > len(fitted) and not rmse < self.criteria.noisy_rmse * self.diagonal:
            fitted = points
            converged = False
        if not converged:
            final, fitness, rmse, _ = self.fine_stage(final, fitted, self.fine_iterations - 1)
        return final, fitness, rmse, fitted

    def refinement(self, back: np.ndarray, fitness: float, rmse: float) -> Refinement:
        """The finished pose ``back`` as a :class:`Refinement`."""
        refined_rotation, refined_translation = object_pose(back)
        return Refinement(
            object_rotation=refined_rotation,
            object_translation=refined_translation,
            fitness=fitness,
            inlier_rmse=rmse,
            inlier_rmse_percent=100.0 * rmse / self.diagonal,
            hypotheses=self.hypotheses,
            refined=True,
            confidence=confidence_score(fitness, rmse / self.diagonal),
        )

    def first_fit(
        self,
        rotation: np.ndarray,
        translation: np.ndarray,
        alternatives: Iterable[tuple[np.ndarray, np.ndarray]],
        doubt: float,
        search: bool,
    ) -> tuple[np.ndarray, list[tuple[tuple[float, float], np.ndarray]]]:
        """The start through the coarse stages; when its fitness is below ``doubt``, the
        alternatives (and with ``search`` the generated starts) screened beside it.

        Returns:
            The back transform to finish, and the screened ones with their :func:`fit_score`
            (none when the start was not doubtful).
        """
        criteria, model, coarse = self.criteria, self.model, self.coarse
        best, fitness = self.coarse_stages(
            back_matrix(rotation, translation), coarse, criteria.coarse_schedule
        )
        if fitness < doubt:  # the lookup table's distances are approximate: confirm with exact ones
            fitness, _ = _measure(coarse, model, best, self.inlier_distance)
        if not fitness < doubt:
            return best, []
        starts: list[np.ndarray] = [back_matrix(*_as_pose(pose)) for pose in alternatives]
        if search:
            starts += search_starts(rotation, translation, model, self.points, criteria.nudge_degrees)
        return self.screen(best, starts)

    def screen(
        self, best: np.ndarray, starts: list[np.ndarray]
    ) -> tuple[np.ndarray, list[tuple[tuple[float, float], np.ndarray]]]:
        """Screen ``starts`` beside the coarse pose ``best`` (the first stages on fewer points,
        all at once), and bring the best through the remaining coarse stages.

        Returns:
            The best back transform, and every screened one with its :func:`fit_score`.
        """
        criteria, model = self.criteria, self.model
        screen = self.coarse[: criteria.screen_points]
        best_score = fit_score(*_measure(screen, model, best, self.inlier_distance))
        screened = [(best_score, best)]
        finished = True
        if starts:
            stages = criteria.coarse_schedule[: criteria.screen_stages]
            candidates = _coarse_batch(
                screen, model, np.stack(starts), stages, criteria.screen_iterations, criteria
            )
            fits, rmses = _measure_batch(screen, model, candidates, self.inlier_distance)
            for candidate, fit, fit_rmse in zip(candidates, fits, rmses, strict=True):
                score = fit_score(fit, fit_rmse)
                screened.append((score, candidate))
                self.hypotheses += 1
                if score > best_score:
                    best, best_score, finished = candidate, score, False
        if not finished:
            best, _ = self.coarse_stages(
                best, self.coarse, criteria.coarse_schedule[criteria.screen_stages :]
            )
        return best, screened


def refine_pose(
    observed: np.ndarray,
    model: SurfaceModel,
    object_rotation: np.ndarray,
    object_translation: np.ndarray,
    *,
    alternatives: Iterable[tuple[np.ndarray, np.ndarray]] = (),
    max_points: int | None = None,
    fine_points: int | None = None,
    coarse_points: int | None = None,
    doubt_fitness: float | None = None,
    search: bool = True,
    distinct: Callable[[np.ndarray, np.ndarray], bool] | None = None,
    seed: int = 0,
    coarse_iterations: int | None = None,
    fine_iterations: int | None = None,
    criteria: RefineCriteria = REFINE_CRITERIA,
) -> Refinement:
    """Refine a coarse object pose by robust point-to-plane ICP against the surface model.

    Args:
        observed: (N, 3) cloud, any order and size; non-finite rows are ignored.
        model: the canonical surface.
        object_rotation: (3, 3) coarse pose, ``observed = canonical @ R + t``.
        object_translation: (3,).
        alternatives: other (rotation, translation) object poses to try when the first is doubtful.
        max_points: the cloud is subsampled (seeded, uniformly at random) to at most this many
            points for the fine stage and the fitness (default ``criteria.max_points``).
        fine_points: the fine stage uses this many of those points, or all of them when its
            first step shows a noisy cloud (inlier RMSE over ``criteria.noisy_rmse`` of the
            diagonal); the fitness counts the points it used (default ``criteria.fine_points``).
        coarse_points: points (a subset of those) that drive the coarse stages (default
            ``criteria.coarse_points``).
        doubt_fitness: the first pose is doubtful when its coarse fitness is below this
            (``criteria.doubt_fitness`` when None; 0 never doubts); then the alternatives and
            (with ``search``) twelve generated starts are screened as well.
        search: whether doubtful poses also try the generated starts: half turns about the
            model's and the cloud's principal axes, and ``criteria.nudge_degrees`` turns about
            the model's axes.
        distinct: ``distinct(rotation_a, rotation_b)`` says whether two object rotations are
            different answers (the object's symmetries aside); with it, screened starts that
            come close to the best are finished and kept as ``competitors`` when they fit
            about as well.
        seed: seed of the subsampling, so a cloud always gets the same answer.
        coarse_iterations, fine_iterations: iteration caps per coarse stage and of the fine
            stage (quick probes use fewer; defaults from ``criteria``).
        criteria: the schedule and the decisions' thresholds.

    Returns:
        The refined pose and its fit; ``refined`` is False (and the input pose is returned) when
        too few points have a model point nearby to fix the pose.
    """
    rotation = np.asarray(object_rotation, dtype=np.float64).reshape(3, 3)
    translation = np.asarray(object_translation, dtype=np.float64).reshape(3)
    points = np.asarray(observed, dtype=np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(axis=1)]
    points = _subsample(points, criteria.max_points if max_points is None else max_points, seed)
    registration = _Registration(
        points,
        model,
        criteria,
        criteria.coarse_points if coarse_points is None else coarse_points,
        criteria.fine_points if fine_points is None else fine_points,
        criteria.coarse_iterations if coarse_iterations is None else coarse_iterations,
        criteria.fine_iterations if fine_iterations is None else fine_iterations,
    )
    if len(points) < criteria.min_correspondences:
        return _unrefined(rotation, translation, 0)

    doubt = criteria.doubt_fitness if doubt_fitness is None else doubt_fitness
    best, screened = registration.first_fit(rotation, translation, alternatives, doubt, search)
    final, fitness, rmse, fitted = registration.finish(best)
    if fitness * len(fitted) < criteria.min_correspondences:
        return _unrefined(rotation, translation, registration.hypotheses)
    result = registration.refinement(final, fitness, rmse)
    if distinct is not None and len(screened) > 1:
        result = _lead_among_rivals(result, _rivals(screened, result, distinct, registration), criteria)
    return result


def _lead_among_rivals(result: Refinement, rivals: list[Refinement], criteria: RefineCriteria) -> Refinement:
    """The best finished fit of ``result`` and its ``rivals`` (screening on few points may
    misjudge them), with the others that compete with it as its competitors."""
    fitness, rmse = result.fitness, result.inlier_rmse
    better = [rival for rival in rivals if (rival.fitness, -rival.inlier_rmse) > (fitness, -rmse)]
    if better:
        leader = max(better, key=lambda rival: (rival.fitness, -rival.inlier_rmse))
        rivals = [
            item for item in (result, *rivals) if item is not leader and competes(item, leader, criteria)
        ]
        result = leader
    result.competitors = rivals
    return result


def _unrefined(rotation: np.ndarray, translation: np.ndarray, hypotheses: int) -> Refinement:
    """The input pose, returned when too few points have a model point nearby to fix it."""
    return Refinement(rotation, translation, 0.0, float("inf"), float("inf"), hypotheses, False, 0.0)


def _subsample(points: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """At most ``max_points`` of the points in a seeded random order (the first ones drive the
    coarse stages)."""
    rng = np.random.default_rng(seed)
    if len(points) > max_points:
        return points[rng.choice(len(points), size=max_points, replace=False)]
    return points[rng.permutation(len(points))]


def polish_pose(
    observed: np.ndarray,
    model: SurfaceModel,
    refinement: Refinement,
    *,
    shift: float | None = None,
    max_points: int | None = None,
    fine_points: int | None = None,
    coarse_points: int | None = None,
    seed: int = 0,
    criteria: RefineCriteria = REFINE_CRITERIA,
) -> Refinement:
    """A refined pose restarted from copies shifted along the cloud's principal axes.

    Smooth parts seen by a noisy depth sensor (a tube from one side, a flat arm) have shallow
    minima a few millimetres and degrees from the right pose, and ICP settles in the one it meets
    first. Each copy, ``shift`` of the diagonal (default ``criteria.polish_shift``) either way
    along each principal axis, goes through the coarse stages (all copies at once) and is
    finished; the deepest fit (smallest inlier RMSE by ``criteria.polish_rmse_gain`` at about
    the same fitness) is the answer. When the compute budget runs out during the coarse stages,
    the copies are not compared and the given refinement is the answer.

    Returns:
        The better refinement: the given one (its competitors kept) or the polished one.
    """
    shift = criteria.polish_shift if shift is None else shift
    max_points = criteria.max_points if max_points is None else max_points
    coarse_points = criteria.coarse_points if coarse_points is None else coarse_points
    points = np.asarray(observed, dtype=np.float64).reshape(-1, 3)
    points = _subsample(points[np.isfinite(points).all(axis=1)], max_points, seed)
    if not refinement.refined or len(points) < criteria.min_correspondences:
        return refinement
    centroid, axes = principal_axes(points)
    back = back_matrix(refinement.object_rotation, refinement.object_translation)
    starts = []
    for axis in axes:
        for sign in (-1.0, 1.0):
            start = back.copy()
            start[:3, 3] += sign * shift * model.diagonal * (back[:3, :3] @ axis)  # shift the cloud
            starts.append(start)
    coarse = _coarse_batch(
        points[:coarse_points],
        model,
        np.stack(starts),
        criteria.coarse_schedule,
        criteria.coarse_iterations,
        criteria,
    )
    if budget.expired():
        # The batch stopped with copies where they started: the fine stage alone does not bring
        # a copy slid along a long part back (its kernel drops the few points that would), and
        # such a copy can fit its inliers more closely than the pose it was shifted from.
        return refinement
    best = refinement
    for candidate in coarse:
        rotation, translation = object_pose(candidate)
        polished = refine_pose(
            points,
            model,
            rotation,
            translation,
            max_points=max_points,
            fine_points=fine_points,
            coarse_points=coarse_points,
            doubt_fitness=0.0,
            search=False,
            seed=seed,
            coarse_iterations=0,
            criteria=criteria,
        )
        if (
            polished.refined
            and polished.fitness >= refinement.fitness - criteria.rival_fitness_margin
            and polished.inlier_rmse < criteria.polish_rmse_gain * best.inlier_rmse
        ):
            best = polished
    if best is not refinement:
        best.hypotheses = refinement.hypotheses + len(starts)
        best.competitors = refinement.competitors
    return best


def _rivals(
    screened: list[tuple[tuple[float, float], np.ndarray]],
    result: Refinement,
    distinct: Callable[[np.ndarray, np.ndarray], bool],
    registration: _Registration,
) -> list[Refinement]:
    """Finished screened starts that fit about as well as ``result`` but are another pose."""
    criteria = registration.criteria
    top = max(score for score, _ in screened)[0]
    close = sorted(
        (item for item in screened if item[0][0] >= top - criteria.rival_screen_margin),
        key=lambda item: item[0],
    )[::-1]
    rivals: list[Refinement] = []
    finished = 0
    for _, back in close:
        if finished >= criteria.rival_finish:
            break
        rotation, _ = object_pose(back)
        if not distinct(rotation, result.object_rotation) or any(
            not distinct(rotation, other.object_rotation) for other in rivals
        ):
            continue
        finished += 1
        back, _ = registration.coarse_stages(
            back, registration.coarse, criteria.coarse_schedule[criteria.screen_stages :]
        )
        final, fitness, rmse, _ = registration.finish(back)
        rival = registration.refinement(final, fitness, rmse)
        if competes(rival, result, criteria) and distinct(rival.object_rotation, result.object_rotation):
            rivals.append(rival)
    return rivals


def competes(
    candidate: Refinement, reference: Refinement, criteria: RefineCriteria = REFINE_CRITERIA
) -> bool:
    """Whether a refined pose fits about as well as ``reference`` (fitness within
    ``criteria.rival_fitness_margin``, inlier RMSE within ``criteria.rival_rmse_ratio`` times)."""
    return (
        candidate.refined
        and candidate.fitness >= reference.fitness - criteria.rival_fitness_margin
        and candidate.inlier_rmse <= criteria.rival_rmse_ratio * reference.inlier_rmse
    )


def fit_score(fitness: float, rmse: float) -> tuple[float, float]:
    """Order of hypotheses and fits: fitness to two decimals, then the smaller RMSE."""
    return round(float(fitness), 2), -float(rmse)


def _as_pose(pose: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rotation, translation = pose
    return (
        np.asarray(rotation, dtype=np.float64).reshape(3, 3),
        np.asarray(translation, dtype=np.float64).reshape(3),
    )


def surface_noise(
    points: np.ndarray, seed: int = 0, queries: int = 256, neighbours: int = 10, max_points: int = 4096
) -> float:
    """How far a cloud's points scatter about their own local surface, independent of any model.

    The median, over up to ``queries`` points, of the RMS distance of each point's
    ``neighbours`` nearest points to their best-fit plane. A right pose leaves the cloud about
    this far from the model's surface (its inlier RMSE is of this size); a wrong pose that
    still lies close to the surface leaves it much farther, which no noise explains.

    Args:
        points: (N, 3) observed cloud, N >= ``neighbours``.
        max_points: the cloud is subsampled to this many points first, so the patches' size,
            and the estimate, stop shrinking as the cloud grows denser.
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if len(points) > max_points:
        points = points[rng.choice(len(points), max_points, replace=False)]
    count = min(neighbours, len(points))
    centres = points[rng.choice(len(points), min(queries, len(points)), replace=False)]
    _, index = cKDTree(points).query(centres, k=count)
    patches = points[index]  # (Q, k, 3)
    patches = patches - patches.mean(axis=1, keepdims=True)
    smallest = np.linalg.eigvalsh(np.einsum("qki,qkj->qij", patches, patches) / count)[:, 0]
    return float(np.median(np.sqrt(np.maximum(smallest, 0.0))))
