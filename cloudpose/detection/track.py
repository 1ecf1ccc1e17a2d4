"""Tracking: the instances of a frame found again from their poses in the frame before.

A camera on a robot arm, or a part on a moving table, sends frames a few tens of milliseconds
apart, and an instance moves little between two of them. Where :func:`cloudpose.detection.detect.detect` cuts
the whole frame into proposals and searches each, :func:`track` looks only near where each instance
was: the frame's points that lie within ``TrackingParams.motion_fraction`` of the object's diagonal of its
posed surface in the frame before (support planes aside), posed from that pose, and verified against the
frame exactly as a detection is (the points must cover enough of its facing surface, and the sensor
must not have seen through it). An instance that moved farther, left the view or was hidden is
*lost*: the answer says so, and the client finds it again with ``/v1/detect``.

Poses follow ``/v1/pose``'s convention both ways: a previous pose is given as an answer gives it
(``canonical = points @ rotation + translation``, frame units), and every tracked one comes back so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloudpose.detection.detect import (
    MIN_SEGMENT_POINTS,
    VOXEL_FRACTION,
    Detection,
    _clusters,
    _explained,
    _members,
    _posed_surface,
    _split,
    open_frame,
    voxel_labels,
)
from cloudpose.estimation.inference import SearchPlan
from cloudpose.estimation.served import ObjectPose, ServedObject
from cloudpose.io.clouds import CloudError


@dataclass(frozen=True)
class TrackingParams:
    """How far tracking looks for an instance (shares of the object's diagonal).

    Attributes:
        motion_fraction: an instance moves at most this share of its diagonal between two frames.
        segment_share: of the segments near the previous pose, those with at least this share of
            their points near it are the instance's (a touching neighbour's reaches in only partly).
        whole_share: a segment with less than this share near it holds a neighbour too, and is
            cut finer.
        max_previous: the most previous poses a frame may follow.
    """

    motion_fraction: float = 0.15
    segment_share: float = 0.5
    whole_share: float = 0.9
    max_previous: int = 64


TRACKING_PARAMS = TrackingParams()
MOTION_FRACTION = TRACKING_PARAMS.motion_fraction
MAX_PREVIOUS = TRACKING_PARAMS.max_previous
# A tracked pose starts from the previous one alone (no wide rounds, no polishing: it is near).
TRACK_PLAN = SearchPlan(wide=0, polish=False)


@dataclass(frozen=True)
class PreviousPose:
    """One instance as the frame before showed it.

    Attributes:
        object: the object's name.
        rotation: (3, 3) and translation: (3,), the answer's back transform
            (``canonical = points @ rotation + translation``), frame units.
    """

    object: str
    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def parse(cls, items: object, objects: Mapping[str, ServedObject]) -> list[PreviousPose]:
        """Previous poses from a request's ``previous`` list; a 422 with a detail for anything
        else (an unknown object, a matrix that is not a rotation, values that are not finite)."""
        if not isinstance(items, list) or not items:
            raise CloudError(
                422,
                "previous must be a non-empty list of {object, rotation, translation}, as /v1/detect "
                "answers them",
            )
        most = TRACKING_PARAMS.max_previous
        if len(items) > most:
            raise CloudError(422, f"previous holds {len(items)} poses; at most {most} a frame")
        poses = []
        for index, item in enumerate(items):
            where = f"previous[{index}]"
            if not isinstance(item, dict):
                raise CloudError(422, f"{where} must be an object with object, rotation, translation")
            name = item.get("object")
            if not isinstance(name, str) or name not in objects:
                raise CloudError(
                    422, f"{where}.object {name!r} is not among the objects tracked: {sorted(objects)}"
                )
            try:
                rotation = np.asarray(item.get("rotation"), dtype=np.float64)
                translation = np.asarray(item.get("translation"), dtype=np.float64)
            except (TypeError, ValueError):
                raise CloudError(
                    422, f"{where}: rotation must be 3x3 numbers and translation 3 numbers"
                ) from None
            if rotation.shape != (3, 3) or translation.shape != (3,):
                raise CloudError(422, f"{where}: rotation must be 3x3 numbers and translation 3 numbers")
            if not (np.isfinite(rotation).all() and np.isfinite(translation).all()):
                raise CloudError(422, f"{where}: rotation and translation must be finite")
            if np.abs(rotation @ rotation.T - np.eye(3)).max() > 1e-3 or np.linalg.det(rotation) < 0:
                raise CloudError(422, f"{where}.rotation is not a rotation matrix (R R^T = I, det R = +1)")
            poses.append(cls(name, rotation, translation))
        return poses

    def object_pose(self, served: ServedObject, units: str | None) -> ObjectPose:
        """The pose as an answer of ``served``'s (its object rotation and translation)."""
        object_rotation = self.rotation.T
        object_translation = -self.translation @ object_rotation
        return ObjectPose(
            self.rotation,
            self.translation,
            object_rotation,
            object_translation,
            True,
            scale=served.scale_for(units),
        )


@dataclass
class TrackReport:
    """What became of each previous pose, in their order: its detection, or None (lost)."""

    tracks: list[Detection | None]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return sum(item is None for item in self.tracks)

    def answers(self, previous: Sequence[PreviousPose]) -> list[dict]:
        """The tracks as ``/v1/track`` answers them: a detection's fields with ``lost: false``, or
        ``{"lost": true, "object": NAME}``."""
        return [
            {"lost": True, "object": pose.object} if found is None else {"lost": False, **found.to_dict()}
            for pose, found in zip(previous, self.tracks, strict=True)
        ]


def track(
    points: np.ndarray,
    objects: Mapping[str, ServedObject],
    previous: Sequence[PreviousPose],
    units: str | None = "m",
    viewpoint: Sequence[float] | None = None,
    seed: int = 0,
) -> TrackReport:
    """Each previous pose followed into this frame.

    Args:
        points: (N, 3) the frame, sensor frame, in ``units``.
        objects: the served objects, by name (at least those ``previous`` names).
        previous: the instances of the frame before, most trusted first: an instance's points
            are taken by the first pose that explains them.
        units: what the points are in.
        viewpoint: (3,) where the sensor was (the origin for a frame as a depth camera gives it).
        seed: the support-plane search's seed.

    Returns:
        One detection (or None, lost) per previous pose, in their order.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = (time.perf_counter() - started) * 1000 - sum(timings.values())

    points = np.asarray(points, dtype=np.float64)
    used = {item.object: objects[item.object] for item in previous}
    search, on_plane, _ = open_frame(points, used, units, viewpoint, seed, lap)
    free = np.flatnonzero(~on_plane)
    tracks: list[Detection | None] = []
    for item in previous:
        served = used[item.object]
        pose = item.object_pose(served, units)
        near = search.unexplained(
            _near(points, free, served, pose, TRACKING_PARAMS.motion_fraction * search.sizes[item.object])
        )
        detection = None
        if len(near) >= MIN_SEGMENT_POINTS:
            start = (pose.object_rotation, pose.object_translation)
            detection, _ = search.follow(near, item.object, start, TRACK_PLAN)
        tracks.append(detection)
    lap("tracks_ms")
    return TrackReport(tracks, timings)


def _near(
    points: np.ndarray, free: np.ndarray, served: ServedObject, pose: ObjectPose, reach: float
) -> np.ndarray:
    """The indices among ``free`` of the points within ``reach`` of the object's posed surface,
    in the segments (DBSCAN, as detection cuts them) that lie mostly within it."""
    posed, _ = _posed_surface(served, pose)
    centre = posed.mean(axis=0)
    radius = float(np.linalg.norm(posed - centre, axis=1).max()) + reach
    ball = free[np.linalg.norm(points[free] - centre, axis=1) <= radius]  # a cheap cut first
    if len(ball) < MIN_SEGMENT_POINTS:
        return ball[:0]
    close = _explained(points[ball], posed, reach)
    voxel = VOXEL_FRACTION * served.diagonal / pose.scale
    voxels, voxel_of_point = voxel_labels(points[ball], voxel)
    kept = []
    for members in _members(_clusters(voxels, voxel)[voxel_of_point]):
        share = close[members].mean()
        if share < TRACKING_PARAMS.segment_share:
            continue
        if share < TRACKING_PARAMS.whole_share:  # a neighbour touches it: cut finer, as detection does
            parts = [members[part] for part in _split(points[ball[members]], voxel)]
            members = np.concatenate(
                [part for part in parts if close[part].mean() >= TRACKING_PARAMS.segment_share]
                or [members[:0]]
            )
        kept.append(members[close[members]])
    return ball[np.concatenate(kept)] if kept else ball[:0]
