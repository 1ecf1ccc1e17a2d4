import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.transform import Rotation

from models.geometry import (
    apply_pose,
    invert_pose,
    orthogonality_penalty,
    project_to_so3,
    quaternion_to_matrix,
    random_rotation,
    rotation_error_deg,
)


def haar_angle_cdf(angle: np.ndarray) -> np.ndarray:
    """CDF of the rotation angle of a Haar-uniform rotation: density (1 - cos t) / pi on [0, pi]."""
    return (angle - np.sin(angle)) / math.pi


def rotation_angles(rotation: np.ndarray) -> np.ndarray:
    return np.linalg.norm(Rotation.from_matrix(rotation).as_rotvec(), axis=1)


def test_random_rotation_is_orthonormal_with_unit_determinant() -> None:
    rotation = random_rotation(1000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rotation.shape == (1000, 3, 3)
    identity = torch.eye(3, dtype=torch.float64).expand(1000, 3, 3)
    assert torch.allclose(rotation.transpose(1, 2) @ rotation, identity, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(1000, dtype=torch.float64), atol=1e-12)


def test_random_rotation_angles_follow_the_haar_density() -> None:
    rotation = random_rotation(20_000, torch.Generator().manual_seed(1), dtype=torch.float64).numpy()
    result = stats.kstest(rotation_angles(rotation), haar_angle_cdf)
    assert result.pvalue > 1e-3
    # The axis of a uniform rotation is uniform too: each component of the rotated x axis has mean 0.
    assert np.abs(rotation[:, 0, :].mean(axis=0)).max() < 0.02


def test_the_haar_test_rejects_uniform_euler_angles() -> None:
    rng = np.random.default_rng(2)
    angles = rng.uniform(
        [-math.pi, -math.pi / 2, -math.pi], [math.pi, math.pi / 2, math.pi], size=(20_000, 3)
    )
    euler = Rotation.from_euler("zyx", angles).as_matrix()
    assert stats.kstest(rotation_angles(euler), haar_angle_cdf).pvalue < 1e-6


def test_quaternion_matrix_uses_the_row_vector_convention() -> None:
    quaternion_wxyz = torch.randn(50, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rotation = quaternion_to_matrix(quaternion_wxyz).numpy()
    reference = Rotation.from_quat(quaternion_wxyz[:, [1, 2, 3, 0]].numpy()).as_matrix()
    # scipy rotates column vectors (R v); rows rotate as v^T R^T.
    np.testing.assert_allclose(rotation, reference.transpose(0, 2, 1), atol=1e-12)


def test_invert_pose_brings_posed_points_back() -> None:
    generator = torch.Generator().manual_seed(4)
    points = torch.randn(5, 40, 3, generator=generator, dtype=torch.float64)
    rotation = random_rotation(5, generator, dtype=torch.float64)
    translation = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    observed = apply_pose(points, rotation, translation)
    torch.testing.assert_close(observed[1], points[1] @ rotation[1] + translation[1])
    back_rotation, back_translation = invert_pose(rotation, translation)
    torch.testing.assert_close(apply_pose(observed, back_rotation, back_translation), points)


def test_orthogonality_penalty_is_zero_on_rotations_and_positive_on_skews() -> None:
    rotation = random_rotation(100, torch.Generator().manual_seed(5), dtype=torch.float64)
    assert orthogonality_penalty(rotation).max() < 1e-20
    scaled = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))[None]
    assert orthogonality_penalty(scaled).item() == pytest.approx(9.0)  # (2^2 - 1)^2
    shear = torch.eye(3, dtype=torch.float64)[None].clone()
    shear[0, 0, 1] = 0.3
    assert orthogonality_penalty(shear).item() > 0.1


def test_projection_keeps_rotations_and_fixes_skews_and_reflections() -> None:
    generator = torch.Generator().manual_seed(6)
    rotation = random_rotation(50, generator, dtype=torch.float64)
    torch.testing.assert_close(project_to_so3(rotation), rotation)

    noisy = rotation + 0.1 * torch.randn(50, 3, 3, generator=generator, dtype=torch.float64)
    projected = project_to_so3(noisy)
    assert orthogonality_penalty(projected).max() < 1e-20
    assert torch.allclose(torch.linalg.det(projected), torch.ones(50, dtype=torch.float64))
    # Nearest rotation: no random rotation is closer to the noisy matrix than its projection.
    distance = (projected - noisy).flatten(1).norm(dim=1)
    candidates = random_rotation(2000, generator, dtype=torch.float64)
    for index in range(5):
        other = (candidates - noisy[index]).flatten(1).norm(dim=1)
        assert distance[index] <= other.min()

    reflection = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))[None]
    assert torch.linalg.det(project_to_so3(reflection)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("angle_deg", [1e-4, 0.05, 1.0, 90.0, 179.9])
def test_rotation_error_measures_the_geodesic_angle(angle_deg: float) -> None:
    rotation = torch.as_tensor(Rotation.from_euler("z", angle_deg, degrees=True).as_matrix())[None]
    identity = torch.eye(3, dtype=torch.float64)[None]
    assert rotation_error_deg(rotation, identity).item() == pytest.approx(angle_deg, rel=1e-6)
    assert rotation_error_deg(rotation.float(), identity.float()).item() == pytest.approx(angle_deg, rel=2e-3)


def test_nearest_equivalent_picks_the_symmetric_pose_closest_to_the_prediction() -> None:
    from models.geometry import nearest_equivalent

    group = torch.stack([torch.eye(3), torch.diag(torch.tensor([1.0, -1.0, -1.0]))])
    from models.geometry import random_rotation

    gt = random_rotation(5, torch.Generator().manual_seed(3))
    flipped = group[1] @ gt
    chosen = nearest_equivalent(flipped, gt, group)
    torch.testing.assert_close(chosen, flipped)
    torch.testing.assert_close(nearest_equivalent(gt, gt, group), gt)
