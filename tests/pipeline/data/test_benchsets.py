import numpy as np
import open3d as o3d
import pytest

from pipeline.data.benchsets import (
    NOISE_SIGMA,
    OUTLIER_FRACTION,
    SET_NAMES,
    Case,
    make_set,
    random_pose,
)
from pipeline.data.mesh import Mesh, load_mesh
from pipeline.data.views import visible_fraction


@pytest.fixture(scope="module")
def bunny() -> Mesh:
    return load_mesh()


@pytest.fixture(scope="module")
def distance_to(bunny: Mesh):
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(bunny.vertices.astype(np.float32)), o3d.core.Tensor(bunny.faces.astype(np.uint32))
    )
    return lambda points: scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()


def canonical(case: Case) -> np.ndarray:
    """The observed points brought back by the ground-truth pose."""
    return (case.observed - case.object_translation) @ case.object_rotation.T


def check_poses(cases: list[Case], diagonal: float) -> None:
    for case in cases:
        assert case.observed.dtype == np.float64 and case.observed.shape[1] == 3
        np.testing.assert_allclose(case.object_rotation @ case.object_rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(case.object_rotation) == pytest.approx(1.0)
        assert case.object_translation.shape == (3,)
        assert np.abs(case.object_translation).max() <= 0.5 * diagonal


@pytest.mark.parametrize("name, size", [("shuffled", 1024), ("small", 100)])
def test_clean_sets_are_posed_surface_samples(bunny: Mesh, distance_to, name: str, size: int) -> None:
    cases = make_set(name, bunny, count=4, seed=0)
    check_poses(cases, bunny.diagonal)
    for case in cases:
        assert case.observed.shape == (size, 3)
        assert distance_to(canonical(case)).max() < 1e-5 * bunny.diagonal  # the pose maps the sample
    # Fresh samples: no two clouds share their canonical points.
    assert not np.allclose(canonical(cases[0]), canonical(cases[1]))


def test_shuffled_points_come_in_no_order(bunny: Mesh) -> None:
    (case,) = make_set("shuffled", bunny, count=1, seed=0)
    points = canonical(case)
    consecutive = np.linalg.norm(np.diff(points, axis=0), axis=1).mean()
    random_pairs = np.linalg.norm(points - points[::-1], axis=1).mean()
    assert consecutive > 0.8 * random_pairs
    for axis in range(3):
        assert abs(np.corrcoef(np.arange(len(points)), points[:, axis])[0, 1]) < 0.1


def test_resampled_sizes_span_the_range(bunny: Mesh, distance_to) -> None:
    cases = make_set("resampled", bunny, count=12, seed=0)
    check_poses(cases, bunny.diagonal)
    sizes = [len(case.observed) for case in cases]
    assert min(sizes) >= 256 and max(sizes) <= 4096
    assert len(set(sizes)) == len(sizes) and max(sizes) - min(sizes) > 1500
    assert distance_to(canonical(cases[0])).max() < 1e-5 * bunny.diagonal


def test_noisy_set_has_the_stated_noise_and_outliers(bunny: Mesh, distance_to) -> None:
    cases = make_set("noisy", bunny, count=4, seed=0)
    check_poses(cases, bunny.diagonal)
    sigma = NOISE_SIGMA * bunny.diagonal
    distances = []
    for case in cases:
        assert case.observed.shape == (1024, 3)
        distances.append(distance_to(canonical(case)))
    distance = np.concatenate(distances)
    far = distance > 4 * sigma
    # Outliers are uniform in a box, so a few land close to the surface and read as inliers.
    assert 0.75 * OUTLIER_FRACTION < far.mean() <= OUTLIER_FRACTION + 0.002
    # Gaussian noise of sigma per axis: its normal component has median |.| = 0.674 sigma.
    assert 0.55 * sigma < np.median(distance[~far]) < 0.8 * sigma
    # Outliers are not all at the end of the cloud.
    for case_distance in distances:
        outliers = np.flatnonzero(case_distance > 4 * sigma)
        assert outliers.min() < 900 and outliers.max() > 124


def test_partial_views_show_30_to_70_percent_of_the_object(bunny: Mesh, distance_to) -> None:
    cases = make_set("partial", bunny, count=4, seed=0)
    check_poses(cases, bunny.diagonal)
    offsets = []
    for case in cases:
        points = canonical(case)
        assert len(points) >= 64
        assert 0.3 <= visible_fraction(points, bunny) <= 0.7
        assert np.max(distance_to(points)) < 1e-4 * bunny.diagonal  # on the surface: no depth noise
        offsets.append(np.linalg.norm(points.mean(axis=0)))
    # The pose is that of the whole object: the view's own centroid is off the object's.
    assert np.mean(offsets) > 0.03 * bunny.diagonal


@pytest.mark.parametrize("name", SET_NAMES)
def test_sets_are_determined_by_the_seed(bunny: Mesh, name: str) -> None:
    first = make_set(name, bunny, count=2, seed=7)
    again = make_set(name, bunny, count=3, seed=7)  # a smaller set is a prefix of a larger one
    other = make_set(name, bunny, count=2, seed=8)
    for a, b in zip(first, again, strict=False):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0].object_rotation, other[0].object_rotation)


def test_rotations_are_uniform_and_translations_in_range(bunny: Mesh) -> None:
    rng = np.random.default_rng(0)
    poses = [random_pose(rng, bunny.diagonal) for _ in range(600)]
    rotations = np.array([r for r, _ in poses])
    translations = np.array([t for _, t in poses])
    assert np.abs(rotations.mean(axis=0)).max() < 0.1  # Haar measure: E[R] = 0
    np.testing.assert_allclose((rotations**2).mean(axis=0), 1 / 3, atol=0.06)
    assert np.abs(translations).max() <= 0.5 * bunny.diagonal
    assert np.abs(translations).max() > 0.45 * bunny.diagonal


def test_unknown_set_is_refused(bunny: Mesh) -> None:
    with pytest.raises(ValueError, match="unknown benchmark set"):
        make_set("tidy", bunny, count=1, seed=0)


def test_noisy_partial_views_carry_depth_noise(bunny: Mesh, distance_to) -> None:
    cases = make_set("partial_noisy", bunny, count=3, seed=0)
    check_poses(cases, bunny.diagonal)
    for case in cases:
        distances = distance_to(canonical(case))
        assert np.median(distances) < 0.01 * bunny.diagonal
        assert np.max(distances) > 1e-3 * bunny.diagonal


def test_a_hollow_part_gets_its_nearest_views_instead_of_an_error(tmp_path) -> None:
    """A pipe tee's inside is never seen from outside: no view shows 30 % of its surface, and its
    partial set takes the views nearest that share rather than failing."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / "make_scene_parts.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True)
    tee = load_mesh(tmp_path / "tee.stl")
    views = make_set("partial", tee, 3, seed=0)
    assert len(views) == 3
    for case in views:
        canonical = (case.observed - case.object_translation) @ case.object_rotation.T
        assert 0.0 < visible_fraction(canonical, tee) < 0.3  # the outside alone
