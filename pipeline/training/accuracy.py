"""Pose accuracy metrics shared by validation, evaluation and benchmarks."""

from __future__ import annotations

import torch

from models.geometry import invert_pose, rotation_error_deg


def pose_metrics(
    pred_rotation: torch.Tensor,
    pred_translation: torch.Tensor,
    gt_rotation: torch.Tensor,
    gt_translation: torch.Tensor,
    diagonal: float,
) -> dict[str, float]:
    """Summary statistics of pose errors.

    Rotation error is the geodesic angle (degrees). Translation error is that of the back
    transform (the ``translation`` the API returns, ``canonical = observed @ R + t``), as a
    percentage of the object's bounding-box diagonal.

    Args:
        pred_rotation: (B, 3, 3) object rotations, already on SO(3).
        pred_translation: (B, 3) object translations.
        gt_rotation: (B, 3, 3).
        gt_translation: (B, 3).
        diagonal: bounding-box diagonal of the object, in its units.
    """
    rotation_error = rotation_error_deg(pred_rotation, gt_rotation)
    _, pred_back = invert_pose(pred_rotation.double(), pred_translation.double())
    _, gt_back = invert_pose(gt_rotation.double(), gt_translation.double())
    translation_error = (pred_back - gt_back).norm(dim=-1) / diagonal * 100
    quantiles = torch.quantile(rotation_error, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    return {
        "count": int(rotation_error.numel()),
        "rotation_median_deg": float(quantiles[0]),
        "rotation_p90_deg": float(quantiles[1]),
        "rotation_p99_deg": float(quantiles[2]),
        "translation_median_pct": float(translation_error.median()),
        "success_1deg": float((rotation_error < 1).double().mean()),
        "success_5deg": float((rotation_error < 5).double().mean()),
    }
