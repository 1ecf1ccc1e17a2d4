"""How a rigid object rests on a plane: its stable poses, most probable first.

The scene generator (``pipeline/data/scenes.py``) puts objects on a table in these poses, and the
detector (``cloudpose/detection/detect.py``) starts its pose search from them when a frame shows a support
plane. Poses follow :mod:`cloudpose.geometry.rotations` (row vectors): canonical points ``X`` rest
as ``X @ rotation + translation`` in the rest frame, whose plane is z = 0 with +z up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cloudpose.geometry.rotations import axis_rotation

if TYPE_CHECKING:
    import trimesh


@dataclass(frozen=True)
class RestingPose:
    """A way an object rests on a plane: the plane is z = 0 of the rest frame, +z up.

    Attributes:
        rotation: (3, 3) and translation: (3,) map canonical points into the rest frame,
            ``X @ rotation + translation``: lowest point at z = 0, bounding circle centred on the
            z axis.
        probability: how likely trimesh finds the object in this pose when dropped.
        radius: bounding circle of the footprint in the plane (mesh units).
        height: extent along the plane normal (mesh units).
    """

    rotation: np.ndarray
    translation: np.ndarray
    probability: float
    radius: float
    height: float


def resting_poses(mesh: trimesh.Trimesh) -> list[RestingPose]:
    """The stable poses of a mesh on a plane (trimesh's ``compute_stable_poses`` about its
    centre of mass, or its centroid when it is not a closed volume), most probable first; a mesh
    without any (a flat one) rests as it is given."""
    import trimesh

    center = mesh.center_mass if mesh.is_volume else mesh.centroid
    try:
        transforms, probabilities = trimesh.poses.compute_stable_poses(mesh, center_mass=center)
    except ImportError:  # a missing dependency (networkx) is not a flat mesh: say so
        raise
    except Exception:  # degenerate hulls (flat meshes) have no stable poses; lie as given
        transforms, probabilities = np.eye(4)[None], np.ones(1)
    if len(transforms) == 0:
        transforms, probabilities = np.eye(4)[None], np.ones(1)
    try:
        hull = np.asarray(mesh.convex_hull.vertices, dtype=np.float64)
    except Exception:
        hull = np.asarray(mesh.vertices, dtype=np.float64)
    poses = []
    for transform, probability in zip(transforms, probabilities, strict=True):
        rotation = np.asarray(transform[:3, :3], dtype=np.float64).T  # trimesh is column-vector
        rested = hull @ rotation + transform[:3, 3]
        low, high = rested.min(axis=0), rested.max(axis=0)
        center_xy = (low[:2] + high[:2]) / 2.0
        offset = np.array([center_xy[0], center_xy[1], low[2]])
        translation = transform[:3, 3] - offset
        radius = float(np.linalg.norm(rested[:, :2] - center_xy, axis=1).max())
        poses.append(RestingPose(rotation, translation, float(probability), radius, float(high[2] - low[2])))
    poses.sort(key=lambda pose: pose.probability, reverse=True)
    return poses


def plane_axes(normal: np.ndarray) -> np.ndarray:
    """(3, 3) rows e1, e2, n: a right-handed frame whose third axis is the plane's unit normal."""
    normal = np.asarray(normal, dtype=np.float64) / np.linalg.norm(normal)
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    e1 = np.cross(helper, normal)
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(normal, e1), normal])


def rest_on(
    pose: RestingPose, axes: np.ndarray, origin: np.ndarray, angle_rad: float
) -> tuple[np.ndarray, np.ndarray]:
    """The pose of an object resting on a plane.

    Args:
        pose: how it rests.
        axes: (3, 3) rows e1, e2, n of the plane (n: up, out of the plane).
        origin: (3,) the point of the plane under its bounding circle's centre.
        angle_rad: its turn about the normal.

    Returns:
        rotation (3, 3) and translation (3,): ``canonical @ rotation + translation`` is the
        object resting there.
    """
    turn = axis_rotation(np.array([0.0, 0.0, 1.0]), angle_rad)  # about the rest frame's normal
    return pose.rotation @ turn @ axes, (pose.translation @ turn) @ axes + origin
