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
   least ``DetectionParams.plane_min_share`` of the frame, at most ``max_planes`` of them;
2. segments: a voxel grid (numpy; ``voxel_fraction`` of the smallest object's diagonal) of what is
   left, DBSCAN clusters of the voxels (open3d ``cluster_dbscan``), every point back at full
   resolution;
3. proposals, in two passes: each segment; a segment nothing fits is cut again, finer (touching
   objects); then unions of the pieces left over that lie close together (an instance that
   occlusion cut apart);
4. each proposal is posed as the objects it may be: on a support plane, the object's stable poses
   resting under the proposal (trimesh's, ``cloudpose/geometry/resting.py``) are extra starts, and a screen of
   them picks the objects worth posing; loose fits are polished from shifted copies. A found pose must
   not put the object where the sensor saw through it (free space, along each line of sight), and
   the proposal must cover enough of its facing surface. An answer that several poses fit is
   settled on the one the frame bears out where the poses differ (each rendered as the sensor
   sees it), when one clearly does. The points a
   detection explains leave the proposal, and what is left (a touching copy) is posed again;
5. detections best first (confidence), at most ``max_instances``.

What the scene benchmark measures of it is in docs/results/index.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from cloudpose import budget
from cloudpose.detection.votes import VOTE_PARAMS, VoteParams, vote_pass
from cloudpose.estimation.inference import SearchPlan
from cloudpose.estimation.served import ObjectPose, ServedObject
from cloudpose.geometry.resting import RestingPose, plane_axes, rest_on
from cloudpose.geometry.rotations import axis_rotation
from cloudpose.io.clouds import CloudError


@dataclass(frozen=True)
class DetectionParams:
    """How a frame is cut into proposals and how a found pose is verified (shares of an object's
    bounding-box diagonal unless a field says otherwise; set on the synthetic scene frames, and
    where a field says so, checked on the real Kinect frames of ../shared/real/mosd).

    Attributes:
        voxel_fraction: voxel side, as a share of the smallest object's diagonal.
        plane_min_share: a support plane is a RANSAC plane holding this share of the frame's
            (sampled) points ...
        plane_distance_voxels: ... fitted to within this many voxels.
        max_planes: at most this many support planes.
        plane_noise_sigmas: a plane holds the points within this many of the sensor's noise
            standard deviations of it, where that is more than the RANSAC distance ...
        plane_noise_bins: ... the noise measured in this many bands of range ...
        plane_noise_reach: ... on the returns below the plane by at most this many RANSAC
            distances (:func:`_plane_band`).
        plane_iterations: RANSAC iterations per plane.
        plane_sample: RANSAC sees at most this many of the frame's points.
        range_sample: the range image (what the sensor saw) is built from about this many.
        pitch_cells: its cells are at least this many times the angle between neighbouring
            returns (so that each holds a return: a 160 x 120 image's pixels are wider than a
            VGA one's voxel).
        cluster_eps_voxels: DBSCAN neighbourhood, in voxels ...
        cluster_min_points: ... and its least neighbours.
        cluster_spacing: returns farther than where they lie this many voxels apart are drawn
            towards the sensor before they are clustered (:func:`frame_segments`).
        segment_span: segments spanning less than the first share of an object's diagonal, or
            more than the second multiple, are not posed as that object.
        min_segment_points: fewest points a segment (or what is left of it) needs to be posed.
        max_per_segment: a segment is posed at most this many times (touching copies).
        explained_fraction: points this close to the posed surface are explained by it.
        leftover_share: what a found pose leaves of a segment is posed again only when it is
            this share of the segment (a touching copy), not the instance's stray returns.
        duplicate_degrees: two detections of one object closer than this (symmetries aside) ...
        duplicate_distance: ... and this are one instance.
        segment_budget_s: compute budget of one pose of one segment, seconds.
        min_visible_fraction: a pose whose facing surface the segment covers less than this is
            too little evidence; on the real Kinect frames it refuses the one pose that passes
            free space (the dragon on a 462-point table remnant of test12: 0.02 contradicted).
            0.3, the visibility from which the benchmarks count an instance: on the parts
            frames 0.2 let through 2 more wrong poses and no more right ones.
        split_voxel: a segment nothing fits is cut again with voxels this much finer ...
        split_eps_voxels: ... and this neighbourhood (in the finer voxels).
        union_reach: leftovers whose centres lie within this share of the largest diagonal are
            posed together (pieces of one partly hidden instance).
        max_unions: at most this many unions a frame, the largest first.
        resting_cover: starts from the support plane: the object's most probable stable poses
            until they cover this much of its probability ...
        resting_poses: ... at most this many of them ...
        resting_yaws: ... each turned this many ways about the plane's normal.
        wide_rounds: the wide search rounds each proposal is posed with (each proposal is cheap;
            resting starts and finer cuts do what the wide rounds would).
        polish: every proposal's fit is restarted from copies shifted along its principal axes
            before it is verified (:func:`cloudpose.registration.refine.polish_pose`; fits the
            cloud's scatter does not explain are polished either way). Needed when a network
            started the fits; from the votes' fitted hypotheses, on 60 parts frames taking turns,
            it found the same instances (88.8 %, rotation median 0.31 against 0.32 degrees) at
            1.62 s a frame against 1.46 s: most polished fits were hypotheses that verification
            then refused.
        object_margin: on a support plane, objects whose resting starts screen this far below
            the best one's are not posed ...
        min_screen: ... and a segment whose best screen is below this is not posed at all
            (after the frame's votes, the segments left are mostly clutter: on the first 30
            parts frames 0.03 and 0.6 find 74 of 87 instances at 1.45 s a frame, 0.1 and 0.45
            75 at 1.90 s).
        screen_points: the screen drives its coarse steps with this many of the segment's points.
        settle_ratio: an ambiguous answer is settled on the candidate the frame bears out when,
            rendered as the sensor would see it, it wins this many times as many of the
            directions where it and any other candidate disagree (one puts surface where the
            sensor saw it, the other leaves it empty or puts it where the sensor saw through) as
            it loses ...
        settle_cells: ... and wins at least this many of them.
        settle_pitch_cells: candidates are compared in cells of this many times the angle
            between the sensor's neighbouring returns (:attr:`_FrameSearch.fine`; the view
            check's cells, at least a voxel at the frame's median range, are 2-3 times wider
            on the parts frames: a flange's bolt holes span two of them, and the right turns
            of five ambiguous flanges won by 0.1-2.8 standard deviations there, by 2.0-7.9 in
            the pixel's cells; 1.5 times the pixel settled 3 of the 5).
        settle_step_deg: turns of the first candidate about the axis to the second, this far apart ...
        settle_past_deg: ... reaching this far past each of them ...
        settle_margin: ... settle the answer on the best when it beats every candidate by this
            margin (about standard deviations; on the parts frames right turns beat theirs by
            2.5 to 8.5, and every turn settled at 3 and more was within 2.5 degrees; far
            flanges' right turns win by 2.0-2.5, and on the 200 parts frames 2.0 instead of 2.5
            raised the flange's recall 74.1 -> 78.6 % at a precision of 98.3 %).
        min_settled_visible: a settled answer is a detection only when its segment covers this
            much of its facing surface.
        prior_degrees: followed from a previous pose, an ambiguous answer is settled on the one
            candidate within this many degrees of it (an instance turns a few degrees between
            frames, its look-alikes far more).
        visibility_points: model points that say how much of the object the sensor sees.
        free_space_tolerance: a posed model point facing the sensor contradicts the frame when
            the sensor saw something this much farther along its line of sight ...
        free_space_max_share: ... and a pose whose facing points contradict it in more than this
            share is refused; on the real Kinect frames the bunny's and the dragon's poses on
            table remnants and object fragments are contradicted in 0.26-1.0 of them.
        min_view_agreement: a pose is a detection only when the sensor's view bears it out this
            well (:meth:`_FrameSearch.view`; on the parts frames right poses score 0.9
            and more but for thin parts, poses turned to fit part of a pipe 0.7 to 0.85).
        view_slope: where the sensor sees the posed surface obliquely, the view check allows a
            return this many cells' width of the surface's depth across a cell farther off
            (at most twice ``free_space_tolerance`` more) ...
        view_lost_cosine: ... and a direction with no return, where it sees the surface this
            obliquely or more (the cosine of the incidence angle), is not held against the pose:
            sensors lose and scatter returns at grazing incidence. On 80 parts frames these
            two raise recall 65.0 -> 66.5 % (precision 96.6 -> 96.2 %); on the eight-object
            frames 43.2 -> 47.2 % (98.2 -> 96.7 %). A slope of 1 found more (68.1 %) but let
            a flange through on a real Kinect frame (mosd test38, eight objects looked for:
            view 0.92; 0.78 at 0.5). Not holding any direction without a return against a pose
            (1.0) found more on 30 eight-object frames (59.2 -> 62.4 %, precision 98.7 ->
            96.3 %), but let wrong tees through in 2 of the 40 parts frames without a target:
            62 % of their facing surface lay where the sensor saw nothing.
        facing_cosine: only model points seen this head-on count (near the silhouette sensors
            miss returns).
        explained_already: a segment this much explained by detections already made is not
            posed again.
        support_tolerance: :meth:`_FrameSearch.support` counts a facing surface point seen
            where the sensor's return lies within this of it.
        min_vote_support: a frame vote's pose whose facing surface the sensor saw less than
            this share of is not posed ...
        vote_screen_points: ... nor one whose few coarse steps, driven by this many of the
            points around it, end below ``min_vote_screen`` (confidence) or below
            ``min_vote_screen_view`` (the sensor's view): on the first 15 parts frames this
            leaves 70 of 265 votes' poses to the whole search, and every right one of them ...
        min_vote_screen: ... (see above) ...
        min_vote_screen_view: ... (see above; the whole search's pose must still reach
            ``min_view_agreement``: a few coarse steps leave right poses of the parts at a
            view of 0.79-0.84) ...
        segments_after_votes: after the frame's votes, the segments they left unexplained are
            posed as well.
        leftover_votes: last, the frame's points that no detection explains vote again, alone
            (:func:`leftover_votes`): a far instance's few hundred returns outvoted by the near
            ones get their own hypotheses; on the 200 parts frames recall 84.6 -> 86.3 %, at a
            sixth more time ...
        leftover_kept: ... this many of each object's (``VoteParams.kept`` in the first votes;
            10 found one more of the first 80 parts frames' 263 instances than 3, at about twice
            the added time).
        ambiguous_reach: a vote's whole search that ends ambiguous (several poses fit and the
            frame settles none) marks its place: another start of the same object whose centre
            lies within this share of its diagonal is not searched (its search takes the same
            points and ends alike). On 12 parts frames 16 of 42 such searches were repeats at a
            place already left ambiguous, none of them then found, at 0.14-0.25 s each. 0.15
            with ``PPFSettings.frame_planar_cap`` 64 lost recall over the 200 parts frames
            (87.5 -> 85.8 %) for 13 % less time: 0 (off) stays the default.
        min_fitness: a found pose, of a vote or of a segment, is a detection only when this
            share of the points it was posed on fit it: a segment may hold a neighbour's points,
            but on the 200 parts frames every right segment pose but one fits 0.989 of them or
            more, and every wrong one (look-alikes on clutter, a crank on a frame without a
            target) 0.966 or less.
    """

    voxel_fraction: float = 0.02
    plane_min_share: float = 0.15
    plane_distance_voxels: float = 1.5
    max_planes: int = 2
    plane_noise_sigmas: float = 2.5
    plane_noise_bins: int = 8
    plane_noise_reach: float = 4.0
    plane_iterations: int = 200
    plane_sample: int = 20_000
    range_sample: int = 400_000
    pitch_cells: float = 1.5
    cluster_eps_voxels: float = 2.5
    cluster_min_points: int = 8
    cluster_spacing: float = 1.2
    segment_span: tuple[float, float] = (0.2, 1.5)
    min_segment_points: int = 32
    max_per_segment: int = 3
    explained_fraction: float = 0.04
    leftover_share: float = 0.3
    duplicate_degrees: float = 10.0
    duplicate_distance: float = 0.1
    segment_budget_s: float = 0.5
    min_visible_fraction: float = 0.3
    split_voxel: float = 0.5
    split_eps_voxels: float = 2.0
    union_reach: float = 0.5
    max_unions: int = 8
    resting_cover: float = 0.9
    resting_poses: int = 6
    resting_yaws: int = 12
    wide_rounds: int = 0
    polish: bool = False
    object_margin: float = 0.03
    min_screen: float = 0.6
    screen_points: int = 64
    settle_ratio: float = 2.5
    settle_cells: int = 10
    settle_step_deg: float = 3.0
    settle_margin: float = 2.0
    settle_past_deg: float = 10.0
    settle_pitch_cells: float = 1.0
    min_settled_visible: float = 0.5
    prior_degrees: float = 10.0
    visibility_points: int = 1500
    free_space_tolerance: float = 0.03
    free_space_max_share: float = 0.05
    min_view_agreement: float = 0.85
    view_slope: float = 0.5
    view_lost_cosine: float = 0.3
    facing_cosine: float = 0.5
    explained_already: float = 0.5
    support_tolerance: float = 0.03
    min_vote_support: float = 0.2
    vote_screen_points: int = 256
    min_vote_screen: float = 0.6
    min_vote_screen_view: float = 0.75
    segments_after_votes: bool = True
    leftover_votes: bool = True
    leftover_kept: int = 3
    ambiguous_reach: float = 0.0
    min_fitness: float = 0.97

    def plan(self) -> SearchPlan:
        """How far a proposal's pose search goes (its starts are the proposal's own)."""
        return SearchPlan(wide=self.wide_rounds, polish=self.polish)


DETECTION_PARAMS = DetectionParams()
# The defaults under the names other modules read.
VOXEL_FRACTION = DETECTION_PARAMS.voxel_fraction
PLANE_DISTANCE_VOXELS = DETECTION_PARAMS.plane_distance_voxels
MIN_SEGMENT_POINTS = DETECTION_PARAMS.min_segment_points
DETECT_PLAN = DETECTION_PARAMS.plan()


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
    skipped: list[str] = field(default_factory=list)  # why objects were not looked for
    examined: int | None = None  # segments looked at (None: every one)
    votes_left: int = 0  # the frame's vote hypotheses not posed when the budget ran out

    def answer(self, n_points: int, budget_s: float | None) -> dict[str, Any]:
        """The report as ``/v1/detect`` answers it (``budget_s``: the budget it ran under)."""
        warnings = list(self.skipped)
        if not self.complete:
            left = (
                ""
                if self.examined is None or self.examined >= self.segments
                else f" ({self.segments - self.examined} of {self.segments} not looked at)"
            )
            if self.votes_left:
                left += f", nor {self.votes_left} of the poses the frame's votes put forward"
            warnings.append(
                f"the detection budget ({budget_s:g} s) ran out before every segment of the frame "
                f"was looked at{left}: instances may be missing"
            )
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
    points: np.ndarray,
    distance: float,
    seed: int,
    sensor: np.ndarray,
    params: DetectionParams = DETECTION_PARAMS,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,) whether each point lies on a support plane, and the largest plane's coefficients
    (a, b, c, d), normal towards the sensor, or None when there is none.

    RANSAC (open3d ``segment_plane``) runs on an even subsample of at most ``params.plane_sample``
    points; every point within ``distance`` of a plane found there is on it.
    """
    import open3d as o3d

    on_plane = np.zeros(len(points), dtype=bool)
    largest = None
    sample = np.arange(0, len(points), max(1, len(points) // params.plane_sample))
    ranges = np.linalg.norm(points - sensor, axis=1)
    o3d.utility.random.seed(seed)
    for _ in range(params.max_planes):
        rest = sample[~on_plane[sample]]
        if len(rest) < 3 * params.cluster_min_points:
            break
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[rest]))
        plane, inliers = cloud.segment_plane(distance, 3, params.plane_iterations)
        if len(inliers) < params.plane_min_share * len(sample):  # of the frame: not an object's face
            break
        plane = np.asarray(plane, dtype=np.float64) / np.linalg.norm(plane[:3])
        if plane[:3] @ sensor + plane[3] < 0:
            plane = -plane
        largest = plane if largest is None else largest
        heights = points @ plane[:3] + plane[3]
        on_plane |= np.abs(heights) <= _plane_band(heights, ranges, distance, params)
    return on_plane, largest


def _plane_band(
    heights: np.ndarray, ranges: np.ndarray, distance: float, params: DetectionParams = DETECTION_PARAMS
) -> np.ndarray:
    """(N,) how far from a support plane its points may lie and still be on it: ``distance``, or
    more where the sensor's noise is larger (``params.plane_noise_sigmas`` standard deviations).

    A sensor's depth noise grows with range (a Kinect's about with its square), so at the far end
    of a table its returns scatter beyond a band that fits the near end, and what they leave off
    the plane would join far objects into one segment. The noise is measured on the plane itself,
    in ``params.plane_noise_bins`` bands of range: the returns just below it (nothing lies under a
    table; its top face's returns scatter either side) give a robust standard deviation, the
    median distance over 0.6745.

    Args:
        heights: (N,) each point's signed distance from the plane (positive towards the sensor).
        ranges: (N,) each point's distance from the sensor.
        distance: the least band (RANSAC's inlier distance).
    """
    below = (heights < 0) & (heights > -params.plane_noise_reach * distance)
    if below.sum() < 8 * params.plane_noise_bins:
        return np.full(len(heights), distance)
    near = ranges[below]
    edges = np.quantile(near, np.linspace(0.0, 1.0, params.plane_noise_bins + 1))
    bins = np.clip(np.searchsorted(edges, near, side="right") - 1, 0, params.plane_noise_bins - 1)
    depth = -heights[below]
    sigma = np.array([np.median(depth[bins == b]) / 0.6745 for b in range(params.plane_noise_bins)])
    centres = 0.5 * (edges[1:] + edges[:-1])
    return np.maximum(distance, params.plane_noise_sigmas * np.interp(ranges, centres, sigma))


def _clusters(voxels: np.ndarray, voxel: float, params: DetectionParams = DETECTION_PARAMS) -> np.ndarray:
    """(V,) DBSCAN cluster of each voxel, -1 for noise."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(voxels))
    return np.asarray(cloud.cluster_dbscan(params.cluster_eps_voxels * voxel, params.cluster_min_points))


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
        self.keys, self.nearest, _ = self.nearest_of(points)  # sorted cells, their nearest range

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

    def nearest_of(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the sensor would see of ``points`` (M, 3) alone: the cells they fall in (sorted),
        the nearest range in each, and the index of the point seen there."""
        keys, ranges = self._cells(points)
        chosen = _nearest_each(keys, ranges)
        return keys[chosen], ranges[chosen], chosen

    def nearest_in_groups(
        self, points: np.ndarray, groups: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`nearest_of` for many sets of points at once (``groups`` (M,) says which set each
        point is of): for each set, what it alone would show the sensor, by set, then by cell:
        the cells, the nearest range in each, and the index of the point seen there."""
        keys, ranges = self._cells(points)
        span = int(keys.max()) + 1 if len(keys) else 1
        chosen = _nearest_each(groups.astype(np.int64) * span + keys, ranges)
        return keys[chosen], ranges[chosen], chosen

    def interior(self, keys: np.ndarray) -> np.ndarray:
        """(K,) which of the sorted cells ``keys`` have all eight neighbours among them (away
        from the silhouette, where a sensor's returns are mixed or lost)."""
        width = int(2 * np.pi / self.cell) + 2
        inside = np.ones(len(keys), dtype=bool)
        if len(keys) == 0:
            return inside
        for step in (1, -1, width, -width, width + 1, width - 1, 1 - width, -1 - width):
            where = np.minimum(np.searchsorted(keys, keys + step), len(keys) - 1)
            inside &= keys[where] == keys + step
        return inside

    def in_view(self, keys: np.ndarray, reach: int = 3) -> np.ndarray:
        """(K,) which cells ``keys`` lie where the sensor looked: a return within ``reach`` cells
        of them (beyond the image's border there is none; a dropped pixel has neighbours)."""
        width = int(2 * np.pi / self.cell) + 2
        looked = np.zeros(len(keys), dtype=bool)
        if len(self.keys) == 0:
            return looked
        for row in range(-reach, reach + 1):
            for column in range(-reach, reach + 1):
                near = keys + row * width + column
                where = np.minimum(np.searchsorted(self.keys, near), len(self.keys) - 1)
                looked |= self.keys[where] == near
        return looked

    def observed(self, keys: np.ndarray) -> np.ndarray:
        """The nearest range seen in each cell of ``keys`` (K,), NaN where nothing was."""
        where = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        if len(self.keys) == 0:
            return np.full(len(keys), np.nan)
        return np.where(self.keys[where] == keys, self.nearest[where], np.nan)

    def agreement(self, points: np.ndarray, tolerance: float) -> tuple[int, int]:
        """How many of ``points`` (M, 3) the sensor saw where they are (its nearest return in
        their direction lies within ``tolerance`` of them), of how many there are."""
        keys, ranges = self._cells(points)
        where = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        seen = self.keys[where] == keys
        near = np.abs(self.nearest[where] - ranges) <= tolerance
        return int((seen & near).sum()), len(points)


def _nearest_each(keys: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """For each distinct key (ascending), the index of its smallest range: one sort by key, and
    the least range of each run of equal keys (the first of them where several tie)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys)
    keys, ranges = keys[order], ranges[order]
    new = np.ones(len(keys), dtype=bool)
    new[1:] = keys[1:] != keys[:-1]
    run = np.cumsum(new) - 1
    least = np.minimum.reduceat(ranges, np.flatnonzero(new))
    candidates = np.flatnonzero(ranges == least[run])
    first = np.ones(len(candidates), dtype=bool)
    first[1:] = run[candidates[1:]] != run[candidates[:-1]]
    return order[candidates[first]]


def _span(points: np.ndarray) -> float:
    return float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))


def _posed_surface(
    served: ServedObject, pose: ObjectPose, points: int = DETECTION_PARAMS.visibility_points
) -> tuple[np.ndarray, np.ndarray]:
    """About ``points`` of the object's surface points and their normals in the frame (frame
    units), (M, 3) each."""
    return served.posed_surface(pose.object_rotation, pose.object_translation, pose.scale, points)


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
        params: DetectionParams = DETECTION_PARAMS,
    ) -> None:
        self.points, self.objects, self.sizes, self.units = points, objects, sizes, units
        self.params = params
        self.sensor, self.seen, self.plane = sensor, seen, plane
        self.plane_axes = None if plane is None else plane_axes(plane[:3])
        self.detections: list[Detection] = []
        self.surfaces: list[tuple[np.ndarray, float]] = []  # each detection's posed surface, reach
        self.refused = 0
        self.poses = 0
        self.examined = 0  # segments the first pass looked at
        self.pitch = 0.0  # the angle between the sensor's neighbouring returns (radians)
        self.sight = points  # what the range images are made of (a subsample of the frame)
        self._fine: RangeImage | None = None
        self.ambiguous: list[tuple[str, np.ndarray]] = []  # (object, centre) a vote's search left ambiguous

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
        is posed again, at most ``params.max_per_segment`` times.

        Returns:
            The members left unexplained.
        """
        least = max(self.params.min_segment_points, self.params.leftover_share * len(members))
        for attempt in range(self.params.max_per_segment):
            if len(members) < (self.params.min_segment_points if attempt == 0 else least):
                break
            found = self._pose_once(self.points[members])
            if found is None:
                break
            if not any(
                _same_instance(found.detection, other, self.objects, self.sizes, self.params)
                for other in self.detections
            ):
                self.detections.append(found.detection)
                self.surfaces.append((found.posed, found.reach))
            members = members[~found.explained]
        return members

    def pose_from(self, members: np.ndarray, name: str, start: tuple[np.ndarray, np.ndarray]) -> bool:
        """Pose the points ``members`` (indices) as one object from a start pose (answer frame),
        e.g. a point-pair vote's hypothesis; a verified pose that is not a detection already
        becomes one. Returns whether it did."""
        rotation, translation = start
        served = self.objects[name]
        scale = served.scale_for(self.units)
        centre = served.centroid / scale @ rotation + translation
        reach = self.params.ambiguous_reach * self.sizes[name]
        if any(other == name and np.linalg.norm(centre - at) < reach for other, at in self.ambiguous):
            return False  # its search here was left ambiguous already: another start settles nothing
        raw = _unverified(rotation, translation, scale)
        if self.support(name, raw) < self.params.min_vote_support:
            return False  # the sensor does not see the object's facing surface where the votes put it
        # A few coarse steps first: most votes' poses are of other objects or of clutter, and
        # the whole search of each costs ten times as much.
        fit, coarse = self._coarse(name, self.points[members], [start], self.params.vote_screen_points)
        if fit < self.params.min_vote_screen or self.view(name, coarse) < self.params.min_vote_screen_view:
            return False
        plan = dataclasses.replace(self.params.plan(), lead=True)
        hypothesis, pose = self._hypothesis(name, self.points[members], [start], plan)
        if pose.ambiguous and not pose.found:
            self.ambiguous.append((name, centre))
        found = self._fitting(hypothesis)
        if found is None or any(
            _same_instance(found.detection, other, self.objects, self.sizes, self.params)
            for other in self.detections
        ):
            return False
        self.detections.append(found.detection)
        self.surfaces.append((found.posed, found.reach))
        return True

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
            found = self._fitting(self._hypothesis(name, segment, starts, self.params.plan())[0])
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
            budgets=lambda: budget.Budget(self.params.segment_budget_s),
            plan=dataclasses.replace(plan, starts=starts),
        )
        self.poses += 1
        least_visible = self.params.min_visible_fraction
        if pose.ambiguous:
            pose = self._settle(name, pose)
            least_visible = self.params.min_settled_visible  # settled by the frame alone: more evidence
        if pose.ambiguous and prior is not None:
            pose = self._settle_by_prior(name, pose, prior)
            least_visible = self.params.min_visible_fraction  # the previous frame bore the pose out
        if not pose.found:
            return None, pose
        return self._verify(name, segment, pose, least_visible), pose

    def _fitting(self, found: _Hypothesis | None) -> _Hypothesis | None:
        """``found``, unless fewer than ``params.min_fitness`` of the points it was posed on fit
        its pose (counted as refused)."""
        if found is None:
            return None
        fitness = float((found.detection.pose.confidence or {}).get("fitness", 0.0))
        if fitness < self.params.min_fitness:
            self.refused += 1  # the points where the object would be do not all fit it
            return None
        return found

    def _candidates(self, segment: np.ndarray) -> list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
        """The objects the segment may be, each with its resting starts: those whose size fits it,
        and, on a support plane, only those whose resting starts screen within
        ``params.object_margin`` of the best (confidence after a few coarse steps, all starts at once),
        none when the best is below ``params.min_screen``."""
        span = _span(segment)
        fitting = [
            (name, self._resting_starts(name, segment))
            for name, size in self.sizes.items()
            if self.params.segment_span[0] * size <= span <= self.params.segment_span[1] * size
        ]
        if self.plane is None or not fitting:
            return fitting
        screened = [self._screen(name, segment, starts) for name, starts in fitting]
        if max(fit for fit, _ in screened) < self.params.min_screen:  # no way of resting there fits: clutter
            return []
        # Those within the margin of the best by how well they explain the points, and those
        # within it by that times how much of them the sensor saw (a smaller object that a
        # larger one outscores on the points alone).
        fits = np.array([fit for fit, _ in screened])
        both = fits * np.array([seen for _, seen in screened])
        margin = self.params.object_margin
        kept = (fits >= fits.max() - margin) | (both >= both.max() - margin)
        return [fitting[i] for i in np.argsort(-fits, kind="stable") if kept[i]]

    def _screen(
        self, name: str, segment: np.ndarray, starts: list[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[float, float]:
        """How well the object resting there fits: the best confidence of its resting starts after
        the coarse stages (how well it explains the segment's points), and how much of that
        start's facing surface the sensor saw where it puts it (:meth:`support`). The confidence
        alone favours the larger objects, whose tolerances are wider and whose surface has room
        for any small segment; the surface they put where the sensor saw none tells them apart."""
        fit, pose = self._coarse(name, segment, starts, self.params.screen_points)
        return fit, self.support(name, pose)

    def _coarse(
        self, name: str, segment: np.ndarray, starts: list[tuple[np.ndarray, np.ndarray]], points: int
    ) -> tuple[float, ObjectPose]:
        """The best of ``starts`` (answer frame) after the coarse stages driven by ``points`` of
        the segment's: its confidence (how well it explains them), and its pose, unverified."""
        from cloudpose.registration.refine import (
            COARSE_SCHEDULE,
            confidence_score,
            object_pose,
            screen_starts,
        )

        served = self.objects[name]
        scale = served.scale_for(self.units)
        internal = [served.internal_pose(rotation, translation, scale) for rotation, translation in starts]
        surface = served.estimator.surface
        backs, fitness, rmse = screen_starts(
            segment * scale, surface, internal, points=points, stages=COARSE_SCHEDULE
        )
        scores = [
            confidence_score(fit, error / surface.diagonal) for fit, error in zip(fitness, rmse, strict=True)
        ]
        best = int(np.argmax(scores))
        rotation, inside = object_pose(backs[best])
        return scores[best], _unverified(rotation, served.answer_translation(rotation, inside, scale), scale)

    def _resting_starts(self, name: str, segment: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Poses of the object resting on the frame's support plane under the segment's centre:
        its most probable stable poses, each turned ``params.resting_yaws`` ways about the plane's
        normal (none without a plane)."""
        if self.plane is None:
            return []
        served = self.objects[name]
        scale = served.scale_for(self.units)  # file units per frame unit
        centre = segment.mean(axis=0)
        origin = centre - (centre @ self.plane[:3] + self.plane[3]) * self.plane[:3]
        starts = []
        covered = 0.0
        for pose in served.resting_poses[: self.params.resting_poses]:
            if covered >= self.params.resting_cover:
                break
            covered += pose.probability
            in_units = RestingPose(
                pose.rotation,
                pose.translation / scale,
                pose.probability,
                pose.radius / scale,
                pose.height / scale,
            )
            for angle in np.arange(self.params.resting_yaws) * (2 * np.pi / self.params.resting_yaws):
                starts.append(rest_on(in_units, self.plane_axes, origin, float(angle)))
        return starts

    def support(self, name: str, pose: ObjectPose) -> float:
        """Share of the posed object's surface facing the sensor that the sensor saw where the
        pose puts it (within ``params.support_tolerance``): an occluded or misplaced pose gets
        little, however well the points near it fit."""
        served, size = self.objects[name], self.sizes[name]
        posed, normals = _posed_surface(served, pose, self.params.visibility_points)
        sight = self.sensor - posed
        facing = np.einsum("ij,ij->i", normals, sight) > self.params.facing_cosine * np.linalg.norm(
            sight, axis=1
        )
        if not facing.any():
            return 0.0
        seen, looked = self.seen.agreement(posed[facing], self.params.support_tolerance * size)
        return seen / looked

    @property
    def fine(self) -> RangeImage:
        """What the sensor saw, in cells of ``params.settle_pitch_cells`` of the angle between
        its neighbouring returns (made when first asked for): where candidates differ by a
        bolt hole or a small bump, the view check's coarser cells blur it away."""
        if self._fine is None:
            self._fine = RangeImage(self.sight, self.sensor, self.params.settle_pitch_cells * self.pitch)
        return self._fine

    def _rendered(
        self, name: str, pose: ObjectPose, image: RangeImage | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The posed object as the sensor would see it, in the cells of ``image`` (the view
        check's by default): its whole surface sample's points that face the sensor (M, 3), the
        cells they fall in (sorted), the nearest range in each, which of the points that is,
        and how squarely the sensor sees the surface there (the cosine of the incidence angle)."""
        image = self.seen if image is None else image
        served = self.objects[name]
        posed, normals = _posed_surface(served, pose, len(served.estimator.surface.points))
        sight = self.sensor - posed
        cosines = np.einsum("ij,ij->i", normals, sight) / np.maximum(np.linalg.norm(sight, axis=1), 1e-12)
        facing = cosines > 0
        keys, ranges, chosen = image.nearest_of(posed[facing])
        return posed[facing], keys, ranges, chosen, cosines[facing][chosen]

    def view(self, name: str, pose: ObjectPose) -> float:
        """How well the sensor's view bears the pose out. The object is rendered as the sensor
        would see it: its nearest surface in each direction, away from its silhouette (where a
        sensor's returns are mixed or lost) and inside the sensor's view. Of those directions
        where nothing was seen in front of it, the share where the frame's nearest return lies
        within ``params.free_space_tolerance`` of it, or a little more where the surface is seen
        obliquely (``params.view_slope``); the rest the sensor saw through, or saw nothing in
        (but at grazing incidence, ``params.view_lost_cosine``), or it lies under the support
        plane. An occluded instance keeps its score; a
        pose turned to fit part of an instance puts surface where the frame shows none, or under
        the table."""
        size = self.sizes[name]
        facing, keys, ranges, chosen, cosines = self._rendered(name, pose)
        keep = self.seen.interior(keys)
        keep[keep] = self.seen.in_view(keys[keep])
        keys, ranges, chosen, cosines = keys[keep], ranges[keep], chosen[keep], cosines[keep]
        observed = self.seen.observed(keys)
        least = self.params.free_space_tolerance * size
        slope = np.sqrt(np.maximum(1.0 - cosines**2, 0.0)) / np.maximum(cosines, 1e-6)
        tolerance = least + np.minimum(self.params.view_slope * self.seen.cell * ranges * slope, 2 * least)
        # Surface under the support plane is not hidden by it: the object cannot be there.
        sunk = np.zeros(len(keys), dtype=bool)
        if self.plane is not None:
            sunk = facing[chosen] @ self.plane[:3] + self.plane[3] < -least
        with np.errstate(invalid="ignore"):
            hidden = (observed < ranges - tolerance) & ~sunk
            bears = int((np.abs(observed - ranges) <= tolerance).sum())
            lost = np.isnan(observed) & (cosines < self.params.view_lost_cosine)
        judged = int((~hidden & ~lost).sum())
        return bears / judged if judged else 0.0

    def _contradicted_share(self, name: str, pose: ObjectPose, points: int | None = None) -> float:
        """Share of the posed object's surface facing the sensor (of ``points`` surface points)
        that the sensor saw through: its nearest return in that direction lies beyond it."""
        served, size = self.objects[name], self.sizes[name]
        posed, normals = _posed_surface(
            served, pose, self.params.visibility_points if points is None else points
        )
        sight = self.sensor - posed
        # Points seen head-on only: near the silhouette (grazing incidence) sensors miss returns.
        facing = np.einsum("ij,ij->i", normals, sight) > self.params.facing_cosine * np.linalg.norm(
            sight, axis=1
        )
        through, looked = self.seen.contradicted(posed[facing], self.params.free_space_tolerance * size)
        return through / looked if looked else 0.0

    def _settle(self, name: str, pose: ObjectPose) -> ObjectPose:
        """An answer the cloud leaves ambiguous, settled by the frame when it can.

        Each candidate is rendered as the sensor would see it, and where two of them disagree the
        frame bears one out (it saw surface where that one puts it) or contradicts it (it saw
        through, or nothing is there). The one candidate that wins ``params.settle_ratio`` times
        as many of those directions as it loses against each other one, and at least
        ``params.settle_cells``, is the answer (a flange turned by half its bolt spacing puts
        plate over the holes the sensor saw the table through, and holes where it saw plate).
        The candidates of an object that is nearly round about an axis (a flange) need not hold
        its right turn, so this comes first when the turn from the first candidate to the second
        is about such an axis (:meth:`_turn_axis`) and the first is borne out by the sensor's
        view (:meth:`view`): its turns about that axis are
        rendered (:meth:`_best_turn`), and the best of them is the answer when the frame bears
        it out better than every candidate distinct from it (10 degrees, symmetries aside) by a
        margin (:meth:`_margin`) of at least ``params.settle_margin``."""
        options = [dataclasses.replace(pose, **_object_pose(candidate)) for candidate in pose.candidates]
        axis = self._turn_axis(name, options)
        if axis is None or self.view(name, options[0]) < self.params.min_view_agreement:
            choice, fewest = self._borne_out(name, options, range(len(options)))
            if choice is None:
                return pose
            ratio = self.params.settle_ratio
            how = f"{fewest} directions or more, at least {ratio:g} times as many as the other way"
            return self.objects[name].settled(pose, choice, self._settled_why(len(options) - 1, how))
        # axis_rotation(axis, -angle) takes the first option to the second (scipy's rotation
        # vector of the turn between them, in cloudpose's row-vector convention).
        past = np.radians(self.params.settle_past_deg)
        best = self._best_turn(
            name, options[0], axis[0], (min(0.0, -axis[1]) - past, max(0.0, -axis[1]) + past)
        )
        symmetry = self.objects[name].symmetry
        rivals = [
            option
            for option in options
            if symmetry.distinct(option.object_rotation, best.object_rotation, 10.0)
        ]
        margins = [self._margin(name, best, rival) for rival in rivals]
        if not rivals or min(margins) < self.params.settle_margin:
            return pose
        extended = dataclasses.replace(
            pose, candidates=[*pose.candidates, {**pose.candidates[0], **_answer_frame(best)}]
        )
        why = self._settled_why(
            len(options), f"by a margin of {min(margins):.1f} standard deviations", turned=True
        )
        return self.objects[name].settled(extended, len(pose.candidates), why)

    def _borne_out(
        self, name: str, options: list[ObjectPose], choices: Iterable[int]
    ) -> tuple[int | None, int]:
        """The one of ``choices`` (indices of ``options``) that the frame bears out against every
        other option (see :meth:`_settle`), and the fewest directions it won by; (None, 0) when
        none is."""
        verdicts = self._verdicts(name, options)
        for choice in choices:
            beaten = [
                (
                    int((verdicts[choice] > verdicts[other]).sum()),
                    int((verdicts[choice] < verdicts[other]).sum()),
                )
                for other in range(len(options))
                if other != choice
            ]
            if beaten and all(
                wins >= self.params.settle_cells and wins >= self.params.settle_ratio * losses
                for wins, losses in beaten
            ):
                return choice, min(wins for wins, _ in beaten)
        return None, 0

    def _settled_why(self, others: int, how: str, turned: bool = False) -> str:
        """The warning a settled answer carries: how many others fit, and ``how`` it won."""
        which = "a turn near two of them" if turned else "this one"
        return (
            f"settled by the frame: {others} other pose(s) fit the points about as well, but where "
            f"they differ from {which} the sensor saw what it puts there ({how})"
        )

    def _turn_axis(self, name: str, options: list[ObjectPose]) -> tuple[np.ndarray, float] | None:
        """The unit axis (object frame) of the turn that takes the first option to the second,
        and its angle (radians, less than half a step of the symmetry about it, either way),
        when the object is nearly round about it: within 10 degrees of an axis of three or more
        of its symmetries (a flange's bolt circle). None otherwise, or without a second option,
        or when they are one step apart."""
        if len(options) < 2:
            return None
        turn = Rotation.from_matrix(options[1].object_rotation @ options[0].object_rotation.T).as_rotvec()
        angle = float(np.linalg.norm(turn))
        if angle < np.radians(self.params.settle_step_deg):
            return None
        axis = turn / angle
        rounds = [
            order
            for round_axis, order in self._round_axes(name)
            if abs(float(axis @ round_axis)) > np.cos(np.radians(10.0))
        ]
        if not rounds:
            return None
        # Turns by a whole step of the object's symmetry about the axis change nothing: the
        # nearest turn to the second option is within half a step (a flange's 30 degrees).
        whole = 2 * np.pi / rounds[0]
        return axis, float((angle + whole / 2) % whole - whole / 2)

    def _round_axes(self, name: str) -> list[tuple[np.ndarray, int]]:
        """Unit axes (object frame) about which three or more of the object's symmetries turn it,
        each with how many do (the identity included)."""
        rotations = self.objects[name].symmetry.rotations[1:]  # the identity first
        axes = (
            [vector / np.linalg.norm(vector) for vector in Rotation.from_matrix(rotations).as_rotvec()]
            if len(rotations)
            else []
        )
        orders = [1 + sum(abs(float(axis @ other)) > 0.999 for other in axes) for axis in axes]
        return [(axis, order) for axis, order in zip(axes, orders, strict=True) if order >= 3]

    def _best_turn(
        self, name: str, pose: ObjectPose, axis: np.ndarray, reach: tuple[float, float]
    ) -> ObjectPose:
        """``pose`` turned about ``axis`` through the object's centroid, within ``reach`` (radians,
        from and to), where the frame bears it out best (:meth:`_turn_scores`): turns
        ``params.settle_step_deg`` apart, then 1 degree apart about the best of them."""
        centre = self.objects[name].centroid / pose.scale  # file frame, frame units

        def turned(theta: float) -> ObjectPose:
            spin = axis_rotation(axis, theta)
            translation = pose.object_translation + (centre - centre @ spin) @ pose.object_rotation
            return dataclasses.replace(
                pose, object_rotation=spin @ pose.object_rotation, object_translation=translation
            )

        step = np.radians(self.params.settle_step_deg)
        coarse = np.arange(reach[0], reach[1] + step / 2, step)
        best = float(coarse[int(np.argmax(self._turn_scores(name, [turned(theta) for theta in coarse])))])
        half = np.floor(self.params.settle_step_deg / 2)
        fine = best + np.radians(np.arange(-half, half + 1))
        return turned(float(fine[int(np.argmax(self._turn_scores(name, [turned(theta) for theta in fine])))]))

    def _turn_scores(self, name: str, poses: list[ObjectPose]) -> np.ndarray:
        """How closely the sensor saw each posed object's nearest surface (the sum of
        :meth:`_closeness` over the directions it covers), all rendered at once; the poses share
        one scale."""
        pose_of, _, keys, ranges = self.rendered_poses(
            name,
            [(pose.object_rotation, pose.object_translation) for pose in poses],
            poses[0].scale,
            len(self.objects[name].estimator.surface.points),
            self.fine,
        )
        closeness = self._closeness_of(name, keys, ranges)
        return np.bincount(pose_of, weights=closeness, minlength=len(poses))

    def rendered_poses(
        self,
        name: str,
        poses: list[tuple[np.ndarray, np.ndarray]],
        scale: float,
        points: int,
        image: RangeImage,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Many poses of one object (rotation, translation as answers give them; ``scale`` the
        frame's units in object units) rendered at once as the sensor would see each, in the
        cells of ``image``, from about ``points`` of its surface points: each pose's nearest
        surface point in each direction it covers, by pose, then by cell.

        Returns:
            Which pose each seen point is of (P,), the points (P, 3), their cells (P,) and
            ranges (P,).
        """
        surface, normals = self.objects[name].posed_surface(np.eye(3), np.zeros(3), scale, points)
        rotations = np.stack([rotation for rotation, _ in poses])  # (K, 3, 3)
        posed = surface @ rotations + np.stack([translation for _, translation in poses])[:, None]
        facing = np.einsum("ksi,ksi->ks", normals @ rotations, self.sensor - posed) > 0
        pose_of, point_of = np.nonzero(facing)
        keys, ranges, chosen = image.nearest_in_groups(posed[pose_of, point_of], pose_of)
        return pose_of[chosen], posed[pose_of[chosen], point_of[chosen]], keys, ranges

    def _closeness(self, name: str, pose: ObjectPose) -> tuple[np.ndarray, np.ndarray]:
        """The directions (sorted cells) the posed object's nearest surface covers, and in each
        how closely the sensor saw it: 1 less the distance to the frame's return in units of
        ``params.free_space_tolerance`` (0 beyond it, or where something hides it), -1 where
        the sensor saw through it."""
        _, keys, ranges, _, _ = self._rendered(name, pose, self.fine)
        return keys, self._closeness_of(name, keys, ranges)

    def _closeness_of(self, name: str, keys: np.ndarray, ranges: np.ndarray) -> np.ndarray:
        """:meth:`_closeness` of an object's rendered surface: its cells and nearest ranges."""
        observed = self.fine.observed(keys)
        tolerance = self.params.free_space_tolerance * self.sizes[name]
        with np.errstate(invalid="ignore"):
            gap = observed - ranges
            closeness = np.where(np.abs(gap) <= tolerance, 1.0 - np.abs(gap) / tolerance, 0.0)
            closeness[gap > tolerance] = -1.0
        return closeness

    def _margin(self, name: str, pose: ObjectPose, other: ObjectPose) -> float:
        """How much better the frame bears out ``pose`` than ``other`` where they differ: the
        per-direction differences of :meth:`_closeness` (a direction only one covers counts 0
        for the other), summed over the root of their sum of squares (about a normal deviate
        when both fit alike)."""
        keys, mine = self._closeness(name, pose)
        other_keys, theirs = self._closeness(name, other)
        cells = np.union1d(keys, other_keys)
        difference = np.zeros(len(cells))
        difference[np.searchsorted(cells, keys)] += mine
        difference[np.searchsorted(cells, other_keys)] -= theirs
        spread = float(np.sqrt((difference**2).sum()))
        return float(difference.sum()) / spread if spread > 0 else 0.0

    def _verdicts(self, name: str, options: list[ObjectPose]) -> np.ndarray:
        """(K, C) what the frame says of each of the K posed options in each of C directions
        (range-image cells) that any of them covers: 1 where the sensor saw surface within
        ``params.free_space_tolerance`` of the option's nearest surface, -1 where it saw
        beyond it (through it) or where the option shows nothing but the sensor saw something
        another option explains, 0 otherwise (nothing seen, or something in front)."""
        tolerance = self.params.free_space_tolerance * self.sizes[name]
        maps = [self._rendered(name, option, self.fine)[1:3] for option in options]
        cells = np.unique(np.concatenate([keys for keys, _ in maps]))
        observed = self.fine.observed(cells)
        predicted = np.full((len(options), len(cells)), np.inf)
        for row, (keys, ranges) in zip(predicted, maps, strict=True):
            row[np.searchsorted(cells, keys)] = ranges
        with np.errstate(invalid="ignore"):
            bears = np.abs(predicted - observed) <= tolerance
            through = predicted < observed - tolerance
        explained_by_any = bears.any(axis=0)
        empty = ~np.isfinite(predicted) & explained_by_any
        return np.where(bears, 1, np.where(through | empty, -1, 0))

    def _settle_by_prior(self, name: str, pose: ObjectPose, prior: np.ndarray) -> ObjectPose:
        """An ambiguous answer settled on the one candidate within ``params.prior_degrees`` of ``prior``
        (symmetries aside) when every other is at least twice as far; else unchanged."""
        served = self.objects[name]
        turns = [
            served.symmetry.error_deg(np.asarray(candidate["rotation"], dtype=np.float64).T, prior)
            for candidate in pose.candidates
        ]
        order = np.argsort(turns)
        nearest = turns[order[0]]
        runner_up = turns[order[1]] if len(turns) > 1 else np.inf
        if nearest > self.params.prior_degrees or runner_up < 2 * max(nearest, self.params.prior_degrees):
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
        object where the pose puts it, its view of the object agrees with the pose (:meth:`view`),
        and the segment covers at least ``least_visible`` of its facing surface."""
        if self._contradicted_share(name, pose) > self.params.free_space_max_share:
            self.refused += 1  # the sensor saw through where this pose puts the object
            return None
        if self.view(name, pose) < self.params.min_view_agreement:
            self.refused += 1  # the sensor's view of where the pose puts the object does not match it
            return None
        served, size = self.objects[name], self.sizes[name]
        posed, normals = _posed_surface(served, pose, self.params.visibility_points)
        reach = self.params.explained_fraction * size
        explained = _explained(segment, posed, reach)
        visible = _visible_fraction(segment, posed, normals, self.sensor, reach)
        if visible < least_visible:
            self.refused += 1  # too little of the object to be evidence of it
            return None
        return _Hypothesis(Detection(name, pose, int(explained.sum()), visible), explained, posed, reach)


def _unverified(rotation: np.ndarray, translation: np.ndarray, scale: float) -> ObjectPose:
    """An object pose (frame units, file frame) as an answer not yet found, to be checked against
    the frame."""
    return ObjectPose(rotation.T, -translation @ rotation.T, rotation, translation, False, scale)


def _answer_frame(pose: ObjectPose) -> dict[str, list]:
    """A pose as an answer's candidate transform (back rotation and translation)."""
    back = pose.object_rotation.T
    return {"rotation": back.tolist(), "translation": (-pose.object_translation @ back).tolist()}


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
    params: DetectionParams = DETECTION_PARAMS,
    votes: VoteParams | None = VOTE_PARAMS,
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
        params: how the frame is cut and a pose verified.
        votes: how the whole frame votes for every object's poses before it is cut into
            segments (:func:`cloudpose.detection.votes.vote_pass`); None: segments alone. On
            the first 30 parts frames, votes alone find 68 of 87 instances at 0.92 s a frame,
            votes then segments 75 at 1.45 s, segments alone 64 at 1.8 s. Last, the points no
            detection explains vote again (``params.leftover_votes``).

    Returns:
        The detections, best first, and how the frame was cut.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = (time.perf_counter() - started) * 1000 - sum(timings.values())

    points = np.asarray(points, dtype=np.float64)
    objects, skipped = convertible(objects, units)
    search, on_plane, voxel = open_frame(points, objects, units, viewpoint, seed, lap, params)
    segments = frame_segments(points, on_plane, voxel, params, search.sensor, search.pitch)
    lap("segments_ms")
    deadline = None if budget_s is None else started + budget_s
    complete = True

    def out_of_time() -> bool:
        nonlocal complete
        if deadline is not None and time.perf_counter() > deadline:
            complete = False
        return not complete

    votes_left = 0
    if votes is not None:  # hypotheses of every object from the whole frame's point pairs
        votes_left = vote_pass(search, on_plane, out_of_time, votes)
        lap("votes_ms")
        if not params.segments_after_votes:
            segments = []
    # First pass: every segment. A segment nothing fits is cut finer (touching objects that one
    # neighbourhood joined) and its parts are posed alike.
    leftovers = _first_pass(search, segments, voxel, out_of_time, params)
    lap("first_pass_ms")
    _second_pass(search, leftovers, out_of_time, params)
    lap("unions_ms")
    if votes is not None and params.leftover_votes and not out_of_time():
        votes_left += leftover_votes(search, on_plane, out_of_time, votes)
        lap("leftover_votes_ms")
    detections = sorted(search.detections, key=lambda item: item.confidence(), reverse=True)
    if max_instances is not None:
        detections = detections[:max_instances]
    return FrameReport(
        detections,
        len(segments),
        int(on_plane.sum()),
        timings,
        search.refused,
        complete,
        search.poses,
        skipped,
        None if complete else search.examined,
        votes_left,
    )


def leftover_votes(
    search: _FrameSearch,
    on_plane: np.ndarray,
    out_of_time: Callable[[], bool],
    votes: VoteParams = VOTE_PARAMS,
) -> int:
    """The frame's votes again, from its points off the support planes that no detection
    explains: with the instances found so far gone, the clusters of the instances left (far
    ones, with a few hundred returns, whose clusters the near ones outvoted) lead their
    objects' hypotheses. Returns how many hypotheses were left unexamined when the budget ran
    out (:func:`cloudpose.detection.votes.vote_pass`)."""
    if not search.detections:
        return 0  # nothing explained: the first votes were these
    left = search.unexplained(np.flatnonzero(~on_plane))
    taken = np.ones(len(search.points), dtype=bool)
    taken[left] = False
    return vote_pass(search, taken, out_of_time, dataclasses.replace(votes, kept=search.params.leftover_kept))


def convertible(
    objects: Mapping[str, ServedObject], units: str | None
) -> tuple[dict[str, ServedObject], list[str]]:
    """The objects a frame in ``units`` can be searched for, and a warning for each of the others
    (added without units, so the frame's points cannot be converted to theirs). One such object
    does not stop the frame's search for the rest; when none is left, its error is the answer.

    Raises:
        CloudError: (422) no object can be converted.
    """
    kept: dict[str, ServedObject] = {}
    skipped: list[str] = []
    first_error: CloudError | None = None
    for name, served in objects.items():
        try:
            served.scale_for(units)
        except CloudError as error:
            first_error = first_error or error
            skipped.append(f"{error.detail.split(':')[0]}: it was not looked for in this frame")
            continue
        kept[name] = served
    if not kept and first_error is not None:
        raise first_error
    return kept, skipped


def _second_pass(
    search: _FrameSearch,
    leftovers: list[np.ndarray],
    out_of_time: Callable[[], bool],
    params: DetectionParams,
) -> None:
    """Pose together the pieces of one instance that occlusion cut apart (unions of leftovers)."""
    for members in _unions(search.points, leftovers, max(search.sizes.values()), params):
        if out_of_time():
            break
        remaining = search.unexplained(members)
        if len(remaining) >= max(params.min_segment_points, (1 - params.explained_already) * len(members)):
            search.pose(remaining)


def _first_pass(
    search: _FrameSearch,
    segments: list[np.ndarray],
    voxel: float,
    out_of_time: Callable[[], bool],
    params: DetectionParams,
) -> list[np.ndarray]:
    """Pose every segment (point indices), cutting finer those nothing fits; returns what is left
    unexplained of them, for the second pass."""
    points = search.points
    leftovers: list[np.ndarray] = []  # unexplained members
    for members in segments:
        if out_of_time():
            break
        search.examined += 1
        remaining = search.unexplained(members)
        if len(remaining) < (1 - params.explained_already) * len(members):
            continue
        left = search.pose(remaining)
        if len(left) < params.min_segment_points:
            continue
        parts = _split(points[left], voxel, params) if len(left) == len(remaining) else []
        if len(parts) < 2:
            leftovers.append(left)
            continue
        for part in parts:
            if out_of_time():
                break
            part_left = search.pose(left[part])
            if len(part_left) >= params.min_segment_points:
                leftovers.append(part_left)
    return leftovers


def open_frame(
    points: np.ndarray,
    objects: Mapping[str, ServedObject],
    units: str | None,
    viewpoint: Sequence[float] | None,
    seed: int,
    lap: Callable[[str], None] = lambda name: None,
    params: DetectionParams = DETECTION_PARAMS,
) -> tuple[_FrameSearch, np.ndarray, float]:
    """What every search of a frame starts from: its support planes and what the sensor saw.

    Args:
        points: (N, 3) float64 the frame, sensor frame, in ``units``.
        objects, units, viewpoint, seed, params: as for :func:`detect`.
        lap: told ``"planes_ms"`` and ``"range_image_ms"`` as each step ends.

    Returns:
        The frame's search, (N,) whether each point lies on a support plane, and the voxel side.
    """
    sensor = np.zeros(3) if viewpoint is None else np.asarray(viewpoint, dtype=np.float64)
    # Each object's diagonal in the frame's units (a 422 for an object without units when the
    # frame has some).
    sizes = {name: served.diagonal / served.scale_for(units) for name, served in objects.items()}
    voxel = params.voxel_fraction * min(sizes.values())
    on_plane, plane = _support_planes(points, params.plane_distance_voxels * voxel, seed, sensor, params)
    lap("planes_ms")
    # What the sensor saw in each direction, from an even subsample of the whole frame (planes
    # included: the table behind a pose shows the sensor's line of sight).
    sight = points[:: max(1, len(points) // params.range_sample)]
    ranges = np.linalg.norm(sight - sensor, axis=1)
    cell = voxel / max(float(np.median(ranges)), voxel) if len(sight) else 1.0
    pitch = _pitch(sight, ranges, seed)
    seen = RangeImage(sight, sensor, cell=max(cell, params.pitch_cells * pitch))
    search = _FrameSearch(points, objects, sizes, units, sensor, seen, plane, params)
    search.pitch, search.sight = pitch, sight
    lap("range_image_ms")
    return search, on_plane, voxel


def _pitch(points: np.ndarray, ranges: np.ndarray, seed: int, sample: int = 2000) -> float:
    """The angle (radians) between neighbouring returns of a frame, the median over a sample of
    its points: a sensor's angular resolution, coarser than the voxel's for a small image."""
    from scipy.spatial import cKDTree

    if len(points) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(points), min(sample, len(points)), replace=False)
    distance, _ = cKDTree(points, balanced_tree=False, compact_nodes=False).query(points[picked], k=2)
    return float(np.median(distance[:, 1] / np.maximum(ranges[picked], 1e-12)))


def frame_segments(
    points: np.ndarray,
    on_plane: np.ndarray,
    voxel: float,
    params: DetectionParams = DETECTION_PARAMS,
    sensor: np.ndarray | None = None,
    pitch: float = 0.0,
) -> list[np.ndarray]:
    """The segments of a frame off its support planes: DBSCAN clusters of the voxels of what is
    left, as (M,) point indices into ``points``, largest first (at least ``params.min_segment_points``).

    A sensor's returns lie farther apart the farther they are (``pitch`` times the range), and
    past some range fewer than DBSCAN's least neighbours fall within its neighbourhood: a whole
    object there would be taken for noise. So the points beyond the range where returns lie
    ``params.cluster_spacing`` voxels apart are drawn towards the sensor, each by that range over
    its own, before they are clustered: their neighbours then lie as close as there. Only the
    grouping changes; the segments hold the points as they are.

    Args:
        points: (N, 3) the frame.
        on_plane: (N,) whether each point lies on a support plane (:func:`open_frame`).
        voxel: the voxel side (:func:`open_frame`).
        sensor: (3,) where the sensor was (:attr:`_FrameSearch.sensor`).
        pitch: the angle between its neighbouring returns, radians (:attr:`_FrameSearch.pitch`);
            0 clusters the points as they are.
    """
    kept = np.flatnonzero(~on_plane)
    if not len(kept):
        return []
    where = points[kept]
    if pitch > 0 and sensor is not None:
        offset = where - sensor
        ranges = np.maximum(np.linalg.norm(offset, axis=1), 1e-12)
        reach = params.cluster_spacing * voxel / pitch  # the range where returns lie that far apart
        where = sensor + offset * np.minimum(1.0, reach / ranges)[:, None]
    voxels, voxel_of_point = voxel_labels(where, voxel)
    labels = _clusters(voxels, voxel, params)[voxel_of_point]
    return [kept[members] for members in _members(labels, params)]


def _members(point_labels: np.ndarray, params: DetectionParams = DETECTION_PARAMS) -> list[np.ndarray]:
    """The point indices of each label (-1 aside) with at least ``params.min_segment_points``, largest
    first (one sort: a pass per label would cost points x labels)."""
    if len(point_labels) == 0 or point_labels.max() < 0:
        return []
    order = np.argsort(point_labels, kind="stable")
    bounds = np.searchsorted(point_labels[order], np.arange(point_labels.max() + 2))
    groups = [order[bounds[label] : bounds[label + 1]] for label in range(point_labels.max() + 1)]
    return sorted((item for item in groups if len(item) >= params.min_segment_points), key=len, reverse=True)


def _split(segment: np.ndarray, voxel: float, params: DetectionParams = DETECTION_PARAMS) -> list[np.ndarray]:
    """A segment (M, 3) cut by a finer neighbourhood (``params.split_eps_voxels``): index arrays of its
    parts, largest first; one part when it does not come apart."""
    cells, voxel_of_point = voxel_labels(segment, voxel * params.split_voxel)
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cells))
    labels = np.asarray(
        cloud.cluster_dbscan(params.split_eps_voxels * voxel * params.split_voxel, params.cluster_min_points)
    )
    return _members(labels[voxel_of_point], params)


def _unions(
    points: np.ndarray,
    leftovers: list[np.ndarray],
    diagonal: float,
    params: DetectionParams = DETECTION_PARAMS,
) -> list[np.ndarray]:
    """Unions of leftovers (point indices) whose centres lie within ``params.union_reach`` of the largest
    object's diagonal of each other and that together still fit an object's size: pieces of one
    partly hidden instance."""
    if len(leftovers) < 2:
        return []
    centres = np.stack([points[members].mean(axis=0) for members in leftovers])
    unions: list[np.ndarray] = []
    seen: set[tuple[int, ...]] = set()
    for centre in centres:
        near = tuple(
            np.flatnonzero(np.linalg.norm(centres - centre, axis=1) <= params.union_reach * diagonal).tolist()
        )
        if len(near) > 1 and near not in seen:
            seen.add(near)
            union = np.concatenate([leftovers[j] for j in near])
            if _span(points[union]) <= params.segment_span[1] * diagonal:
                unions.append(union)
    unions.sort(key=len, reverse=True)
    return unions[: params.max_unions]


def _same_instance(
    first: Detection,
    second: Detection,
    objects: Mapping[str, ServedObject],
    sizes: Mapping[str, float],
    params: DetectionParams = DETECTION_PARAMS,
) -> bool:
    """Whether two detections are one instance: one object, poses this close (symmetries aside).

    Distance is measured at the object's centroid, where its symmetry axes pass: two poses a symmetry
    apart put it in one place, wherever the mesh file has its origin.
    """
    if first.object != second.object:
        return False
    a, b = first.pose, second.pose
    centre = objects[first.object].centroid / a.scale  # file frame, frame units
    apart = (centre @ a.object_rotation + a.object_translation) - (
        centre @ b.object_rotation + b.object_translation
    )
    if np.linalg.norm(apart) > params.duplicate_distance * sizes[first.object]:
        return False
    turned = objects[first.object].symmetry.distinct(
        a.object_rotation, b.object_rotation, params.duplicate_degrees
    )
    return not turned
