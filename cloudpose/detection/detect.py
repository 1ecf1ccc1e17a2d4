"""Whole frames: every instance of the known objects in a sensor frame, each with its pose.

A frame's points are in the sensor's frame (OpenCV's: camera at the origin looking along +z), in
``units`` (metres by default, as depth cameras give them). Each detection is an answer of
:meth:`cloudpose.estimation.served.ServedObject.estimate` on one proposal of the frame, so its
pose follows the
same convention as ``/v1/pose`` (``canonical = points @ rotation + translation``, canonical in the
object's file frame and the frame's units) and it is ``found`` only when that estimator would say
so for a cut-out cloud of the object, and the frame bears it out.

Steps (library calls where one exists):

1. support planes go: RANSAC planes (open3d ``segment_plane`` on an even subsample) holding at
   least ``PLANE_MIN_SHARE`` of the frame, at most ``MAX_PLANES`` of them;
2. segments: a voxel grid (numpy; ``VOXEL_FRACTION`` of the smallest object's diagonal) of what is
   left, DBSCAN clusters of the voxels (open3d ``cluster_dbscan``), every point back at full
   resolution;
3. proposals, in two passes: each segment; a segment nothing fits is cut again, finer (touching
   objects); then unions of the pieces left over that lie close together (an instance that
   occlusion cut apart);
4. each proposal is posed as the objects it may be: on a support plane, the object's stable poses
   resting under the proposal (trimesh's, ``cloudpose/geometry/resting.py``) are extra starts, and a screen of
   them picks the objects worth posing; fits are polished from shifted copies. A found pose must
   not put the object where the sensor saw through it (free space, along each line of sight), and
   the proposal must cover enough of its facing surface. An answer that several poses fit is
   settled on the one the frame's free space leaves standing, when it does. The points a
   detection explains leave the proposal, and what is left (a touching copy) is posed again;
5. detections best first (confidence), at most ``max_instances``.

What the scene benchmark measures of it is in docs/results/index.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloudpose import budget
from cloudpose.estimation.inference import SearchPlan
from cloudpose.estimation.served import ObjectPose, ServedObject
from cloudpose.geometry.resting import RestingPose, plane_axes, rest_on

# Voxel side, as a fraction of the smallest object's bounding-box diagonal.
VOXEL_FRACTION = 0.02
# A support plane is a RANSAC plane holding this share of the frame's voxels; fitted to within
# this many voxels.
PLANE_MIN_SHARE = 0.15
PLANE_DISTANCE_VOXELS = 1.5
MAX_PLANES = 2
PLANE_ITERATIONS = 200
# RANSAC sees at most this many of the frame's points; the range image is built from about this many.
PLANE_SAMPLE = 20_000
RANGE_SAMPLE = 80_000
# DBSCAN neighbourhood (voxels) and its least neighbours.
CLUSTER_EPS_VOXELS = 2.5
CLUSTER_MIN_POINTS = 8
# Segments spanning less than this share of an object's diagonal, or more than this multiple,
# are not posed as that object.
SEGMENT_SPAN = (0.2, 1.5)
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
# A pose whose facing surface the segment covers less than this is too little evidence. Set on
# synthetic frames; on the real Kinect frames (../shared/real/mosd) it refuses the one pose that
# passes free space (the dragon on a 462-point table remnant of test12: 0.02 contradicted).
MIN_VISIBLE_FRACTION = 0.2
# A segment nothing fits is cut again with voxels this much finer and this neighbourhood (in
# the finer voxels).
SPLIT_VOXEL = 0.5
SPLIT_EPS_VOXELS = 2.0
# Leftovers whose centres lie within this share of the largest diagonal are posed together.
UNION_REACH = 0.5
# At most this many unions a frame, the largest first.
MAX_UNIONS = 8
# Starts from the support plane: the object's most probable stable poses until they cover this
# much of its probability (at most this many), each turned this many ways about the normal.
RESTING_COVER = 0.9
RESTING_POSES = 6
RESTING_YAWS = 12
# Detection poses each proposal with this many of the wide search rounds (each proposal is
# cheap; resting starts and finer cuts do what the wide rounds would).
WIDE_ROUNDS = 0
# On a support plane, objects whose resting starts screen this far below the best one's are not
# posed; the screen drives its coarse steps with this many of the segment's points.
OBJECT_MARGIN = 0.1
# ... and a segment whose best screen is below this is not posed at all.
MIN_SCREEN = 0.45
# An ambiguous answer is settled on the candidate the frame contradicts least when every other
# is contradicted this many times as much and by this share more (of this many surface points).
SETTLE_RATIO = 2.0
SETTLE_MARGIN = 0.02
SETTLE_POINTS = 4000
# A settled answer is a detection only when its segment covers this much of its facing surface.
MIN_SETTLED_VISIBLE = 0.5
# Followed from a previous pose, an ambiguous answer is settled on the one candidate within this
# many degrees of it (an instance turns a few degrees between frames, its look-alikes far more).
PRIOR_DEGREES = 10.0
SCREEN_POINTS = 64
# Model points that say how much of the object the sensor sees.
VISIBILITY_POINTS = 1500
# Free space: a posed model point facing the sensor contradicts the frame when the sensor saw
# something this much farther away (share of the diagonal) along its line of sight; a pose whose
# facing points contradict the frame in more than this share is refused. Set on synthetic frames;
# on the real Kinect frames (../shared/real/mosd) the bunny's and the dragon's poses on table
# remnants and object fragments are contradicted in 0.26-1.0 of their facing points.
FREE_SPACE_TOLERANCE = 0.03
FREE_SPACE_MAX_SHARE = 0.05
FACING_COSINE = 0.5
# A segment mostly explained by detections already made is not posed again.
EXPLAINED_ALREADY = 0.5
# How far a proposal's pose search goes (its starts are the proposal's own).
DETECT_PLAN = SearchPlan(wide=WIDE_ROUNDS, polish=True)


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
    poses: int = 0  # proposals posed as an object

    def answer(self, n_points: int, budget_s: float | None) -> dict[str, Any]:
        """The report as ``/v1/detect`` answers it (``budget_s``: the budget it ran under)."""
        warnings = None
        if not self.complete:
            warnings = [
                f"the detection budget ({budget_s:g} s) ran out before every segment of the frame "
                "was looked at: instances may be missing"
            ]
        return {
            "detections": [detection.to_dict() for detection in self.detections],
            "n_points": int(n_points),
            "segments": self.segments,
            "complete": self.complete,
            **({"warnings": warnings} if warnings else {}),
        }


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


def _support_planes(
    points: np.ndarray, distance: float, seed: int, sensor: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,) whether each point lies on a support plane, and the largest plane's coefficients
    (a, b, c, d), normal towards the sensor, or None when there is none.

    RANSAC (open3d ``segment_plane``) runs on an even subsample of at most ``PLANE_SAMPLE``
    points; every point within ``distance`` of a plane found there is on it.
    """
    import open3d as o3d

    on_plane = np.zeros(len(points), dtype=bool)
    largest = None
    sample = np.arange(0, len(points), max(1, len(points) // PLANE_SAMPLE))
    o3d.utility.random.seed(seed)
    for _ in range(MAX_PLANES):
        rest = sample[~on_plane[sample]]
        if len(rest) < 3 * CLUSTER_MIN_POINTS:
            break
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[rest]))
        plane, inliers = cloud.segment_plane(distance, 3, PLANE_ITERATIONS)
        if len(inliers) < PLANE_MIN_SHARE * len(sample):  # of the frame: not an object's face
            break
        plane = np.asarray(plane, dtype=np.float64) / np.linalg.norm(plane[:3])
        if plane[:3] @ sensor + plane[3] < 0:
            plane = -plane
        largest = plane if largest is None else largest
        on_plane |= np.abs(points @ plane[:3] + plane[3]) <= distance
    return on_plane, largest


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


def _posed_surface(
    served: ServedObject, pose: ObjectPose, points: int = VISIBILITY_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """About ``points`` of the object's surface points and their normals in the frame (frame
    units), (M, 3) each."""
    surface = served.estimator.surface
    step = max(1, len(surface.points) // points)
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


@dataclass
class _Hypothesis:
    """A found pose of a proposal as one object, verified against the frame."""

    detection: Detection
    explained: np.ndarray  # (M,) which of the proposal's points the pose explains
    posed: np.ndarray  # (S, 3) the object's surface sample at the pose
    reach: float


class _FrameSearch:
    """What one frame's detection knows: its points, the objects, the detections made."""

    def __init__(
        self,
        points: np.ndarray,
        objects: Mapping[str, ServedObject],
        sizes: Mapping[str, float],
        units: str | None,
        sensor: np.ndarray,
        seen: RangeImage,
        plane: np.ndarray | None = None,
    ) -> None:
        self.points, self.objects, self.sizes, self.units = points, objects, sizes, units
        self.sensor, self.seen, self.plane = sensor, seen, plane
        self.plane_axes = None if plane is None else plane_axes(plane[:3])
        self.detections: list[Detection] = []
        self.surfaces: list[tuple[np.ndarray, float]] = []  # each detection's posed surface, reach
        self.refused = 0
        self.poses = 0

    def unexplained(self, members: np.ndarray) -> np.ndarray:
        """The members (point indices) that no detection made so far explains."""
        for posed, reach in self.surfaces:
            if len(members) == 0:
                break
            members = members[~_explained(self.points[members], posed, reach)]
        return members

    def pose(self, members: np.ndarray) -> np.ndarray:
        """Pose a proposal (point indices) until nothing more is found in it: each found instance
        becomes a detection and its points leave the proposal, and what is left (a touching copy)
        is posed again, at most ``MAX_PER_SEGMENT`` times.

        Returns:
            The members left unexplained.
        """
        least = max(MIN_SEGMENT_POINTS, LEFTOVER_SHARE * len(members))
        for attempt in range(MAX_PER_SEGMENT):
            if len(members) < (MIN_SEGMENT_POINTS if attempt == 0 else least):
                break
            found = self._pose_once(self.points[members])
            if found is None:
                break
            if not any(
                _same_instance(found.detection, other, self.objects, self.sizes) for other in self.detections
            ):
                self.detections.append(found.detection)
                self.surfaces.append((found.posed, found.reach))
            members = members[~found.explained]
        return members

    def follow(
        self, members: np.ndarray, name: str, start: tuple[np.ndarray, np.ndarray], plan: SearchPlan
    ) -> tuple[Detection | None, ObjectPose]:
        """Pose a proposal (point indices) as one object from a start pose (answer frame: rotation
        (3, 3), translation (3,), frame units), e.g. its pose in the frame before; a verified pose
        becomes a detection whose points no later search takes.

        Returns:
            The detection (None when the frame does not bear the pose out), and the pose.
        """
        found, pose = self._hypothesis(name, self.points[members], [start], plan, prior=start[0])
        if found is None:
            return None, pose
        self.detections.append(found.detection)
        self.surfaces.append((found.posed, found.reach))
        return found.detection, pose

    def _pose_once(self, segment: np.ndarray) -> _Hypothesis | None:
        """The best verified pose of ``segment`` (M, 3) among the objects it may be, or None."""
        best: _Hypothesis | None = None
        for name, starts in self._candidates(segment):
            found, _ = self._hypothesis(name, segment, starts, DETECT_PLAN)
            if found is not None and (
                best is None or found.detection.confidence() > best.detection.confidence()
            ):
                best = found
        return best

    def _hypothesis(
        self,
        name: str,
        segment: np.ndarray,
        starts: list[tuple[np.ndarray, np.ndarray]],
        plan: SearchPlan,
        prior: np.ndarray | None = None,
    ) -> tuple[_Hypothesis | None, ObjectPose]:
        """``segment`` (M, 3) posed as one object from ``starts``: the hypothesis when the pose is
        found and the frame bears it out (None otherwise), and the pose. An answer the frame
        leaves ambiguous is settled on the candidate near ``prior`` (an object rotation (3, 3)
        the instance had a moment before), when exactly one is."""
        (pose,) = self.objects[name].estimate(
            [segment],
            True,
            self.units,
            budgets=lambda: budget.Budget(SEGMENT_BUDGET_S),
            plan=dataclasses.replace(plan, starts=starts),
        )
        self.poses += 1
        least_visible = MIN_VISIBLE_FRACTION
        if pose.ambiguous:
            pose = self._settle(name, pose)
            least_visible = MIN_SETTLED_VISIBLE  # settled by the frame alone: more evidence
        if pose.ambiguous and prior is not None:
            pose = self._settle_by_prior(name, pose, prior)
            least_visible = MIN_VISIBLE_FRACTION  # the previous frame bore the pose out
        if not pose.found:
            return None, pose
        return self._verify(name, segment, pose, least_visible), pose

    def _candidates(self, segment: np.ndarray) -> list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
        """The objects the segment may be, each with its resting starts: those whose size fits it,
        and, on a support plane, only those whose resting starts screen within
        ``OBJECT_MARGIN`` of the best (confidence after a few coarse steps, all starts at once),
        none when the best is below ``MIN_SCREEN``."""
        span = _span(segment)
        fitting = [
            (name, self._resting_starts(name, segment))
            for name, size in self.sizes.items()
            if SEGMENT_SPAN[0] * size <= span <= SEGMENT_SPAN[1] * size
        ]
        if self.plane is None or not fitting:
            return fitting
        scores = [self._screen(name, segment, starts) for name, starts in fitting]
        top = max(scores)
        if top < MIN_SCREEN:  # no way of resting there fits: clutter
            return []
        ranked = sorted(zip(scores, range(len(fitting)), strict=True), reverse=True)
        return [fitting[i] for score, i in ranked if score >= top - OBJECT_MARGIN]

    def _screen(self, name: str, segment: np.ndarray, starts: list[tuple[np.ndarray, np.ndarray]]) -> float:
        """The best confidence of the object's resting starts after the coarse stages."""
        from cloudpose.registration.refine import COARSE_SCHEDULE, confidence_score, screen_starts

        served = self.objects[name]
        scale = served.scale_for(self.units)
        internal = [served.internal_pose(rotation, translation, scale) for rotation, translation in starts]
        surface = served.estimator.surface
        _, fitness, rmse = screen_starts(
            segment * scale, surface, internal, points=SCREEN_POINTS, stages=COARSE_SCHEDULE
        )
        return max(
            confidence_score(fit, error / surface.diagonal) for fit, error in zip(fitness, rmse, strict=True)
        )

    def _resting_starts(self, name: str, segment: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Poses of the object resting on the frame's support plane under the segment's centre:
        its most probable stable poses, each turned ``RESTING_YAWS`` ways about the plane's
        normal (none without a plane)."""
        if self.plane is None:
            return []
        served = self.objects[name]
        scale = served.scale_for(self.units)  # file units per frame unit
        centre = segment.mean(axis=0)
        origin = centre - (centre @ self.plane[:3] + self.plane[3]) * self.plane[:3]
        starts = []
        covered = 0.0
        for pose in served.resting_poses[:RESTING_POSES]:
            if covered >= RESTING_COVER:
                break
            covered += pose.probability
            in_units = RestingPose(
                pose.rotation,
                pose.translation / scale,
                pose.probability,
                pose.radius / scale,
                pose.height / scale,
            )
            for angle in np.arange(RESTING_YAWS) * (2 * np.pi / RESTING_YAWS):
                starts.append(rest_on(in_units, self.plane_axes, origin, float(angle)))
        return starts

    def _contradicted_share(self, name: str, pose: ObjectPose, points: int = VISIBILITY_POINTS) -> float:
        """Share of the posed object's surface facing the sensor (of ``points`` surface points)
        that the sensor saw through: its nearest return in that direction lies beyond it."""
        served, size = self.objects[name], self.sizes[name]
        posed, normals = _posed_surface(served, pose, points)
        sight = self.sensor - posed
        # Points seen head-on only: near the silhouette (grazing incidence) sensors miss returns.
        facing = np.einsum("ij,ij->i", normals, sight) > FACING_COSINE * np.linalg.norm(sight, axis=1)
        through, looked = self.seen.contradicted(posed[facing], FREE_SPACE_TOLERANCE * size)
        return through / looked if looked else 0.0

    def _settle(self, name: str, pose: ObjectPose) -> ObjectPose:
        """An answer the cloud leaves ambiguous, settled by the frame when it can: the one
        candidate that the sensor did not see through, where each of the others it did (a turned
        flange puts its plate over holes the sensor saw the table through)."""
        served = self.objects[name]
        options = [dataclasses.replace(pose, **_object_pose(candidate)) for candidate in pose.candidates]
        shares = [self._contradicted_share(name, option, SETTLE_POINTS) for option in options]
        order = np.argsort(shares)
        best, runner_up = shares[order[0]], shares[order[1]] if len(shares) > 1 else 1.0
        if best > FREE_SPACE_MAX_SHARE or runner_up < max(SETTLE_RATIO * best, best + SETTLE_MARGIN):
            return pose
        why = (
            f"settled by the frame: {len(options) - 1} other pose(s) fit the points about as well, but "
            f"the sensor saw through where they put the object ({100 * runner_up:.0f} % of its "
            "facing surface or more)"
        )
        return served.settled(pose, int(order[0]), why)

    def _settle_by_prior(self, name: str, pose: ObjectPose, prior: np.ndarray) -> ObjectPose:
        """An ambiguous answer settled on the one candidate within ``PRIOR_DEGREES`` of ``prior``
        (symmetries aside) when every other is at least twice as far; else unchanged."""
        served = self.objects[name]
        turns = [
            served.symmetry.error_deg(np.asarray(candidate["rotation"], dtype=np.float64).T, prior)
            for candidate in pose.candidates
        ]
        order = np.argsort(turns)
        nearest = turns[order[0]]
        runner_up = turns[order[1]] if len(turns) > 1 else np.inf
        if nearest > PRIOR_DEGREES or runner_up < 2 * max(nearest, PRIOR_DEGREES):
            return pose
        why = (
            f"settled by the previous pose: {len(turns) - 1} other pose(s) fit the points about as well, "
            f"but they lie {runner_up:.0f} degrees or more from where the instance was"
        )
        return served.settled(pose, int(order[0]), why)

    def _verify(
        self, name: str, segment: np.ndarray, pose: ObjectPose, least_visible: float
    ) -> _Hypothesis | None:
        """The pose as a hypothesis if the frame bears it out: the sensor did not see through the
        object where the pose puts it, and the segment covers at least ``least_visible`` of its
        facing surface."""
        if self._contradicted_share(name, pose) > FREE_SPACE_MAX_SHARE:
            self.refused += 1  # the sensor saw through where this pose puts the object
            return None
        served, size = self.objects[name], self.sizes[name]
        posed, normals = _posed_surface(served, pose)
        reach = EXPLAINED_FRACTION * size
        explained = _explained(segment, posed, reach)
        visible = _visible_fraction(segment, posed, normals, self.sensor, reach)
        if visible < least_visible:
            self.refused += 1  # too little of the object to be evidence of it
            return None
        return _Hypothesis(Detection(name, pose, int(explained.sum()), visible), explained, posed, reach)


def _object_pose(candidate: dict[str, Any]) -> dict[str, np.ndarray]:
    """A candidate of an answer (back transform) as object rotation and translation."""
    rotation = np.asarray(candidate["rotation"], dtype=np.float64).T
    return {
        "object_rotation": rotation,
        "object_translation": -np.asarray(candidate["translation"], dtype=np.float64) @ rotation,
    }


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
        budget_s: past this, no more proposal is posed: the detections so far are the answer
            (``FrameReport.complete`` is False).

    Returns:
        The detections, best first, and how the frame was cut.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = (time.perf_counter() - started) * 1000 - sum(timings.values())

    points = np.asarray(points, dtype=np.float64)
    search, on_plane, voxel = open_frame(points, objects, units, viewpoint, seed, lap)
    segments = frame_segments(points, on_plane, voxel)
    lap("segments_ms")
    deadline = None if budget_s is None else started + budget_s
    complete = True

    def out_of_time() -> bool:
        nonlocal complete
        if deadline is not None and time.perf_counter() > deadline:
            complete = False
        return not complete

    # First pass: every segment. A segment nothing fits is cut finer (touching objects that one
    # neighbourhood joined) and its parts are posed alike.
    leftovers: list[np.ndarray] = []  # unexplained members
    for members in segments:
        if out_of_time():
            break
        remaining = search.unexplained(members)
        if len(remaining) < (1 - EXPLAINED_ALREADY) * len(members):
            continue
        left = search.pose(remaining)
        if len(left) < MIN_SEGMENT_POINTS:
            continue
        parts = _split(points[left], voxel) if len(left) == len(remaining) else []
        if len(parts) < 2:
            leftovers.append(left)
            continue
        for part in parts:
            if out_of_time():
                break
            part_left = search.pose(left[part])
            if len(part_left) >= MIN_SEGMENT_POINTS:
                leftovers.append(part_left)
    lap("first_pass_ms")
    # Second pass: pieces of one instance that occlusion cut apart, together.
    for members in _unions(points, leftovers, max(search.sizes.values())):
        if out_of_time():
            break
        remaining = search.unexplained(members)
        if len(remaining) >= max(MIN_SEGMENT_POINTS, (1 - EXPLAINED_ALREADY) * len(members)):
            search.pose(remaining)
    lap("unions_ms")
    detections = sorted(search.detections, key=lambda item: item.confidence(), reverse=True)
    if max_instances is not None:
        detections = detections[:max_instances]
    return FrameReport(
        detections, len(segments), int(on_plane.sum()), timings, search.refused, complete, search.poses
    )


def open_frame(
    points: np.ndarray,
    objects: Mapping[str, ServedObject],
    units: str | None,
    viewpoint: Sequence[float] | None,
    seed: int,
    lap: Callable[[str], None] = lambda name: None,
) -> tuple[_FrameSearch, np.ndarray, float]:
    """What every search of a frame starts from: its support planes and what the sensor saw.

    Args:
        points: (N, 3) float64 the frame, sensor frame, in ``units``.
        objects, units, viewpoint, seed: as for :func:`detect`.
        lap: told ``"planes_ms"`` and ``"range_image_ms"`` as each step ends.

    Returns:
        The frame's search, (N,) whether each point lies on a support plane, and the voxel side.
    """
    sensor = np.zeros(3) if viewpoint is None else np.asarray(viewpoint, dtype=np.float64)
    # Each object's diagonal in the frame's units (a 422 for an object without units when the
    # frame has some).
    sizes = {name: served.diagonal / served.scale_for(units) for name, served in objects.items()}
    voxel = VOXEL_FRACTION * min(sizes.values())
    on_plane, plane = _support_planes(points, PLANE_DISTANCE_VOXELS * voxel, seed, sensor)
    lap("planes_ms")
    # What the sensor saw in each direction, from an even subsample of the whole frame (planes
    # included: the table behind a pose shows the sensor's line of sight).
    sight = points[:: max(1, len(points) // RANGE_SAMPLE)]
    ranges = np.linalg.norm(sight - sensor, axis=1)
    cell = voxel / max(float(np.median(ranges)), voxel) if len(sight) else 1.0
    search = _FrameSearch(points, objects, sizes, units, sensor, RangeImage(sight, sensor, cell=cell), plane)
    lap("range_image_ms")
    return search, on_plane, voxel


def frame_segments(points: np.ndarray, on_plane: np.ndarray, voxel: float) -> list[np.ndarray]:
    """The segments of a frame off its support planes: DBSCAN clusters of the voxels of what is
    left, as (M,) point indices into ``points``, largest first (at least ``MIN_SEGMENT_POINTS``).

    Args:
        points: (N, 3) the frame.
        on_plane: (N,) whether each point lies on a support plane (:func:`open_frame`).
        voxel: the voxel side (:func:`open_frame`).
    """
    kept = np.flatnonzero(~on_plane)
    if not len(kept):
        return []
    voxels, voxel_of_point = voxel_labels(points[kept], voxel)
    return [kept[members] for members in _members(_clusters(voxels, voxel)[voxel_of_point])]


def _members(point_labels: np.ndarray) -> list[np.ndarray]:
    """The point indices of each label (-1 aside) with at least ``MIN_SEGMENT_POINTS``, largest
    first (one sort: a pass per label would cost points x labels)."""
    if len(point_labels) == 0 or point_labels.max() < 0:
        return []
    order = np.argsort(point_labels, kind="stable")
    bounds = np.searchsorted(point_labels[order], np.arange(point_labels.max() + 2))
    groups = [order[bounds[label] : bounds[label + 1]] for label in range(point_labels.max() + 1)]
    return sorted((item for item in groups if len(item) >= MIN_SEGMENT_POINTS), key=len, reverse=True)


def _split(segment: np.ndarray, voxel: float) -> list[np.ndarray]:
    """A segment (M, 3) cut by a finer neighbourhood (``SPLIT_EPS_VOXELS``): index arrays of its
    parts, largest first; one part when it does not come apart."""
    cells, voxel_of_point = voxel_labels(segment, voxel * SPLIT_VOXEL)
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cells))
    labels = np.asarray(cloud.cluster_dbscan(SPLIT_EPS_VOXELS * voxel * SPLIT_VOXEL, CLUSTER_MIN_POINTS))
    return _members(labels[voxel_of_point])


def _unions(points: np.ndarray, leftovers: list[np.ndarray], diagonal: float) -> list[np.ndarray]:
    """Unions of leftovers (point indices) whose centres lie within ``UNION_REACH`` of the largest
    object's diagonal of each other and that together still fit an object's size: pieces of one
    partly hidden instance."""
    if len(leftovers) < 2:
        return []
    centres = np.stack([points[members].mean(axis=0) for members in leftovers])
    unions: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    for centre in centres:
        near = tuple(
            np.flatnonzero(np.linalg.norm(centres - centre, axis=1) <= UNION_REACH * diagonal).tolist()
        )
        if len(near) > 1 and near not in seen:
            seen.add(near)
            union = np.concatenate([leftovers[j] for j in near])
            if _span(points[union]) <= SEGMENT_SPAN[1] * diagonal:
                unions.append(union)
    unions.sort(key=len, reverse=True)
    return unions[:MAX_UNIONS]


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
