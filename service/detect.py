"""Whole frames: every instance of the known objects in a sensor frame, each with its pose.

A frame's points are in the sensor's frame (OpenCV's: camera at the origin looking along +z), in
``units`` (metres by default, as depth cameras give them). Each detection is an answer of
:meth:`service.objects.ServedObject.estimate` on one segment of the frame, so its pose follows the
same convention as ``/v1/pose`` (``canonical = points @ rotation + translation``, canonical in the
object's file frame and the frame's units) and it is ``found`` only when that estimator would say
so for a cut-out cloud of the object.

Steps (library calls where one exists):

1. a voxel grid (numpy: one key per point, means per voxel) of ``VOXEL_FRACTION`` of the smallest
   object's diagonal thins the frame; every point keeps its voxel, so segments come back at full
   resolution;
2. support planes go: RANSAC planes (open3d ``segment_plane``) holding at least
   ``PLANE_MIN_SHARE`` of what is left, at most ``MAX_PLANES`` of them;
3. segments: DBSCAN clusters of the voxels (open3d ``cluster_dbscan``); segments far smaller than
   any object are noise;
4. each segment is posed as each object whose size fits it, under a compute budget; a found pose
   is a detection. The points it explains are taken out of the segment, and what is left (a
   touching copy) is posed again, up to ``MAX_PER_SEGMENT`` times;
5. detections best first (confidence), at most ``max_instances``.

This is the first detector: what the scene benchmark measures of it is in the README.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service import budget
from service.objects import ObjectPose, ServedObject

# Voxel side, as a fraction of the smallest object's bounding-box diagonal.
VOXEL_FRACTION = 0.02
# A support plane is a RANSAC plane holding this share of the frame's voxels; fitted to within
# this many voxels.
PLANE_MIN_SHARE = 0.15
PLANE_DISTANCE_VOXELS = 1.5
MAX_PLANES = 2
PLANE_ITERATIONS = 200
# DBSCAN neighbourhood (voxels) and its least neighbours.
CLUSTER_EPS_VOXELS = 2.5
CLUSTER_MIN_POINTS = 8
# Segments spanning less than this share of an object's diagonal, or more than this multiple,
# are not posed as that object.
SEGMENT_SPAN = (0.2, 3.0)
# Fewest points a segment (or what is left of it) needs to be posed.
MIN_SEGMENT_POINTS = 32
# A segment is posed at most this many times (touching copies of objects).
MAX_PER_SEGMENT = 3
# Points within this share of the object's diagonal of the posed surface are explained by it.
EXPLAINED_FRACTION = 0.04
# What a found pose leaves of a segment is posed again only when it is this share of the segment
# (a touching copy), not the found instance's stray returns.
LEFTOVER_SHARE = 0.3
# Two detections of one object closer than these (degrees, symmetries aside; share of the
# diagonal) are one instance.
DUPLICATE_DEGREES = 10.0
DUPLICATE_DISTANCE = 0.1
# Compute budget of one pose of one segment.
SEGMENT_BUDGET_S = 0.5
# Model points that say how much of the object the sensor sees.
VISIBILITY_POINTS = 1500
# Free space: a posed model point facing the sensor contradicts the frame when the sensor saw
# something this much farther away (share of the diagonal) along its line of sight; a pose whose
# facing points contradict the frame in more than this share is refused.
FREE_SPACE_TOLERANCE = 0.03
FREE_SPACE_MAX_SHARE = 0.05
FACING_COSINE = 0.5
# A segment mostly explained by detections already made is not posed again.
EXPLAINED_ALREADY = 0.5


@dataclass
class Detection:
    """One instance of an object in a frame.

    Attributes:
        object: the object's name.
        pose: its answer, as for a cut-out cloud (frame units, file frame).
        n_points: frame points in its segment that the pose explains.
        visible_fraction: share of the posed model's surface facing the sensor that frame points
            cover (an occluded part lowers it).
    """

    object: str
    pose: ObjectPose
    n_points: int
    visible_fraction: float

    def confidence(self) -> float:
        summary = self.pose.confidence or {}
        return float(summary.get("confidence", 0.0))

    def to_dict(self) -> dict[str, Any]:
        answer = self.pose.to_dict()
        return {
            "object": self.object,
            **answer,
            "confident": bool(self.pose.found),
            "n_points": int(self.n_points),
            "visible_fraction": round(float(self.visible_fraction), 4),
        }


@dataclass
class FrameReport:
    """What a frame gave: detections best first, and how the frame was cut."""

    detections: list[Detection]
    segments: int
    plane_points: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    refused_by_free_space: int = 0
    complete: bool = True


def voxel_labels(points: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxel means of a cloud and each point's voxel.

    Args:
        points: (N, 3).
        voxel: the grid's cell side.

    Returns:
        (V, 3) voxel means, and (N,) the voxel index of every point.
    """
    cells = np.floor((points - points.min(axis=0)) / voxel).astype(np.int64)  # (N, 3)
    extent = cells.max(axis=0) + 1
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]  # (N,)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    means = np.stack([np.bincount(inverse, weights=points[:, axis]) for axis in range(3)], axis=1)
    return means / counts[:, None], inverse


def _support_planes(voxels: np.ndarray, voxel: float, seed: int) -> np.ndarray:
    """(V,) whether each voxel lies on a support plane."""
    import open3d as o3d

    on_plane = np.zeros(len(voxels), dtype=bool)
    o3d.utility.random.seed(seed)
    for _ in range(MAX_PLANES):
        rest = np.flatnonzero(~on_plane)
        if len(rest) < 3 * CLUSTER_MIN_POINTS:
            break
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(voxels[rest]))
        _, inliers = cloud.segment_plane(PLANE_DISTANCE_VOXELS * voxel, 3, PLANE_ITERATIONS)
        if len(inliers) < PLANE_MIN_SHARE * len(voxels):  # of the frame: not an object's face
            break
        on_plane[rest[np.asarray(inliers)]] = True
    return on_plane


def _clusters(voxels: np.ndarray, voxel: float) -> np.ndarray:
    """(V,) DBSCAN cluster of each voxel, -1 for noise."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(voxels))
    return np.asarray(cloud.cluster_dbscan(CLUSTER_EPS_VOXELS * voxel, CLUSTER_MIN_POINTS))


class RangeImage:
    """The nearest return in each direction from the sensor: a spherical grid of cells of
    ``cell`` radians (azimuth about the sensor's y axis, elevation), each holding the smallest
    range seen in it.

    Args:
        points: (N, 3) frame points.
        sensor: (3,) where the sensor was.
        cell: the grid's angular step, radians.
    """

    def __init__(self, points: np.ndarray, sensor: np.ndarray, cell: float) -> None:
        self.sensor, self.cell = sensor, cell
        keys, ranges = self._cells(points)
        order = np.lexsort((ranges, keys))  # by cell, nearest first
        keys, ranges = keys[order], ranges[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        self.keys, self.nearest = keys[first], ranges[first]  # sorted cells, their nearest range

    def _cells(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offset = points - self.sensor
        ranges = np.linalg.norm(offset, axis=1)
        azimuth = np.arctan2(offset[:, 0], offset[:, 2])
        elevation = np.arctan2(offset[:, 1], np.hypot(offset[:, 0], offset[:, 2]))
        columns = np.floor((azimuth + np.pi) / self.cell).astype(np.int64)
        rows = np.floor((elevation + np.pi) / self.cell).astype(np.int64)
        return rows * (int(2 * np.pi / self.cell) + 2) + columns, ranges

    def contradicted(self, points: np.ndarray, tolerance: float) -> tuple[int, int]:
        """How many of ``points`` (M, 3) the sensor saw through (its nearest return in their
        direction lies more than ``tolerance`` beyond them), of how many in directions where
        it saw anything."""
        keys, ranges = self._cells(points)
        where = np.searchsorted(self.keys, keys)
        seen = (where < len(self.keys)) & (self.keys[np.minimum(where, len(self.keys) - 1)] == keys)
        beyond = self.nearest[where[seen]] > ranges[seen] + tolerance
        return int(beyond.sum()), int(seen.sum())


def _span(points: np.ndarray) -> float:
    return float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))


def _posed_surface(served: ServedObject, pose: ObjectPose) -> tuple[np.ndarray, np.ndarray]:
    """The object's surface points and normals in the frame (frame units), (M, 3) each."""
    surface = served.estimator.surface
    step = max(1, len(surface.points) // VISIBILITY_POINTS)
    canonical = (surface.points[::step] + served.centroid) / pose.scale  # file frame, frame units
    normals = surface.normals[::step]
    return canonical @ pose.object_rotation + pose.object_translation, normals @ pose.object_rotation


def _explained(points: np.ndarray, posed: np.ndarray, reach: float) -> np.ndarray:
    """(N,) whether each point lies within ``reach`` of the posed surface sample."""
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(posed).query(points, distance_upper_bound=reach)
    return np.isfinite(distance)


def _visible_fraction(
    points: np.ndarray, posed: np.ndarray, normals: np.ndarray, viewpoint: np.ndarray, reach: float
) -> float:
    """Share of the posed surface facing the viewpoint that the points cover."""
    from scipy.spatial import cKDTree

    facing = np.einsum("ij,ij->i", normals, viewpoint - posed) > 0
    if not facing.any():
        return 0.0
    distance, _ = cKDTree(points).query(posed[facing], distance_upper_bound=reach)
    return float(np.mean(np.isfinite(distance)))


def detect(
    points: np.ndarray,
    objects: Mapping[str, ServedObject],
    units: str | None = "m",
    viewpoint: Sequence[float] | None = None,
    max_instances: int | None = None,
    seed: int = 0,
    budget_s: float | None = None,
) -> FrameReport:
    """Every found instance of ``objects`` in a frame.

    Args:
        points: (N, 3) the frame, sensor frame, in ``units`` (None: the objects' own units).
        objects: the objects to look for, by name.
        units: what the points are in.
        viewpoint: (3,) where the sensor was (the origin for a frame as a depth camera gives it).
        max_instances: at most this many detections (all by default).
        seed: RANSAC's seed, so a frame always gets the same answer.
        budget_s: past this, no more segment is posed: the detections so far are the answer
            (``FrameReport.complete`` is False).

    Returns:
        The detections, best first, and how the frame was cut.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    points = np.asarray(points, dtype=np.float64)
    sensor = np.zeros(3) if viewpoint is None else np.asarray(viewpoint, dtype=np.float64)
    # Each object's diagonal in the frame's units (a 422 for an object without units when the
    # frame has some).
    sizes = {name: served.diagonal / served.scale_for(units) for name, served in objects.items()}
    voxel = VOXEL_FRACTION * min(sizes.values())
    voxels, voxel_of_point = voxel_labels(points, voxel)
    timings["voxels_ms"] = (time.perf_counter() - started) * 1000
    on_plane = _support_planes(voxels, voxel, seed)
    timings["planes_ms"] = (time.perf_counter() - started) * 1000 - timings["voxels_ms"]
    labels = np.full(len(voxels), -1)
    kept = np.flatnonzero(~on_plane)
    if len(kept):
        labels[kept] = _clusters(voxels[kept], voxel)
    point_labels = labels[voxel_of_point]  # (N,)
    timings["segments_ms"] = (time.perf_counter() - started) * 1000 - sum(timings.values())
    # The points of each segment, by one sort (a pass per segment would cost points x segments).
    order = np.argsort(point_labels, kind="stable")
    bounds = np.searchsorted(point_labels[order], np.arange(labels.max() + 2))
    segments = [order[bounds[label] : bounds[label + 1]] for label in range(labels.max() + 1)]
    segments = sorted((item for item in segments if len(item) >= MIN_SEGMENT_POINTS), key=len, reverse=True)
    ranges = np.linalg.norm(voxels - sensor, axis=1)
    seen = RangeImage(voxels, sensor, cell=voxel / max(float(np.median(ranges)), voxel))
    detections: list[Detection] = []
    surfaces: list[tuple[np.ndarray, float]] = []  # each detection's posed surface and reach
    refused = 0
    deadline = None if budget_s is None else started + budget_s
    complete = True
    for members in segments:
        if deadline is not None and time.perf_counter() > deadline:
            complete = False
            break
        remaining = points[members]
        for posed, reach in surfaces:  # fragments of instances already found
            remaining = remaining[~_explained(remaining, posed, reach)]
        if len(remaining) < (1 - EXPLAINED_ALREADY) * len(members):
            continue
        least = max(MIN_SEGMENT_POINTS, LEFTOVER_SHARE * len(remaining))
        for attempt in range(MAX_PER_SEGMENT):
            if len(remaining) < (MIN_SEGMENT_POINTS if attempt == 0 else least):
                break
            found, contradicted = _pose_segment(remaining, objects, sizes, units, sensor, seen)
            refused += contradicted
            if found is None:
                break
            detection, explained, posed, reach = found
            if not any(_same_instance(detection, other, objects, sizes) for other in detections):
                detections.append(detection)
                surfaces.append((posed, reach))
            remaining = remaining[~explained]
    timings["poses_ms"] = (time.perf_counter() - started) * 1000 - sum(timings.values())
    detections.sort(key=lambda item: item.confidence(), reverse=True)
    if max_instances is not None:
        detections = detections[:max_instances]
    return FrameReport(
        detections, len(segments), int(on_plane[voxel_of_point].sum()), timings, refused, complete
    )


def _same_instance(
    first: Detection, second: Detection, objects: Mapping[str, ServedObject], sizes: Mapping[str, float]
) -> bool:
    """Whether two detections are one instance: one object, poses this close (symmetries aside)."""
    if first.object != second.object:
        return False
    a, b = first.pose, second.pose
    if np.linalg.norm(a.object_translation - b.object_translation) > DUPLICATE_DISTANCE * sizes[first.object]:
        return False
    turned = objects[first.object].symmetry.distinct(a.object_rotation, b.object_rotation, DUPLICATE_DEGREES)
    return not turned


def _pose_segment(
    segment: np.ndarray,
    objects: Mapping[str, ServedObject],
    sizes: Mapping[str, float],
    units: str | None,
    sensor: np.ndarray,
    seen: RangeImage,
) -> tuple[tuple[Detection, np.ndarray, np.ndarray, float] | None, int]:
    """The best found pose of a segment among the objects whose size fits it (the detection,
    which of the segment's points it explains, its posed surface and reach), or None; and how
    many found poses the frame's free space refused."""
    span = _span(segment)
    best = None
    refused = 0
    for name, served in objects.items():
        if not SEGMENT_SPAN[0] * sizes[name] <= span <= SEGMENT_SPAN[1] * sizes[name]:
            continue
        (pose,) = served.estimate([segment], True, units, budgets=lambda: budget.Budget(SEGMENT_BUDGET_S))
        if not pose.found:
            continue
        posed, normals = _posed_surface(served, pose)
        sight = sensor - posed
        # Points seen head-on only: near the silhouette (grazing incidence) sensors miss returns.
        facing = np.einsum("ij,ij->i", normals, sight) > FACING_COSINE * np.linalg.norm(sight, axis=1)
        through, looked = seen.contradicted(posed[facing], FREE_SPACE_TOLERANCE * sizes[name])
        if looked and through > FREE_SPACE_MAX_SHARE * looked:
            refused += 1  # the sensor saw through where this pose puts the object
            continue
        reach = EXPLAINED_FRACTION * sizes[name]
        explained = _explained(segment, posed, reach)
        visible = _visible_fraction(segment, posed, normals, sensor, reach)
        detection = Detection(name, pose, int(explained.sum()), visible)
        if best is None or detection.confidence() > best[0].confidence():
            best = (detection, explained, posed, reach)
    return best, refused
