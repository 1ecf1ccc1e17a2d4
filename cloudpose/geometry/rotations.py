"""Rotations as numpy matrices: axis-angle, the geodesic angle, uniform sampling.

Convention (row vectors, as everywhere in cloudpose): an object's canonical points ``X (N, 3)``
are observed as ``observed = X @ R + t``, with ``R (3, 3)`` a proper rotation (det +1) and
``t (3,)`` a translation in the cloud's units. A rotation ``S`` acts on points as ``points @ S``,
so ``S`` is the transpose of the column-vector matrix that scipy's
:class:`~scipy.spatial.transform.Rotation` returns from ``as_matrix()`` for the same turn, and
``S @ R`` applies ``S`` first. Angles are radians unless a name ends in ``_deg``. Stacks of
rotations are ``(..., 3, 3)``.

This is the one numpy module for rotations; the torch side (training losses, sampling on the
GPU) is :mod:`models.geometry`, which follows the same convention.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """The rotation by ``angle`` (right-handed) about ``axis``, for row vectors.

    Args:
        axis: (3,) direction, normalized here.
        angle: radians.

    Returns:
        (3, 3) float64 ``S`` with ``points @ S`` the rotated points.
    """
    axis = np.asarray(axis, np.float64)
    rotation_vector = axis / np.linalg.norm(axis) * angle  # (3,)
    # scipy's matrix is for column vectors; its transpose turns row vectors the same way.
    return Rotation.from_rotvec(rotation_vector).as_matrix().T


def geodesic_deg(rotation_a: np.ndarray, rotation_b: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations in degrees, accurate for tiny angles.

    The angle of ``relative = rotation_aᵀ @ rotation_b`` is ``atan2(sin, cos)`` with
    ``cos = (trace - 1) / 2`` and ``sin`` half the norm of its skew part: ``acos(cos)`` alone
    cannot resolve angles within about 1e-6 degrees of 0 or 180. It is computed from the matrices
    directly rather than through ``Rotation.from_matrix``, which would first replace a matrix that
    is not exactly orthonormal (a network's output, float32 input) by its nearest rotation and so
    change the answer.
    :func:`models.geometry.rotation_error_deg` is the same formula in torch.

    Args:
        rotation_a: (..., 3, 3).
        rotation_b: (..., 3, 3), broadcast against ``rotation_a``.

    Returns:
        (...) float64 in [0, 180].
    """
    relative = np.swapaxes(np.asarray(rotation_a, np.float64), -1, -2) @ np.asarray(rotation_b, np.float64)
    cos = (np.trace(relative, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = np.stack(
        [
            relative[..., 2, 1] - relative[..., 1, 2],
            relative[..., 0, 2] - relative[..., 2, 0],
            relative[..., 1, 0] - relative[..., 0, 1],
        ],
        axis=-1,
    )  # (..., 3)
    return np.rad2deg(np.arctan2(np.linalg.norm(skew, axis=-1) / 2.0, cos))


def random_rotations(rng: np.random.Generator | int | None, count: int | None = None) -> np.ndarray:
    """Rotations uniform on SO(3) (Haar measure), from scipy's normalized Gaussian quaternions.

    A rotation and its transpose are equally likely, so the matrices serve either convention.
    With a generator, one call draws exactly what ``Rotation.random(count, random_state=rng)`` draws.

    Args:
        rng: a numpy generator, or a seed for a fresh one.
        count: how many; None for a single rotation.

    Returns:
        (3, 3) float64 when ``count`` is None, else (count, 3, 3).
    """
    return Rotation.random(count, random_state=rng).as_matrix()
