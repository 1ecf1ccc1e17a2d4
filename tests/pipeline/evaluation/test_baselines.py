"""The classical baselines recover the bunny's pose, in cloudpose's row-vector convention."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
from scipy.spatial.transform import Rotation

from cloudpose.registration.refine import SurfaceModel, sample_surface_with_normals
from pipeline.data.mesh import load_mesh
from pipeline.evaluation import baselines


@pytest.fixture(scope="module")
def mesh():
    return load_mesh()


@pytest.fixture(scope="module")
def model(mesh) -> SurfaceModel:
    surface = sample_surface_with_normals(mesh.vertices, mesh.faces, 20_000, np.random.default_rng(0))
    return SurfaceModel.from_array(surface, mesh.diagonal)


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    relative = a.T @ b
    skew = relative - relative.T
    sin = np.linalg.norm([skew[2, 1], skew[0, 2], skew[1, 0]]) / 2
    return float(np.degrees(np.arctan2(sin, (np.trace(relative) - 1) / 2)))


def posed_bunny(mesh, count: int, seed: int):
    """A shuffled clean cloud of the whole bunny in a random pose, and that pose (row vectors)."""
    rng = np.random.default_rng(seed)
    points = sample_surface_with_normals(mesh.vertices, mesh.faces, count, rng)[:, :3].astype(np.float64)
    rotation = Rotation.random(random_state=rng).as_matrix()
    translation = rng.uniform(-10, 10, 3)
    return points @ rotation + translation, rotation, translation


METHODS = {"fpfh_ransac_icp": baselines.fpfh_ransac_icp, "pca_icp": baselines.pca_icp}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_baselines_recover_the_pose_of_a_full_clean_cloud(mesh, model, name: str) -> None:
    observed, rotation, translation = posed_bunny(mesh, 2000, seed=1)
    estimate_rotation, estimate_translation = METHODS[name](observed, model, 0)
    assert estimate_rotation.shape == (3, 3) and estimate_translation.shape == (3,)
    assert rotation_error_deg(estimate_rotation, rotation) < 2.0
    assert np.linalg.norm(estimate_translation - translation) < 0.02 * mesh.diagonal
    # The answer is an object pose: the canonical surface posed by it lands on the observed cloud.
    np.testing.assert_allclose(
        model.points[:5] @ estimate_rotation + estimate_translation,
        model.points[:5] @ rotation + translation,
        atol=0.05 * mesh.diagonal,
    )


@pytest.mark.parametrize(("name", "count"), [("fpfh_ransac_icp", 700), ("pca_icp", 300), ("pca_icp", 5000)])
def test_baselines_take_clouds_of_other_sizes(mesh, model, name: str, count: int) -> None:
    observed, rotation, _ = posed_bunny(mesh, count, seed=count)
    estimate_rotation, _ = METHODS[name](observed, model, 3)
    assert rotation_error_deg(estimate_rotation, rotation) < 2.0


def test_model_features_are_computed_once(model) -> None:
    cloud, features = baselines.model_features(model)
    again_cloud, again_features = baselines.model_features(model)
    assert cloud is again_cloud and features is again_features
    assert features.num() == len(cloud.points) and features.dimension() == 33
    # The model is downsampled to the tutorial's voxel (2% of the diagonal).
    assert 1000 < len(cloud.points) < len(model)


def test_normals_are_oriented_away_from_the_centroid() -> None:
    rng = np.random.default_rng(2)
    directions = rng.normal(size=(200, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(3.0 * directions + 7.0))
    signs = np.where(rng.random(200) < 0.5, -1.0, 1.0)
    cloud.normals = o3d.utility.Vector3dVector(directions * signs[:, None])
    baselines.orient_away_from_centroid(cloud)
    np.testing.assert_allclose(np.asarray(cloud.normals), directions, atol=1e-12)
