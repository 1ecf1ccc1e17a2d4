"""Unit tests of the service's geometry helpers and of its torch-free imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cloudpose.estimation.inference import Pose, PoseEstimator, project_to_so3, quaternion_xyzw

REPO_ROOT = Path(__file__).resolve().parents[2]


def random_rotations(count: int, seed: int) -> np.ndarray:
    """(count, 3, 3) uniform rotations (normalized Gaussian quaternions)."""
    return Rotation.random(count, random_state=seed).as_matrix()


def assert_rotation(matrix: np.ndarray) -> None:
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(matrix) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# project_to_so3


def test_projection_leaves_rotations_unchanged() -> None:
    rotations = random_rotations(50, seed=1)
    np.testing.assert_allclose(project_to_so3(rotations), rotations, atol=1e-12)


def test_projection_does_not_modify_its_input() -> None:
    matrices = np.random.default_rng(2).normal(size=(4, 3, 3))
    before = matrices.copy()
    project_to_so3(matrices)
    np.testing.assert_array_equal(matrices, before)


def test_projection_of_skewed_matrix_is_the_nearest_rotation() -> None:
    rng = np.random.default_rng(3)
    rotation = random_rotations(1, seed=3)[0]
    skewed = rotation + 0.3 * rng.normal(size=(3, 3))
    (projected,) = project_to_so3(skewed[None])
    assert_rotation(projected)
    best = np.linalg.norm(skewed - projected)
    # No random rotation, nor any small perturbation of the answer, is closer.
    others = np.concatenate([random_rotations(200, seed=4), perturbed(projected, rng, 200)])
    distances = np.linalg.norm(skewed[None] - others, axis=(1, 2))
    assert best <= distances.min() + 1e-12


def perturbed(rotation: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Rotations within a few degrees of ``rotation``."""
    small = Rotation.from_rotvec(rng.normal(scale=0.05, size=(count, 3))).as_matrix()
    return small @ rotation


def test_projection_of_reflection_has_det_plus_one() -> None:
    rng = np.random.default_rng(5)
    rotation = random_rotations(1, seed=5)[0]
    reflection = rotation @ np.diag([1.0, 1.0, -1.0]) + 0.05 * rng.normal(size=(3, 3))
    assert np.linalg.det(reflection) < 0
    (projected,) = project_to_so3(reflection[None])
    assert_rotation(projected)
    best = np.linalg.norm(reflection - projected)
    others = np.concatenate([random_rotations(200, seed=6), perturbed(projected, rng, 200)])
    assert best <= np.linalg.norm(reflection[None] - others, axis=(1, 2)).min() + 1e-12


def test_projection_of_scaled_rotation_batch() -> None:
    rotations = random_rotations(8, seed=7)
    scales = np.linspace(0.5, 2.0, 8)[:, None, None]
    projected = project_to_so3((rotations * scales).astype(np.float32))
    assert projected.shape == (8, 3, 3) and projected.dtype == np.float64
    np.testing.assert_allclose(projected, rotations, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# quaternion_xyzw


def scipy_quaternion(matrix: np.ndarray) -> np.ndarray:
    """scipy's (x, y, z, w) with the sign fixed to w >= 0."""
    quaternion = Rotation.from_matrix(matrix).as_quat()
    return -quaternion if quaternion[3] < 0 else quaternion


def near_half_turns(count: int, seed: int) -> np.ndarray:
    """Rotations by 180 degrees, and just under and over it, about random axes."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(count, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.pi + rng.choice([0.0, -1e-9, 1e-6, -1e-3, 1e-2], size=count)
    return Rotation.from_rotvec(axes * angles[:, None]).as_matrix()


def special_rotations() -> np.ndarray:
    """Identity and half turns about the coordinate axes (each quaternion formula's edge case)."""
    return np.stack(
        [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    )


@pytest.mark.parametrize(
    "matrices",
    [random_rotations(300, seed=8), near_half_turns(100, seed=9), special_rotations()],
    ids=["uniform", "near-180", "axes"],
)
def test_quaternion_matches_scipy(matrices: np.ndarray) -> None:
    for matrix in matrices:
        quaternion = quaternion_xyzw(matrix)
        assert quaternion.shape == (4,)
        assert np.linalg.norm(quaternion) == pytest.approx(1.0, abs=1e-12)
        assert quaternion[3] >= 0
        expected = scipy_quaternion(matrix)
        if expected[3] > 1e-6:
            np.testing.assert_allclose(quaternion, expected, atol=1e-9)
        else:  # a half turn: q and -q both have w = 0
            assert abs(np.dot(quaternion, expected)) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(Rotation.from_quat(quaternion).as_matrix(), matrix, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Pose


def test_pose_matrix_is_the_column_vector_object_pose() -> None:
    rng = np.random.default_rng(10)
    object_rotation = random_rotations(1, seed=10)[0]
    object_translation = rng.normal(size=3)
    canonical = rng.normal(size=(20, 3))
    observed = canonical @ object_rotation + object_translation  # row vectors
    pose = Pose(
        rotation=object_rotation.T,
        translation=-object_translation @ object_rotation.T,
        object_rotation=object_rotation,
        object_translation=object_translation,
    )
    matrix = pose.pose_matrix()
    assert matrix.shape == (4, 4)
    np.testing.assert_array_equal(matrix[3], [0.0, 0.0, 0.0, 1.0])
    homogeneous = np.hstack([canonical, np.ones((20, 1))])
    np.testing.assert_allclose((matrix @ homogeneous.T).T[:, :3], observed, atol=1e-12)
    np.testing.assert_allclose(observed @ pose.rotation + pose.translation, canonical, atol=1e-12)

    answer = pose.to_dict()
    np.testing.assert_allclose(answer["pose_matrix"], matrix)
    np.testing.assert_allclose(
        Rotation.from_quat(answer["quaternion_xyzw"]).as_matrix(), matrix[:3, :3], atol=1e-12
    )
    np.testing.assert_allclose(answer["rotation"], object_rotation.T)
    np.testing.assert_allclose(answer["translation"], pose.translation)


def test_estimate_returns_consistent_back_and_object_poses(exported_model) -> None:
    estimator = PoseEstimator(exported_model.model_path)
    rotations = random_rotations(3, seed=11)
    translations = np.random.default_rng(11).normal(size=(3, 3))
    clouds = [
        estimator.template @ rotation + translation
        for rotation, translation in zip(rotations, translations, strict=True)
    ]
    poses = estimator.estimate(clouds)
    assert len(poses) == 3
    assert estimator.estimate([]) == []
    for pose, rotation, translation in zip(poses, rotations, translations, strict=True):
        np.testing.assert_allclose(pose.rotation, pose.object_rotation.T)
        np.testing.assert_allclose(
            pose.translation, -pose.object_translation @ pose.object_rotation.T, atol=1e-12
        )
        np.testing.assert_allclose(pose.object_rotation, rotation, atol=1e-3)
        np.testing.assert_allclose(pose.object_translation, translation, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# No torch in the service


def test_service_never_imports_torch_or_models(exported_model, tmp_path: Path) -> None:
    """Importing the service and serving one request of each file type pulls in neither torch nor models."""
    script = textwrap.dedent(
        f"""
        import io, sys
        import numpy as np
        import service.app, cloudpose.estimation.inference, cloudpose.io.clouds, cloudpose.settings
        from fastapi.testclient import TestClient

        settings = cloudpose.settings.Settings(model_path={str(exported_model.model_path)!r})
        with TestClient(service.app.create_app(settings)) as client:
            template = np.array(client.get("/v1/model").json()["template"])
            assert client.post("/v1/pose", json={{"points": template.tolist()}}).status_code == 200
            buffer = io.BytesIO()
            np.save(buffer, template)
            for name, data in [("a.npy", buffer.getvalue()), ("a.ply", b"junk"), ("a.pcd", b"junk")]:
                client.post("/v1/pose", files={{"file": (name, data)}})
        leaked = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "models"))
        assert not leaked, leaked
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_service_import_alone_has_no_torch() -> None:
    command = (
        "import service.app, cloudpose.estimation.inference, cloudpose.io.clouds, sys; "
        "assert 'torch' not in sys.modules and 'models' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('torch', 'models'))]"
    )
    result = subprocess.run(
        [sys.executable, "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_stray_points_are_dropped_before_the_network() -> None:
    from cloudpose.estimation.inference import drop_stray_points
    from pipeline.data.mesh import load_mesh, sample_surface

    mesh = load_mesh()
    rng = np.random.default_rng(0)
    surface = sample_surface(mesh, 480, rng)
    low, high = surface.min(axis=0), surface.max(axis=0)
    clutter = rng.uniform(low - 0.5 * (high - low), high + 0.5 * (high - low), size=(32, 3))
    kept = drop_stray_points(np.concatenate([surface, clutter]))
    kept_clutter = sum(any(np.array_equal(point, stray) for stray in clutter) for point in kept)
    assert kept_clutter <= 3  # almost every stray point goes
    assert len(kept) - kept_clutter >= 0.95 * len(surface)  # and almost every surface point stays
    tiny = surface[:20]
    np.testing.assert_array_equal(drop_stray_points(tiny), tiny)  # too few points to judge


def test_spread_rotations_cover_all_rotations() -> None:
    from cloudpose.estimation.inference import SPREAD_ROTATIONS
    from cloudpose.geometry.rotations import geodesic_deg as rotation_error_deg

    identity = np.broadcast_to(np.eye(3), SPREAD_ROTATIONS.shape)
    np.testing.assert_allclose(SPREAD_ROTATIONS @ SPREAD_ROTATIONS.transpose(0, 2, 1), identity, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(SPREAD_ROTATIONS), 1.0)
    probes = Rotation.random(2000, random_state=0).as_matrix()
    nearest = rotation_error_deg(probes[:, None], SPREAD_ROTATIONS[None]).min(axis=1)  # (2000,)
    # 120 spread rotations leave no rotation much farther than 43 degrees; 120 random ones do.
    assert nearest.max() < 45.0
    random_set = Rotation.random(len(SPREAD_ROTATIONS), random_state=1).as_matrix()
    assert rotation_error_deg(probes[:, None], random_set[None]).min(axis=1).max() > 50.0


def test_spread_starts_place_the_object_around_the_cloud() -> None:
    from cloudpose.estimation.inference import SPREAD_ROTATIONS, VIEW_OFFSET, spread_starts

    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(500, 3)) * [3.0, 2.0, 0.2] + [10.0, -4.0, 1.0]  # thinnest along z
    starts = spread_starts(cloud, diagonal=20.0)
    assert len(starts) == 3 * len(SPREAD_ROTATIONS)
    centers = np.unique(np.round([center for _, center in starts], 9), axis=0)
    assert len(centers) == 3
    offsets = np.sort(np.abs(centers - cloud.mean(axis=0))[:, 2])
    np.testing.assert_allclose(offsets, [0.0, VIEW_OFFSET * 20.0, VIEW_OFFSET * 20.0], atol=0.05)
