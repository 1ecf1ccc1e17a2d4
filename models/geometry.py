"""Rigid-pose geometry shared by every cloudpose model, stated once.

Convention (row vectors, as in the exam): a cloud is an (N, 3) array of points, one point a row.
An object with canonical cloud ``X`` (surface centroid at the origin, the mesh's own units) seen
in pose ``(R, t)`` gives the observed cloud::

    observed = X @ R + t            # R: (3, 3) rotation, t: (3,) translation

The transform that brings an observed cloud back to the canonical frame is the inverse pose::

    canonical = observed @ R.T + (-t @ R.T)

Networks regress the object pose ``(R, t)``: for copies of one template it is a linear function
of the flattened cloud, so a fully connected layer can represent it exactly. The back transform
the exam asks for follows in closed form (:func:`invert_pose`).

All functions take batched tensors; shapes are given per argument.
"""

from __future__ import annotations

import torch


def quaternion_to_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """Rotation matrices for the row-vector convention from unit quaternions.

    Args:
        quaternion: (B, 4) as (w, x, y, z); normalized here.

    Returns:
        (B, 3, 3) rotation ``R`` such that ``points @ R`` rotates the points by the quaternion.
    """
    w, x, y, z = torch.nn.functional.normalize(quaternion, dim=-1).unbind(-1)
    # Column-vector matrix M; the row-vector convention uses its transpose.
    column = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quaternion.shape[:-1] + (3, 3))
    return column.transpose(-1, -2)


def random_rotation(
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rotations drawn uniformly (Haar measure) on SO(3).

    A normalized 4D Gaussian is uniform on the unit quaternion sphere, which double-covers
    SO(3) uniformly; uniform Euler angles would not be.

    Returns:
        (B, 3, 3) rotation matrices.
    """
    quaternion = torch.randn(batch, 4, generator=generator, device=device, dtype=torch.float64)
    return quaternion_to_matrix(quaternion).to(dtype)


def apply_pose(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Pose a batch of clouds: ``points @ rotation + translation``.

    Args:
        points: (B, N, 3).
        rotation: (B, 3, 3).
        translation: (B, 3).

    Returns:
        (B, N, 3).
    """
    return points @ rotation + translation[:, None, :]


def invert_pose(rotation: torch.Tensor, translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``x -> x @ R + t``: ``x -> x @ R.T - t @ R.T``.

    Args:
        rotation: (B, 3, 3), orthogonal.
        translation: (B, 3).

    Returns:
        ``(R.T, -t @ R.T)`` with shapes (B, 3, 3) and (B, 3).
    """
    inverse_rotation = rotation.transpose(-1, -2)
    return inverse_rotation, -(translation[:, None, :] @ inverse_rotation)[:, 0, :]


def orthogonality_penalty(matrix: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm ``||M^T M - I||^2`` per matrix (exam 8.4); zero exactly on O(3).

    Args:
        matrix: (B, 3, 3), raw network output.

    Returns:
        (B,).
    """
    identity = torch.eye(3, device=matrix.device, dtype=matrix.dtype)
    gram = matrix.transpose(-1, -2) @ matrix
    return ((gram - identity) ** 2).sum(dim=(-1, -2))


def project_to_so3(matrix: torch.Tensor) -> torch.Tensor:
    """Nearest rotation in Frobenius norm (SVD, with the sign fixed so that det = +1).

    Args:
        matrix: (B, 3, 3).

    Returns:
        (B, 3, 3) rotations.
    """
    u, _, vh = torch.linalg.svd(matrix.double())
    det = torch.linalg.det(u @ vh)
    flip = torch.ones_like(u[..., 0, :])
    flip[..., -1] = det
    return ((u * flip[..., None, :]) @ vh).to(matrix.dtype)


def rotation_error_deg(pred_rotation: torch.Tensor, gt_rotation: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between rotations, in degrees, accurate down to 1e-6 degrees.

    ``acos((trace - 1) / 2)`` loses all precision near zero in float32, so the angle is taken
    as ``atan2(sin, cos)`` of the relative rotation, in float64.

    Args:
        pred_rotation: (B, 3, 3).
        gt_rotation: (B, 3, 3).

    Returns:
        (B,) float64 angles in [0, 180].
    """
    relative = pred_rotation.double().transpose(-1, -2) @ gt_rotation.double()
    cos = (relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack(
        [
            relative[..., 2, 1] - relative[..., 1, 2],
            relative[..., 0, 2] - relative[..., 2, 0],
            relative[..., 1, 0] - relative[..., 0, 1],
        ],
        dim=-1,
    )
    sin = skew.norm(dim=-1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def nearest_equivalent(
    pred_rotation: torch.Tensor, gt_rotation: torch.Tensor, group: torch.Tensor
) -> torch.Tensor:
    """The ground-truth rotation's equivalent under an object's symmetries nearest the prediction.

    A symmetry S maps the canonical object onto itself (``X @ S ≈ X``), so ``S @ R`` poses it as
    well as ``R`` does; training and validation of a symmetric object score the nearest one.

    Args:
        pred_rotation: (B, 3, 3) predicted object rotations.
        gt_rotation: (B, 3, 3) true object rotations.
        group: (K, 3, 3) symmetries (row-vector convention), identity included.

    Returns:
        (B, 3, 3): ``S_k @ gt`` with the k nearest ``pred`` in Frobenius norm.
    """
    candidates = group.unsqueeze(0) @ gt_rotation.unsqueeze(1)  # (B, K, 3, 3)
    distance = ((candidates - pred_rotation.unsqueeze(1)) ** 2).sum(dim=(-2, -1))  # (B, K)
    best = distance.argmin(dim=1)
    return candidates[torch.arange(len(best), device=best.device), best]
