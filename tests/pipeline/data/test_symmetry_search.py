from pathlib import Path

import numpy as np
import pytest
import trimesh

from cloudpose.geometry.rotations import axis_rotation
from cloudpose.geometry.rotations import geodesic_deg as rotation_error_deg
from pipeline.data.mesh import Mesh, load_mesh
from pipeline.data.symmetry_search import add_s_percent, find_symmetry, object_diameter

# Row vectors: the file holds canonical @ TILT, so the canonical x/y/z axes are observed as rows of TILT.
TILT = axis_rotation(np.array([0.3, -0.8, 0.5]), 1.1) @ axis_rotation(np.array([0.9, 0.2, 0.1]), -0.7)


def _mesh(tmp_path: Path, shape: trimesh.Trimesh, name: str, tilt: np.ndarray | None = None) -> Mesh:
    shape = shape.copy()
    if tilt is not None:
        transform = np.eye(4)
        transform[:3, :3] = tilt.T  # trimesh applies column vectors: v' = tiltᵀ v, i.e. v' = v @ tilt
        shape.apply_transform(transform)
    path = tmp_path / f"{name}.ply"
    shape.export(path)
    return load_mesh(path)


def _axes(rotations: np.ndarray) -> np.ndarray:
    """(K, 3) unit axes of non-identity rotations: the null direction of S - I."""
    return np.array([np.linalg.svd(rotation - np.eye(3))[2][-1] for rotation in rotations])


def _angle_between_axes_deg(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(first @ second), 0.0, 1.0))))


def _maps_vertices_onto_themselves(mesh: Mesh, rotation: np.ndarray, atol: float) -> bool:
    moved = mesh.vertices @ rotation
    gaps = np.linalg.norm(moved[:, None, :] - mesh.vertices[None, :, :], axis=-1).min(axis=1)
    return bool(gaps.max() < atol)


@pytest.fixture(scope="module")
def box_mesh(tmp_path_factory: pytest.TempPathFactory) -> Mesh:
    return _mesh(tmp_path_factory.mktemp("box"), trimesh.creation.box(extents=(1.0, 2.0, 3.0)), "box")


def test_a_box_with_distinct_sides_has_the_three_half_turns(box_mesh: Mesh) -> None:
    symmetry = find_symmetry(box_mesh)
    assert symmetry.kind == "discrete" and symmetry.order == 4
    np.testing.assert_array_equal(symmetry.rotations[0], np.eye(3))
    for diagonal in ([1.0, -1, -1], [-1.0, 1, -1], [-1.0, -1, 1]):
        assert np.abs(symmetry.rotations - np.diag(diagonal)).max(axis=(1, 2)).min() < 1e-6
    assert symmetry.tolerance == 0.01


def test_a_cube_has_24_rotations(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path, trimesh.creation.box(extents=(1.0, 1.0, 1.0)), "cube")
    symmetry = find_symmetry(mesh)
    assert symmetry.order == 24
    assert all(_maps_vertices_onto_themselves(mesh, rotation, 1e-5) for rotation in symmetry.rotations)


def test_a_tilted_box_has_half_turns_about_its_own_axes(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path, trimesh.creation.box(extents=(1.0, 2.0, 3.0)), "tilted_box", tilt=TILT)
    symmetry = find_symmetry(mesh)
    assert symmetry.order == 4
    found = _axes(symmetry.rotations[1:])
    for true_axis in TILT:  # rows: the box's x, y and z as observed in the file
        assert min(_angle_between_axes_deg(axis, true_axis) for axis in found) < 1e-4
    # The convention: X @ S is the same surface, here even the same corners.
    assert all(_maps_vertices_onto_themselves(mesh, rotation, 1e-5) for rotation in symmetry.rotations)
    for rotation in symmetry.rotations[1:]:
        assert rotation_error_deg(rotation, np.eye(3)) == pytest.approx(180.0, abs=1e-6)


def test_a_noisy_tilted_box_gets_an_exactly_closed_group_near_its_axes(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0)).subdivide().subdivide().subdivide()
    box.vertices = box.vertices + np.random.default_rng(3).normal(scale=0.005, size=box.vertices.shape)
    symmetry = find_symmetry(_mesh(tmp_path, box, "noisy_box", tilt=TILT))
    # The half-turns found one by one are not exactly consistent; the group must still be closed.
    assert symmetry.order == 4
    products = np.einsum("iab,jbc->ijac", symmetry.rotations, symmetry.rotations)
    gaps = np.abs(products[:, :, None] - symmetry.rotations[None, None]).max(axis=(3, 4)).min(axis=2)
    assert gaps.max() < 1e-9
    found = _axes(symmetry.rotations[1:])
    for true_axis in TILT:
        assert min(_angle_between_axes_deg(axis, true_axis) for axis in found) < 0.2


def test_a_tilted_cylinder_has_a_continuous_axis_and_perpendicular_half_turns(tmp_path: Path) -> None:
    shape = trimesh.creation.cylinder(radius=0.5, height=2.0, sections=32)
    mesh = _mesh(tmp_path, shape, "cylinder", tilt=TILT)
    symmetry = find_symmetry(mesh)
    assert symmetry.kind == "continuous" and symmetry.order is None
    true_axis = np.array([0.0, 0.0, 1.0]) @ TILT
    assert _angle_between_axes_deg(symmetry.axis, true_axis) < 1.0
    assert len(symmetry.rotations) == 2
    flip = symmetry.rotations[1]
    np.testing.assert_allclose(symmetry.axis @ flip, -symmetry.axis, atol=1e-9)
    assert rotation_error_deg(flip, np.eye(3)) == pytest.approx(180.0, abs=1e-6)


def test_a_hexagonal_prism_has_the_12_rotations_of_d6(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path, trimesh.creation.cylinder(radius=1.0, height=0.6, sections=6), "hex_prism")
    symmetry = find_symmetry(mesh)
    assert symmetry.kind == "discrete" and symmetry.order == 12
    angles = np.sort(rotation_error_deg(symmetry.rotations, np.eye(3)))
    # Identity, ±60°, ±120°, 180° about the prism axis and six perpendicular half-turns.
    np.testing.assert_allclose(angles, [0, 60, 60, 120, 120] + [180] * 7, atol=1e-6)
    sixfold = symmetry.rotations[np.argmin(np.abs(rotation_error_deg(symmetry.rotations, np.eye(3)) - 60))]
    assert _angle_between_axes_deg(_axes(sixfold[None])[0], np.array([0.0, 0, 1])) < 1e-4


def test_an_l_bracket_has_no_symmetry(tmp_path: Path) -> None:
    long_arm = trimesh.creation.box(extents=(4.0, 1.0, 1.0))
    long_arm.apply_translation((1.5, 0.0, 0.0))
    short_arm = trimesh.creation.box(extents=(1.0, 2.5, 1.0))
    short_arm.apply_translation((0.0, 1.75, 0.0))
    mesh = _mesh(tmp_path, trimesh.util.concatenate([long_arm, short_arm]), "bracket", tilt=TILT)
    symmetry = find_symmetry(mesh)
    assert symmetry.kind == "none" and symmetry.order == 1 and symmetry.axis is None


def test_a_randomly_deformed_sphere_has_no_symmetry(tmp_path: Path) -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    radii = 1.0 + 0.08 * np.random.default_rng(5).standard_normal((len(sphere.vertices), 1))
    sphere.vertices = sphere.vertices * radii
    assert find_symmetry(_mesh(tmp_path, sphere, "lumpy")).kind == "none"


def test_find_symmetry_refuses_a_non_positive_tolerance(box_mesh: Mesh) -> None:
    with pytest.raises(ValueError, match="tolerance must be a positive"):
        find_symmetry(box_mesh, tolerance=0.0)


def test_add_s_is_zero_for_the_true_and_symmetric_poses_and_positive_for_a_wrong_one(box_mesh: Mesh) -> None:
    corners = box_mesh.vertices  # (8, 3): a point set with the box's symmetry
    diameter = object_diameter(corners)
    gt_rotation = axis_rotation(np.array([0.2, 0.9, -0.4]), 2.0)
    gt_translation = np.array([0.3, -1.0, 5.0])
    assert add_s_percent(corners, gt_rotation, gt_translation, gt_rotation, gt_translation, diameter) == 0.0
    for symmetry_rotation in find_symmetry(box_mesh).rotations[1:]:
        equivalent = symmetry_rotation @ gt_rotation
        assert rotation_error_deg(equivalent, gt_rotation) == pytest.approx(180.0, abs=1e-6)
        error = add_s_percent(corners, equivalent, gt_translation, gt_rotation, gt_translation, diameter)
        assert error < 1e-5
    wrong = axis_rotation(np.array([1.0, 1.0, 0.0]), np.deg2rad(30.0)) @ gt_rotation
    assert add_s_percent(corners, wrong, gt_translation, gt_rotation, gt_translation, diameter) > 5.0
    shifted = gt_translation + np.array([0.0, 0.0, 0.1])
    shift_error = add_s_percent(corners, gt_rotation, shifted, gt_rotation, gt_translation, diameter)
    assert shift_error == pytest.approx(0.1 / diameter * 100.0)


def test_add_s_averages_over_the_ground_truth_points() -> None:
    rng = np.random.default_rng(6)
    points = rng.standard_normal((50, 3)) * (1.0, 2.0, 0.5)
    pred_rotation, gt_rotation = (
        axis_rotation(rng.standard_normal(3), 0.4),
        axis_rotation(rng.standard_normal(3), 1.3),
    )
    pred_translation, gt_translation = rng.standard_normal(3), rng.standard_normal(3)
    pred_points = points @ pred_rotation + pred_translation
    gt_points = points @ gt_rotation + gt_translation
    gaps = np.linalg.norm(gt_points[:, None, :] - pred_points[None, :, :], axis=-1)  # (gt, pred)
    expected = gaps.min(axis=1).mean() / 3.0 * 100.0
    assert not np.isclose(expected, gaps.min(axis=0).mean() / 3.0 * 100.0)  # the direction matters here
    error = add_s_percent(points, pred_rotation, pred_translation, gt_rotation, gt_translation, 3.0)
    assert error == pytest.approx(expected, rel=1e-12)


def test_object_diameter_is_exact() -> None:
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0)).vertices
    assert object_diameter(cube) == pytest.approx(np.sqrt(3.0), abs=1e-12)
    rng = np.random.default_rng(7)
    inside = rng.uniform(-0.5, 0.5, size=(500, 3))
    assert object_diameter(np.concatenate([inside, cube])) == pytest.approx(np.sqrt(3.0), abs=1e-12)
    cloud = rng.standard_normal((300, 3))
    brute = np.linalg.norm(cloud[:, None] - cloud[None], axis=-1).max()
    assert object_diameter(cloud) == pytest.approx(brute, abs=1e-12)
    # Flat and collinear sets, which an ordinary hull rejects.
    square = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0.5, 0.5, 0]])
    assert object_diameter(square) == pytest.approx(np.sqrt(2.0), abs=1e-9)
    assert object_diameter(np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]])) == pytest.approx(
        np.sqrt(12.0), abs=1e-9
    )
