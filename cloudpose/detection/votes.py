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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import open3d as o3d
from scipy.spatial import cKDTree

from cloudpose.estimation.ppf import PPFModel
from cloudpose.estimation.served import ServedObject


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
        hypotheses: clusters kept per object, most votes first.
        min_votes_share: a cluster with fewer votes than this share of the object's best
            cluster is not a hypothesis.
        crop: frame points within this distance of a hypothesis' posed surface are what its
            pose is refined and verified on.
    """

    reference_stride: int = 4
    max_references: int = 800
    normal_radius_steps: float = 2.0
    normal_neighbours: int = 60
    max_normal_points: int = 60_000
    hypotheses: int = 10
    min_votes_share: float = 0.15
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
    voxel grid, with normals turned towards the sensor.

    Args:
        points: (N, 3) the frame's points off its support planes, frame units.
        sensor: (3,) where the sensor was.
        step: the voxel side (frame units): the finest of the objects' table steps.
        params: the knobs.
    """

    def __init__(
        self, points: np.ndarray, sensor: np.ndarray, step: float, params: VoteParams = VOTE_PARAMS
    ) -> None:
        self.params = params
        points = np.asarray(points, np.float64)
        points = points[:: max(1, len(points) // params.max_normal_points)]
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
        # Normals of the sensor's own sampling (fine: edges and thin walls keep theirs), turned
        # towards the sensor, then averaged per voxel.
        cloud.estimate_normals(
            o3d.geometry.KDTreeSearchParamHybrid(params.normal_radius_steps * step, params.normal_neighbours)
        )
        cloud.orient_normals_towards_camera_location(np.asarray(sensor, np.float64))
        down = cloud.voxel_down_sample(step)
        normals = np.asarray(down.normals)
        length = np.linalg.norm(normals, axis=1)
        keep = length > 0.3  # a voxel whose normals cancel out (an edge seen from both sides) says nothing
        self.points = np.asarray(down.points)[keep]  # (V, 3)
        self.normals = normals[keep] / length[keep, None]  # (V, 3)
        wanted = min(params.max_references, max(1, len(self.points) // params.reference_stride))
        count = len(self.points)
        self.references = (
            np.unique(np.linspace(0, count - 1, wanted).round().astype(np.int64))
            if count
            else np.zeros(0, np.int64)
        )

    def hypotheses(self, served: ServedObject, scale: float) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """The object's pose hypotheses in this frame, most votes first: (rotation (3, 3),
        translation (3,) frame units, votes), as answers give a pose.

        Args:
            served: the object.
            scale: the frame's units in object units.
        """
        if len(self.references) == 0:
            return []
        model = ppf_model(served)
        clusters = model.frame_hypotheses(
            self.points * scale, self.normals, self.references, self.params.hypotheses
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
) -> None:
    """Every object's hypotheses in the frame, each refined and verified on the frame points
    near its posed surface, strongest first; the found ones become the search's detections.

    Args:
        search: the frame's search (:class:`cloudpose.detection.detect._FrameSearch`).
        on_plane: (N,) whether each frame point lies on a support plane.
        out_of_time: whether the frame's budget ran out (checked before each hypothesis).
        params: the knobs.
    """
    detection_params = search.params
    off = np.flatnonzero(~on_plane)
    if len(off) < detection_params.min_segment_points or not search.objects:
        return
    scales = {name: served.scale_for(search.units) for name, served in search.objects.items()}
    step = min(ppf_model(served).step / scales[name] for name, served in search.objects.items())
    frame = FrameVotes(search.points[off], search.sensor, step, params)
    tree = cKDTree(search.points[off])
    queue = []
    for name, served in search.objects.items():
        for rank, (rotation, translation, votes) in enumerate(frame.hypotheses(served, scales[name])):
            queue.append((rank, -votes, name, rotation, translation))
    queue.sort(key=lambda item: item[:2])
    for _, _, name, rotation, translation in queue:
        if out_of_time():
            break
        served, size = search.objects[name], search.sizes[name]
        surface = served.estimator.surface
        sample = (surface.points[:: max(1, len(surface.points) // 400)] + served.centroid) / scales[name]
        posed = sample @ rotation + translation
        near = tree.query_ball_point(posed, params.crop * size, return_sorted=False)
        members = np.unique(np.concatenate([np.asarray(item, dtype=np.int64) for item in near]))
        members = search.unexplained(off[members])
        if len(members) < detection_params.min_segment_points:
            continue
        search.pose_from(members, name, (rotation, translation))
