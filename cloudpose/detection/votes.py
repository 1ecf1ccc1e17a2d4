"""Frame-wide point-pair votes: every object's pose hypotheses from one preparation of the frame.

Convention: row vectors, as everywhere in cloudpose. A hypothesis is an object pose as answers
give it (file frame, the frame's units): ``observed = canonical @ rotation + translation``.

Where the segment-by-segment search needs the frame cut into one proposal per instance, votes
need no cut (Drost et al. 2010; Vidal et al. 2018): the points off the support planes are
subsampled once on a voxel grid, given normals turned towards the sensor, and every few of them
is a reference point that pairs with every point within an object's diameter. Each object's
point-pair table (:class:`cloudpose.estimation.ppf.PPFModel`) turns those pairs into votes for
(model point, rotation about the normal); the accumulator peaks are poses, and clustered poses
are the object's hypotheses, most votes first. Touching instances, clutter and occlusion do not
matter to the votes: the pairs of one instance's surface agree on its pose, whatever lies beside.

Votes count pairs, so a large surface outvotes a small instance: a few clusters per place are
kept, each is brought to the frame by a few ICP steps and re-scored by how much of the posed
object's visible surface lies on the frame (Vidal et al. 2018), and the best distinct poses of
each object are posed and verified by detection (:meth:`cloudpose.detection.detect._FrameSearch.pose_from`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import open3d as o3d
from scipy.spatial import cKDTree

from cloudpose.estimation.ppf import PPFModel, evenly_spaced
from cloudpose.estimation.served import ServedObject
from cloudpose.registration.refine import QUERY_THREADS


@dataclass(frozen=True)
class VoteParams:
    """How a frame votes (shares of an object's diagonal unless a field says otherwise; set on
    the synthetic scene frames of the parts, crank, tee and flange).

    Attributes:
        reference_stride: every this-many-th voxel of the frame is a reference point ...
        max_references: ... at most this many (spread evenly).
        normal_radius_steps: the frame's normals are fitted to its points' neighbours within
            this many voxels (on the parts frames 0.5, 1.0, 1.5 and 2.0 put a hypothesis near 2,
            3, 5 and 6 of 10 instances: the sensor's noise wants wide fits) ...
        normal_neighbours: ... at most this many of them ...
        max_normal_points: ... on an even subsample of at most this many points.
        per_place: of the object's vote clusters, most votes first, at most this many whose
            centres lie within ``place`` of the diagonal of each other's are kept (a large
            surface near one instance outvotes a smaller instance elsewhere, whose own
            references vote it into their first three clusters) ...
        place: ... (see above) ...
        hypotheses: ... up to this many ...
        min_votes_share: ... and none with fewer votes than this share of the object's best
            cluster.
        render_points: each cluster's pose is rendered as the sensor would see it, from this
            many of the object's surface points (its nearest surface in each direction: a pipe's
            bore behind its near wall faces the sensor but is hidden; counted, it held right
            tee poses to about 0.6, below wrong poses of flat parts on flat clutter) ...
        fit_points: ... and brought to the frame by a few steps of ICP of this many of the
            rendered points ...
        fit_steps: ... this many steps, from ``fit_reach`` times ``fit_tolerance`` down ...
        fit_reach: ... (see above) ...
        fit_tolerance: ... and scored by the share of those points within this distance of a
            frame point (Vidal et al. 2018 re-score by the visible model points): votes favour
            the objects near large surfaces, whose pairs agree with many of any object's.
        distinct: of fitted poses whose centroids lie closer than this and whose rotations
            differ by less than ``distinct_degrees`` (symmetries aside), only the best scored
            is kept (a part and its turn that fits nearly as well, e.g. a crank upside down,
            stay two) ...
        distinct_degrees: ... (see above) ...
        kept: ... and this many per object, best scored first, are posed on the frame.
        crop: frame points within this distance of a hypothesis' posed surface are what its
            pose is refined and verified on.
    """

    reference_stride: int = 4
    max_references: int = 800
    normal_radius_steps: float = 2.0
    normal_neighbours: int = 60
    max_normal_points: int = 60_000
    per_place: int = 3
    place: float = 0.25
    hypotheses: int = 40
    min_votes_share: float = 0.0
    render_points: int = 1500
    fit_points: int = 400
    fit_steps: int = 4
    fit_reach: float = 3.0
    fit_tolerance: float = 0.03
    distinct: float = 0.1
    distinct_degrees: float = 20.0
    kept: int = 10
    crop: float = 0.06


VOTE_PARAMS = VoteParams()


def ppf_model(served: ServedObject) -> PPFModel:
    """The object's point-pair table: its estimator's, else one built from its surface model
    (objects with a network use it only for frames) and kept on the estimator."""
    estimator = served.estimator
    if estimator.ppf is None:
        surface = estimator.surface
        estimator.ppf = PPFModel(surface.points, surface.normals, surface.diagonal)
    return estimator.ppf


class FrameVotes:
    """A frame prepared once for every object's votes: its points off the support planes on a
    voxel grid, with normals turned towards the sensor. Each object votes on the grid of its
    own table's step, rounded to a ladder of steps 1.25 times apart from the finest: the
    finest object's grid holds k^2 times the points that a k-times larger one needs, and its
    votes cost the square of that (eight objects from 60 to 160 mm: 0.26 s a frame each on the
    finest grid).

    Args:
        points: (N, 3) the frame's points off its support planes, frame units.
        sensor: (3,) where the sensor was.
        step: the voxel side (frame units): the finest of the objects' table steps.
        params: the knobs.
    """

    LADDER = 1.25

    def __init__(
        self, points: np.ndarray, sensor: np.ndarray, step: float, params: VoteParams = VOTE_PARAMS
    ) -> None:
        self.params, self.step = params, step
        points = np.asarray(points, np.float64)
        self.cloud = points[:: max(1, len(points) // params.max_normal_points)]
        self.sensor = np.asarray(sensor, np.float64)
        self._grids: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.points, self.normals, self.references = self.grid(0)

    def grid(self, rung: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The frame on the grid ``LADDER ** rung`` times the finest step: points (V, 3),
        their normals (V, 3) and the reference points (indices), made when first asked for."""
        if rung not in self._grids:
            params, step = self.params, self.step * self.LADDER**rung
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(self.cloud))
            # Normals of the sensor's own sampling (fine: edges and thin walls keep theirs), turned
            # towards the sensor, then averaged per voxel.
            cloud.estimate_normals(
                o3d.geometry.KDTreeSearchParamHybrid(
                    params.normal_radius_steps * step, params.normal_neighbours
                )
            )
            cloud.orient_normals_towards_camera_location(self.sensor)
            down = cloud.voxel_down_sample(step)
            normals = np.asarray(down.normals)
            length = np.linalg.norm(normals, axis=1)
            # A voxel whose normals cancel out (an edge seen from both sides) says nothing.
            keep = length > 0.3
            points = np.asarray(down.points)[keep]  # (V, 3)
            count = len(points)
            wanted = min(params.max_references, max(1, count // params.reference_stride))
            references = evenly_spaced(count, wanted)
            self._grids[rung] = (points, normals[keep] / length[keep, None], references)
        return self._grids[rung]

    def rung(self, step: float) -> int:
        """The rung of the ladder whose step is nearest ``step`` (frame units), in ratio."""
        return max(0, int(np.round(np.log(step / self.step) / np.log(self.LADDER))))

    def hypotheses(self, served: ServedObject, scale: float) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """The object's pose hypotheses in this frame, most votes first: (rotation (3, 3),
        translation (3,) frame units, votes), as answers give a pose.

        Args:
            served: the object.
            scale: the frame's units in object units.
        """
        model = ppf_model(served)
        points, normals, references = self.grid(self.rung(model.step / scale))
        if len(references) == 0:
            return []
        clusters = model.frame_hypotheses(
            points * scale,
            normals,
            references,
            self.params.hypotheses,
            (self.params.place * model.diagonal, self.params.per_place),
        )
        if not clusters:
            return []
        least = self.params.min_votes_share * clusters[0][2]
        out = []
        for rotation, centre, votes in clusters:
            if votes < least:
                break
            # Internal frame (object units, centred) to the answer frame (file frame, frame units).
            translation = (centre - served.centroid @ rotation) / scale
            out.append((rotation, translation, votes))
        return out


def vote_pass(
    search: Any,
    on_plane: np.ndarray,
    out_of_time: Callable[[], bool],
    params: VoteParams = VOTE_PARAMS,
) -> int:
    """Every object's hypotheses in the frame, each refined and verified on the frame points
    near its posed surface, strongest first; the found ones become the search's detections.

    Args:
        search: the frame's search (:class:`cloudpose.detection.detect._FrameSearch`).
        on_plane: (N,) whether each frame point lies on a support plane.
        out_of_time: whether the frame's budget ran out (checked before each hypothesis).
        params: the knobs.

    Returns:
        How many hypotheses were left unexamined when the budget ran out (0: none).
    """
    detection_params = search.params
    off = np.flatnonzero(~on_plane)
    if len(off) < detection_params.min_segment_points or not search.objects:
        return 0
    scales = {name: served.scale_for(search.units) for name, served in search.objects.items()}
    step = min(ppf_model(served).step / scales[name] for name, served in search.objects.items())
    frame = FrameVotes(search.points[off], search.sensor, step, params)
    tree = cKDTree(search.points[off])
    queue = []
    for name, served in search.objects.items():
        if out_of_time():
            break  # what the objects not voted for would have added is unknown: nothing counted
        hypotheses = frame.hypotheses(served, scales[name])
        fitted = fit_all_to_frame(search, tree, name, [(r, t) for r, t, _ in hypotheses], params)
        for rank, (score, rotation, translation) in enumerate(_distinct(fitted, search, name, params)):
            queue.append((rank, -score, name, rotation, translation))
    queue.sort(key=lambda item: item[:2])
    for done, (_, _, name, rotation, translation) in enumerate(queue):
        if out_of_time():
            return len(queue) - done
        served, size = search.objects[name], search.sizes[name]
        posed, _ = served.posed_surface(rotation, translation, scales[name], 400)
        near = tree.query_ball_point(posed, params.crop * size, return_sorted=False)
        members = np.unique(np.concatenate([np.asarray(item, dtype=np.int64) for item in near]))
        members = search.unexplained(off[members])
        if len(members) < detection_params.min_segment_points:
            continue
        search.pose_from(members, name, (rotation, translation))
    return 0


def fit_to_frame(
    search: Any,
    tree: cKDTree,
    name: str,
    pose: tuple[np.ndarray, np.ndarray],
    params: VoteParams = VOTE_PARAMS,
) -> tuple[float, np.ndarray, np.ndarray]:
    """One hypothesis brought to the frame and scored (:func:`fit_all_to_frame`).

    Returns:
        (score, rotation (3, 3), translation (3,)), the pose as answers give it.
    """
    (fitted,) = fit_all_to_frame(search, tree, name, [pose], params)
    return fitted


def fit_all_to_frame(
    search: Any,
    tree: cKDTree,
    name: str,
    poses: list[tuple[np.ndarray, np.ndarray]],
    params: VoteParams = VOTE_PARAMS,
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Hypotheses of one object brought to the frame and scored: ``params.fit_steps`` steps of
    trimmed point-to-point ICP of what the sensor would see of each posed object (its nearest
    surface in each direction of the view check's range image) onto the frame's points off its
    support planes (``tree``), the reach shrinking from ``params.fit_reach`` to one times
    ``params.fit_tolerance``; a pose's score is the share of its points then within the
    tolerance. All the poses' points are looked up in one query a step (in ``QUERY_THREADS``
    threads), and a pose whose points find fewer than 3 neighbours stops where it is.

    Returns:
        (score, rotation (3, 3), translation (3,)) for each pose, in their order, as answers
        give a pose.
    """
    served, size = search.objects[name], search.sizes[name]
    count = len(poses)
    if count == 0:
        return []
    # What the sensor would see of each posed object: its nearest surface in each direction.
    pose_of, seen, _, _ = search.rendered_poses(
        name, poses, served.scale_for(search.units), params.render_points, search.seen
    )
    starts = np.searchsorted(pose_of, np.arange(count + 1))
    seen_points = []
    for k in range(count):
        moving = seen[starts[k] : starts[k + 1]]
        seen_points.append(moving[evenly_spaced(len(moving), params.fit_points)])
    sizes = np.array([len(moving) for moving in seen_points], dtype=np.int64)
    owner = np.repeat(np.arange(count), sizes)  # (P,) which pose each point is of
    moving = np.concatenate(seen_points)
    turns, shifts = np.repeat(np.eye(3)[None], count, axis=0), np.zeros((count, 3))
    active = sizes >= 3
    tolerance = params.fit_tolerance * size
    for reach in np.linspace(params.fit_reach, 1.0, params.fit_steps):
        if not active.any():
            break
        now = np.einsum("pi,pij->pj", moving, turns[owner]) + shifts[owner]
        taking = active[owner]
        distance, nearest = tree.query(
            now[taking], distance_upper_bound=reach * tolerance, workers=QUERY_THREADS
        )
        near = np.isfinite(distance)
        source, target = now[taking][near], tree.data[nearest[near]]
        group = owner[taking][near]
        found = np.bincount(group, minlength=count)
        active &= found >= 3  # as a lone fit stops: too few neighbours to take a step
        step_turns, step_shifts = _kabsch_groups(source, target, group, count)
        turns[active] = turns[active] @ step_turns[active]
        shifts[active] = np.einsum("ki,kij->kj", shifts[active], step_turns[active]) + step_shifts[active]
    now = np.einsum("pi,pij->pj", moving, turns[owner]) + shifts[owner]
    distance, _ = tree.query(now, distance_upper_bound=tolerance, workers=QUERY_THREADS)
    scores = np.bincount(owner, weights=np.isfinite(distance), minlength=count) / np.maximum(sizes, 1)
    out = []
    for k, (rotation, translation) in enumerate(poses):
        if sizes[k] < 3:
            out.append((0.0, rotation, translation))
            continue
        out.append((float(scores[k]), rotation @ turns[k], translation @ turns[k] + shifts[k]))
    return out


def _kabsch_groups(
    source: np.ndarray, target: np.ndarray, group: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``count`` groups of paired points, the rotation (3, 3) and translation (3,)
    that best take its ``source`` onto its ``target`` (row vectors: ``source @ R + t``), least
    squares; identity for a group with no pair."""
    found = np.maximum(np.bincount(group, minlength=count), 1)[:, None]
    source_centre = np.stack([np.bincount(group, source[:, a], count) for a in range(3)], axis=1) / found
    target_centre = np.stack([np.bincount(group, target[:, a], count) for a in range(3)], axis=1) / found
    source_off = source - source_centre[group]
    target_off = target - target_centre[group]
    cross = np.zeros((count, 3, 3))
    for a in range(3):
        for b in range(3):
            cross[:, a, b] = np.bincount(group, source_off[:, a] * target_off[:, b], count)
    u, _, vt = np.linalg.svd(cross)
    flip = np.repeat(np.eye(3)[None], count, axis=0)
    flip[:, 2, 2] = np.sign(np.linalg.det(u @ vt))
    rotation = u @ flip @ vt
    shift = target_centre - np.einsum("ki,kij->kj", source_centre, rotation)
    return rotation, shift


def _distinct(
    fitted: list[tuple[float, np.ndarray, np.ndarray]], search: Any, name: str, params: VoteParams
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """The best scored of ``fitted`` hypotheses of one object that are not the same pose as a
    better one (``params.distinct``), at most ``params.kept``."""
    served = search.objects[name]
    centroid = served.centroid / served.scale_for(search.units)
    reach = params.distinct * search.sizes[name]
    kept: list[tuple[float, np.ndarray, np.ndarray]] = []
    for score, rotation, translation in sorted(fitted, key=lambda item: -item[0]):
        centre = centroid @ rotation + translation
        if all(
            np.linalg.norm(centre - (centroid @ other + moved)) >= reach
            or served.symmetry.distinct(rotation, other, params.distinct_degrees)
            for _, other, moved in kept
        ):
            kept.append((score, rotation, translation))
            if len(kept) == params.kept:
                break
    return kept
