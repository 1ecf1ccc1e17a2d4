"""Classical registration methods that cloudpose is benchmarked against.

Each method takes an observed cloud and the canonical :class:`~cloudpose.registration.refine.SurfaceModel` and
returns the object pose in the row-vector convention of :mod:`models.geometry`::

    observed = canonical @ object_rotation + object_translation

open3d works with column vectors and 4x4 matrices; the registrations below go from the observed
cloud (source) to the model (target), so their 4x4 ``M`` maps observed points to the canonical
frame and the object pose is ``object_rotation = M[:3, :3]``,
``object_translation = -M[:3, 3] @ M[:3, :3]``.

* :func:`fpfh_ransac_icp`: open3d's global-registration tutorial (voxel downsampling, FPFH
  features, feature-matching RANSAC, point-to-plane ICP), with normals oriented away from the
  centroid in both clouds so that FPFH signatures agree on partial views.
* :func:`pca_icp`: principal axes of the observed cloud matched to the model's in the four proper
  sign combinations, each refined by ICP, the best by fitness kept.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from cloudpose.registration.refine import SurfaceModel, back_matrix, object_pose, principal_axes

registration = o3d.pipelines.registration

# Fractions of the object's bounding-box diagonal, and multiples of the voxel, as in the tutorial.
FPFH_VOXEL = 0.02
NORMAL_RADIUS = 2.0
FEATURE_RADIUS = 5.0
FEATURE_MAX_NN = 100
RANSAC_DISTANCE = 1.5
RANSAC_ITERATIONS = 100_000
RANSAC_CONFIDENCE = 0.999
ICP_DISTANCE = 0.4
PCA_ICP_SCHEDULE = (0.10, 0.04, 0.01)
PCA_ICP_ITERATIONS = 30
# PCA+ICP registers against the model downsampled to this voxel (fraction of the diagonal).
PCA_TARGET_VOXEL = 0.01


@dataclass(frozen=True)
class _Features:
    """A voxel-downsampled cloud with outward-oriented normals and its FPFH features."""

    cloud: o3d.geometry.PointCloud
    fpfh: registration.Feature


# Per-model preprocessing, computed once per SurfaceModel and dropped with it.
_MODEL_FEATURES: weakref.WeakKeyDictionary[SurfaceModel, _Features] = weakref.WeakKeyDictionary()
_MODEL_TARGETS: weakref.WeakKeyDictionary[SurfaceModel, o3d.geometry.PointCloud] = weakref.WeakKeyDictionary()


def _as_cloud(points: np.ndarray) -> o3d.geometry.PointCloud:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[np.isfinite(points).all(axis=1)]))


def orient_away_from_centroid(cloud: o3d.geometry.PointCloud) -> None:
    """Flip each normal of ``cloud`` (in place) that points towards the cloud's centroid."""
    points = np.asarray(cloud.points)
    normals = np.asarray(cloud.normals)
    inward = ((points - points.mean(axis=0)) * normals).sum(axis=1) < 0
    normals[inward] *= -1.0
    cloud.normals = o3d.utility.Vector3dVector(normals)


def _features(cloud: o3d.geometry.PointCloud, voxel: float) -> _Features:
    """Downsample, estimate and orient normals, compute FPFH (open3d's tutorial parameters)."""
    down = cloud.voxel_down_sample(voxel)
    down.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=NORMAL_RADIUS * voxel, max_nn=30))
    orient_away_from_centroid(down)
    fpfh = registration.compute_fpfh_feature(
        down, o3d.geometry.KDTreeSearchParamHybrid(radius=FEATURE_RADIUS * voxel, max_nn=FEATURE_MAX_NN)
    )
    return _Features(down, fpfh)


def model_features(model: SurfaceModel) -> tuple[o3d.geometry.PointCloud, registration.Feature]:
    """The model's downsampled cloud and FPFH features, computed on first use and cached."""
    cached = _MODEL_FEATURES.get(model)
    if cached is None:
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(model.points))
        cached = _features(cloud, FPFH_VOXEL * model.diagonal)
        _MODEL_FEATURES[model] = cached
    return cached.cloud, cached.fpfh


def _pca_target(model: SurfaceModel) -> o3d.geometry.PointCloud:
    """The model cloud (with its normals) downsampled for PCA+ICP, cached."""
    cached = _MODEL_TARGETS.get(model)
    if cached is None:
        cached = model.cloud.voxel_down_sample(PCA_TARGET_VOXEL * model.diagonal)
        cached.normalize_normals()
        _MODEL_TARGETS[model] = cached
    return cached


def fpfh_ransac_icp(
    observed: np.ndarray, model: SurfaceModel, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Global registration by FPFH features and RANSAC, refined by point-to-plane ICP.

    Follows open3d's global-registration tutorial: voxel = 2% of the diagonal; normals within
    2 voxels (oriented away from the centroid, in both clouds); FPFH within 5 voxels (100
    neighbours); RANSAC on feature matches without the mutual filter, inlier distance 1.5 voxels,
    edge-length (0.9) and distance checkers, 100,000 iterations at confidence 0.999; then
    point-to-plane ICP of the full observed cloud against the model within 0.4 voxels.

    Args:
        observed: (N, 3) cloud.
        model: canonical surface (its downsampled features are cached on first use).
        seed: seeds open3d's random generator (RANSAC runs in parallel threads, so results are
            exactly reproducible only with one thread).

    Returns:
        ``(object_rotation (3, 3), object_translation (3,))``.
    """
    voxel = FPFH_VOXEL * model.diagonal
    target, target_fpfh = model_features(model)
    full = _as_cloud(observed)
    source = _features(full, voxel)
    o3d.utility.random.seed(int(seed))
    distance = RANSAC_DISTANCE * voxel
    coarse = registration.registration_ransac_based_on_feature_matching(
        source.cloud,
        target,
        source.fpfh,
        target_fpfh,
        False,
        distance,
        registration.TransformationEstimationPointToPoint(False),
        3,
        [
            registration.CorrespondenceCheckerBasedOnEdgeLength(0.9),
            registration.CorrespondenceCheckerBasedOnDistance(distance),
        ],
        registration.RANSACConvergenceCriteria(RANSAC_ITERATIONS, RANSAC_CONFIDENCE),
    )
    fine = registration.registration_icp(
        full,
        model.cloud,
        ICP_DISTANCE * voxel,
        coarse.transformation,
        registration.TransformationEstimationPointToPlane(),
    )
    return object_pose(fine.transformation)


def pca_icp(observed: np.ndarray, model: SurfaceModel, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Principal-axes alignment in the four proper sign combinations, each refined by ICP.

    The observed cloud's centroid and covariance eigenvectors are matched to the model's (the
    signs of eigenvectors are arbitrary, so the four sign flips with determinant +1 are tried);
    each start is refined by point-to-plane ICP of the voxel-downsampled cloud (2% of the
    diagonal) against the model downsampled to 1% of the diagonal, with a shrinking
    correspondence distance (10%, 4%, 1% of the diagonal), and the start with the highest final
    fitness wins.

    Args:
        observed: (N, 3) cloud.
        model: canonical surface.
        seed: unused (the method is deterministic); kept so all baselines share one signature.

    Returns:
        ``(object_rotation (3, 3), object_translation (3,))``.
    """
    del seed
    full = _as_cloud(observed)
    points = np.asarray(full.points)
    source = full.voxel_down_sample(FPFH_VOXEL * model.diagonal)
    observed_centroid, observed_axes = principal_axes(points)
    model_centroid, model_axes = principal_axes(model.points)
    target = _pca_target(model)
    best: tuple[float, float, np.ndarray] | None = None
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        # Model axis i maps onto signs[i] * observed axis i: model_axes @ R = S @ observed_axes.
        rotation = model_axes.T @ (np.asarray(signs, dtype=np.float64)[:, None] * observed_axes)
        if np.linalg.det(rotation) < 0:  # eigenvector frames of opposite handedness
            rotation = model_axes.T @ (-np.asarray(signs, dtype=np.float64)[:, None] * observed_axes)
        translation = observed_centroid - model_centroid @ rotation
        matrix = back_matrix(rotation, translation)
        result = None
        for fraction in PCA_ICP_SCHEDULE:
            result = registration.registration_icp(
                source,
                target,
                fraction * model.diagonal,
                matrix,
                registration.TransformationEstimationPointToPlane(),
                registration.ICPConvergenceCriteria(max_iteration=PCA_ICP_ITERATIONS),
            )
            matrix = result.transformation
        assert result is not None
        key = (result.fitness, -result.inlier_rmse)
        if best is None or key > best[:2]:
            best = (result.fitness, -result.inlier_rmse, np.asarray(matrix))
    assert best is not None
    return object_pose(best[2])
