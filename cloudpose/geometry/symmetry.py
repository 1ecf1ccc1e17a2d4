"""Rotational symmetries of an object, and pose errors that respect them.

Rotations follow :mod:`cloudpose.geometry.rotations` (row vectors, ``observed = X @ R + t``, a
rotation ``S`` acts as ``X @ S``). An object's canonical points ``X (N, 3)`` are centred at the
area-weighted surface centroid. A proper rotation ``S (3, 3)`` is a symmetry of the object when
``X @ S`` is the same surface as ``X``; then ``S @ R`` explains the same observation as ``R`` (with
the same ``t``), so a predicted rotation is judged against the nearest of the equivalent ground
truths ``S @ R_gt``. Symmetry axes pass through the centroid, so every ``S`` is linear in the
canonical frame.

A :class:`Symmetry` holds a finite set of rotations (a group, identity first) and optionally the
axis of a continuous rotational symmetry; with an axis the group is every rotation about that axis
composed with the finite set, which then holds the identity and the half-turns that flip the axis
(a cylinder has one, a cone none). No torch: the service reads these from object packages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cloudpose.geometry.rotations import axis_rotation, geodesic_deg

ORTHONORMAL_ATOL = 1e-6
KINDS = ("none", "discrete", "continuous")


def _skew(vector: np.ndarray) -> np.ndarray:
    """(3, 3) matrix ``K`` with ``K @ v == np.cross(vector, v)``."""
    x, y, z = vector
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


@dataclass(frozen=True, eq=False)
class Symmetry:
    """The proper rotational symmetries of an object, in its canonical frame.

    Equality is identity (``eq=False``): comparing arrays field by field has no single truth value.
    The arrays are read-only copies, so a frozen symmetry stays what was validated.

    Attributes:
        rotations: (K, 3, 3) float64 symmetries ``S`` (``X @ S`` is the same surface as ``X``); a
            group, identity first (moved there on construction when it is elsewhere).
        axis: (3,) unit axis of a continuous rotational symmetry, or None. With it, the group is
            every rotation about ``axis`` composed with ``rotations``, and each rotation maps
            ``axis`` to ``±axis``.
        tolerance: fraction of the object's diagonal within which the symmetries were found.

    Raises:
        ValueError: on construction, listing every problem: shapes, rotations that are not
            orthonormal within 1e-6 or are reflections, no identity, duplicates, a finite set that
            is not closed under products, an axis that is not a unit vector or that a rotation
            does not map to ±itself, a tolerance that is not positive.
    """

    rotations: np.ndarray
    axis: np.ndarray | None = None
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        rotations = np.asarray(self.rotations, np.float64)
        axis = None if self.axis is None else np.asarray(self.axis, np.float64)
        problems = _problems(rotations, axis, self.tolerance)
        if problems:
            raise ValueError("invalid symmetry: " + "; ".join(problems))
        identity_index = int(np.argmin(np.abs(rotations - np.eye(3)).max(axis=(1, 2))))
        order = [identity_index] + [k for k in range(len(rotations)) if k != identity_index]
        rotations = rotations[order]  # a copy, so freezing it leaves the caller's array alone
        rotations.setflags(write=False)
        if axis is not None:
            axis = axis.copy()
            axis.setflags(write=False)
        object.__setattr__(self, "rotations", rotations)
        object.__setattr__(self, "axis", axis)
        object.__setattr__(self, "tolerance", float(self.tolerance))

    @property
    def kind(self) -> Literal["none", "discrete", "continuous"]:
        """``continuous`` with an axis, ``discrete`` with more than the identity, else ``none``."""
        if self.axis is not None:
            return "continuous"
        return "discrete" if len(self.rotations) > 1 else "none"

    @property
    def order(self) -> int | None:
        """Number of rotations K for ``none``/``discrete``; None for ``continuous`` (infinite)."""
        return None if self.axis is not None else len(self.rotations)

    @classmethod
    def identity(cls) -> Symmetry:
        """An object without symmetry: only the identity."""
        return cls(rotations=np.eye(3)[None])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: kind, order, rotations (K nested 3x3 lists), axis or None, tolerance."""
        return {
            "kind": self.kind,
            "order": self.order,
            "rotations": self.rotations.tolist(),
            "axis": None if self.axis is None else self.axis.tolist(),
            "tolerance": self.tolerance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Symmetry:
        """Rebuild and validate what :meth:`to_dict` wrote.

        ``kind`` and ``order`` are optional; when given they must match the rotations and axis.

        Raises:
            ValueError: with every problem found (see the class docstring), or a missing or
                non-numeric field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"invalid symmetry: expected a mapping, got {type(data).__name__}")
        if "rotations" not in data:
            raise ValueError("invalid symmetry: missing 'rotations'")
        try:
            rotations = np.asarray(data["rotations"], np.float64)
            axis = None if data.get("axis") is None else np.asarray(data["axis"], np.float64)
            tolerance = float(data.get("tolerance", 0.01))
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid symmetry: fields must be numeric arrays ({error})") from error
        symmetry = cls(rotations=rotations, axis=axis, tolerance=tolerance)
        problems = []
        if "kind" in data and data["kind"] != symmetry.kind:
            problems.append(
                f"kind {data['kind']!r} does not match the rotations and axis ({symmetry.kind!r})"
            )
        if "order" in data and data["order"] != symmetry.order:
            problems.append(
                f"order {data['order']!r} does not match the rotations and axis ({symmetry.order!r})"
            )
        if problems:
            raise ValueError("invalid symmetry: " + "; ".join(problems))
        return symmetry

    def nearest_equivalent(self, pred_rotation: np.ndarray, gt_rotation: np.ndarray) -> np.ndarray:
        """The rotation equivalent to ``gt_rotation`` that is nearest to ``pred_rotation``.

        Searches ``S_theta @ D @ gt_rotation`` over the finite rotations ``D`` and, with an axis,
        every angle ``theta`` about it. The best angle has a closed form: with
        ``M = D @ gt_rotation @ pred_rotation.T`` and ``S_theta = cos I - sin K + (1 - cos) a aᵀ``,
        ``trace(S_theta M) = alpha cos + beta sin + aᵀ M a`` (``alpha = trace M - aᵀ M a``,
        ``beta = -trace(K M)``), largest at ``theta = atan2(beta, alpha)``; the largest trace is the
        smallest geodesic angle.

        Args:
            pred_rotation: (3, 3) predicted object rotation.
            gt_rotation: (3, 3) ground-truth object rotation.

        Returns:
            (3, 3) float64.
        """
        pred_rotation, gt_rotation = _as_rotation(pred_rotation), _as_rotation(gt_rotation)
        candidates = self.rotations @ gt_rotation  # (K, 3, 3)
        if self.axis is None:
            # trace(predᵀ Q) is the elementwise product summed; the largest is the nearest Q.
            return candidates[int(np.argmax(np.einsum("kij,ij->k", candidates, pred_rotation)))]
        axis = self.axis
        products = candidates @ pred_rotation.T  # (K, 3, 3): M for each finite rotation
        along = np.einsum("i,kij,j->k", axis, products, axis)
        alpha = np.trace(products, axis1=1, axis2=2) - along
        beta = -np.einsum("ij,kji->k", _skew(axis), products)
        best = int(np.argmax(np.hypot(alpha, beta) + along))
        return axis_rotation(axis, float(np.arctan2(beta[best], alpha[best]))) @ candidates[best]

    def error_deg(self, pred_rotation: np.ndarray, gt_rotation: np.ndarray) -> float:
        """Geodesic angle in degrees from ``pred_rotation`` to the nearest equivalent of ``gt_rotation``."""
        nearest = self.nearest_equivalent(pred_rotation, gt_rotation)
        return float(geodesic_deg(_as_rotation(pred_rotation), nearest))

    def distinct(self, rotation_a: np.ndarray, rotation_b: np.ndarray, degrees: float) -> bool:
        """Whether two object rotations are more than ``degrees`` apart once symmetry is allowed for.

        The error is symmetric in its arguments because the equivalents form a group.
        """
        return self.error_deg(rotation_a, rotation_b) > degrees


def _as_rotation(rotation: np.ndarray) -> np.ndarray:
    rotation = np.asarray(rotation, np.float64)
    if rotation.shape != (3, 3):
        raise ValueError(f"expected a (3, 3) rotation, got shape {rotation.shape}")
    return rotation


def _problems(rotations: np.ndarray, axis: np.ndarray | None, tolerance: float) -> list[str]:
    """Everything wrong with a would-be symmetry, as messages (empty when valid)."""
    problems: list[str] = []
    try:
        tolerance_ok = bool(np.isfinite(tolerance) and tolerance > 0)
    except TypeError:
        tolerance_ok = False
    if not tolerance_ok:
        problems.append(f"tolerance must be a positive number, got {tolerance!r}")
    if axis is not None:
        if axis.shape != (3,) or not np.isfinite(axis).all():
            problems.append(f"axis must be 3 finite numbers, got shape {axis.shape}")
            axis = None
        elif abs(np.linalg.norm(axis) - 1.0) > ORTHONORMAL_ATOL:
            problems.append(f"axis must be a unit vector, its norm is {np.linalg.norm(axis):.6g}")
            axis = None
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3) or len(rotations) == 0:
        problems.append(f"rotations must have shape (K, 3, 3) with K >= 1, got {rotations.shape}")
        return problems
    if not np.isfinite(rotations).all():
        problems.append("rotations must be finite")
        return problems
    gram_error = np.abs(np.swapaxes(rotations, 1, 2) @ rotations - np.eye(3)).max(axis=(1, 2))  # (K,)
    determinants = np.linalg.det(rotations)
    for index in np.flatnonzero(gram_error > ORTHONORMAL_ATOL):
        problems.append(f"rotations[{index}] is not orthonormal (max |RᵀR - I| = {gram_error[index]:.2g})")
    for index in np.flatnonzero((gram_error <= ORTHONORMAL_ATOL) & (determinants < 0)):
        problems.append(
            f"rotations[{index}] is a reflection (det {determinants[index]:+.6f}), not a rotation"
        )
    if (gram_error > ORTHONORMAL_ATOL).any() or (determinants < 0).any():
        return problems  # the group checks below would only repeat the same fault
    if not (np.abs(rotations - np.eye(3)).max(axis=(1, 2)) <= ORTHONORMAL_ATOL).any():
        problems.append("rotations must contain the identity")
    # Products of stored rotations carry rounding of a few ORTHONORMAL_ATOL at most.
    match_atol = 10 * ORTHONORMAL_ATOL
    for index in range(len(rotations)):
        gaps = np.abs(rotations[index + 1 :] - rotations[index]).max(axis=(1, 2))
        for other in np.flatnonzero(gaps <= match_atol):
            problems.append(f"rotations[{index}] and rotations[{index + 1 + other}] are the same rotation")
    if axis is not None:
        mapped = axis @ rotations  # (K, 3): where each rotation sends the axis
        flips = np.minimum(np.abs(mapped - axis).max(axis=1), np.abs(mapped + axis).max(axis=1))
        for index in np.flatnonzero(flips > match_atol):
            problems.append(f"rotations[{index}] does not map the axis to ±axis")
        # Modulo the rotations about the axis, the finite set only needs the identity (present)
        # and, when some rotation flips the axis, any one flip: it is closed automatically.
        return problems
    for index in range(len(rotations)):
        products = rotations[index] @ rotations  # (K, 3, 3)
        gaps = np.abs(products[:, None] - rotations[None]).max(axis=(2, 3))  # (K, K)
        missing = np.flatnonzero(gaps.min(axis=1) > match_atol)
        if len(missing):
            problems.append(
                f"rotations are not closed under products: rotations[{index}] @ rotations[{missing[0]}]"
                " is not listed"
            )
            break  # one missing product says enough
    return problems
