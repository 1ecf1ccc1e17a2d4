import json

import numpy as np
import pytest

from cloudpose.geometry.rotations import axis_rotation, geodesic_deg, random_rotations
from cloudpose.geometry.symmetry import Symmetry


def _closure(generators: list[np.ndarray]) -> np.ndarray:
    group = [np.eye(3)]
    for element in group:
        for generator in generators:
            product = element @ generator
            if not any(np.abs(product - member).max() < 1e-9 for member in group):
                group.append(product)
    return np.array(group)


def _box_group() -> Symmetry:
    return Symmetry(
        rotations=np.array(
            [np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]
        )
    )


def _cube_group() -> Symmetry:
    quarter_z = axis_rotation(np.array([0.0, 0, 1]), np.pi / 2)
    quarter_x = axis_rotation(np.array([1.0, 0, 0]), np.pi / 2)
    return Symmetry(rotations=_closure([quarter_z, quarter_x]))


def _tilted_cylinder_group(rng: np.random.Generator, flips: bool = True) -> Symmetry:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    perpendicular = np.cross(axis, rng.standard_normal(3))
    perpendicular /= np.linalg.norm(perpendicular)
    rotations = [np.eye(3), axis_rotation(perpendicular, np.pi)] if flips else [np.eye(3)]
    return Symmetry(rotations=np.array(rotations), axis=axis)


def test_kind_and_order_follow_the_rotations_and_axis() -> None:
    assert (Symmetry.identity().kind, Symmetry.identity().order) == ("none", 1)
    assert (_box_group().kind, _box_group().order) == ("discrete", 4)
    assert (_cube_group().kind, _cube_group().order) == ("discrete", 24)
    continuous = _tilted_cylinder_group(np.random.default_rng(0))
    assert (continuous.kind, continuous.order) == ("continuous", None)


@pytest.mark.parametrize(
    "make",
    [Symmetry.identity, _box_group, _cube_group, lambda: _tilted_cylinder_group(np.random.default_rng(1))],
)
def test_to_dict_survives_json_and_from_dict(make) -> None:
    symmetry = make()
    data = json.loads(json.dumps(symmetry.to_dict()))
    assert set(data) == {"kind", "order", "rotations", "axis", "tolerance"}
    assert (data["kind"], data["order"]) == (symmetry.kind, symmetry.order)
    restored = Symmetry.from_dict(data)
    np.testing.assert_array_equal(restored.rotations, symmetry.rotations)
    assert (restored.axis is None) == (symmetry.axis is None)
    if symmetry.axis is not None:
        np.testing.assert_array_equal(restored.axis, symmetry.axis)
    assert restored.tolerance == symmetry.tolerance
    assert restored.kind == symmetry.kind and restored.order == symmetry.order


def test_the_identity_is_moved_first() -> None:
    shuffled = _box_group().rotations[[2, 0, 3, 1]]
    symmetry = Symmetry(rotations=shuffled)
    np.testing.assert_array_equal(symmetry.rotations[0], np.eye(3))
    assert len(symmetry.rotations) == 4
    assert shuffled[0, 0, 0] == -1.0  # the caller's array is left as it was
    with pytest.raises(ValueError, match="read-only"):
        symmetry.rotations[0, 0, 0] = 2.0


def _box_dict(**changes) -> dict:
    data = _box_group().to_dict()
    data.update(changes)
    return data


REFLECTION = np.diag([1.0, 1.0, -1.0])
QUARTER_Z = axis_rotation(np.array([0.0, 0, 1]), np.pi / 2)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"axis": None}, "missing 'rotations'"),
        ({"rotations": [[1, 0, 0], [0, 1, 0]]}, r"shape \(K, 3, 3\)"),
        ({"rotations": []}, r"shape \(K, 3, 3\)"),
        ({"rotations": [[["a", 0, 0], [0, 1, 0], [0, 0, 1]]]}, "fields must be numeric arrays"),
        (
            {"rotations": [np.eye(3).tolist(), (np.eye(3) * 1.01).tolist()]},
            r"rotations\[1\] is not orthonormal",
        ),
        ({"rotations": [np.eye(3).tolist(), REFLECTION.tolist()]}, r"rotations\[1\] is a reflection"),
        ({"rotations": [np.diag([1.0, -1, -1]).tolist()]}, "must contain the identity"),
        ({"rotations": [np.eye(3).tolist(), np.eye(3).tolist()]}, "are the same rotation"),
        ({"rotations": [np.eye(3).tolist(), QUARTER_Z.tolist()]}, "not closed under products"),
        (_box_dict(axis=[0.0, 0.0, 2.0]), "unit vector"),
        (_box_dict(axis=[0.0, 0.0]), "axis must be 3 finite numbers"),
        (
            {"rotations": [np.eye(3).tolist(), QUARTER_Z.tolist()], "axis": [1.0, 0, 0]},
            r"rotations\[1\] does not map",
        ),
        (_box_dict(tolerance=-0.01), "tolerance must be a positive number"),
        (_box_dict(kind="continuous"), "kind 'continuous' does not match"),
        (_box_dict(order=8), "order 8 does not match"),
    ],
)
def test_from_dict_rejects_bad_symmetries_with_a_clear_message(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Symmetry.from_dict(data)


def test_from_dict_rejects_a_non_mapping_and_lists_every_problem_at_once() -> None:
    with pytest.raises(ValueError, match="expected a mapping"):
        Symmetry.from_dict([np.eye(3).tolist()])
    with pytest.raises(ValueError) as raised:
        Symmetry.from_dict({"rotations": [np.eye(3).tolist(), REFLECTION.tolist()], "tolerance": 0.0})
    assert "reflection" in str(raised.value) and "tolerance" in str(raised.value)


def test_a_cylinder_axis_with_a_quarter_turn_about_it_is_valid() -> None:
    # Rotations about the axis are already part of the continuous group; they are redundant, not wrong.
    symmetry = Symmetry(rotations=np.array([np.eye(3), QUARTER_Z]), axis=np.array([0.0, 0, 1]))
    assert symmetry.kind == "continuous"


def test_nearest_equivalent_is_the_best_discrete_element() -> None:
    rng = np.random.default_rng(2)
    for symmetry in (_box_group(), _cube_group()):
        for _ in range(20):
            pred, gt = random_rotations(rng), random_rotations(rng)
            equivalents = symmetry.rotations @ gt  # (K, 3, 3)
            errors = geodesic_deg(pred, equivalents)
            nearest = symmetry.nearest_equivalent(pred, gt)
            np.testing.assert_allclose(nearest, equivalents[np.argmin(errors)], atol=1e-12)
            assert symmetry.error_deg(pred, gt) == pytest.approx(errors.min(), abs=1e-9)


def _spins(axis: np.ndarray, thetas: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations about ``axis`` by each angle, built independently of ``axis_rotation``."""
    cos, sin = np.cos(thetas)[:, None, None], np.sin(thetas)[:, None, None]
    x, y, z = axis
    # Row vectors: the transpose of the column-vector cross-product matrix.
    cross_t = np.array([[0.0, z, -y], [-z, 0.0, x], [y, -x, 0.0]])
    return cos * np.eye(3) + sin * cross_t + (1.0 - cos) * np.outer(axis, axis)


def _grid_error_deg(pred: np.ndarray, gt: np.ndarray, symmetry: Symmetry, step_deg: float) -> float:
    """Brute force: every finite element, every angle on a 1° grid, then a fine grid around the best."""
    best = np.inf
    for flip in symmetry.rotations:
        coarse = np.deg2rad(np.arange(0.0, 360.0, 1.0))
        errors = geodesic_deg(pred, _spins(symmetry.axis, coarse) @ flip @ gt)
        # The error is unimodal in the angle (the trace is a cos + b sin + c), so one window suffices.
        centre = coarse[int(np.argmin(errors))]
        fine = centre + np.deg2rad(np.arange(-1.0, 1.0 + step_deg, step_deg))
        best = min(best, float(geodesic_deg(pred, _spins(symmetry.axis, fine) @ flip @ gt).min()))
    return best


def test_nearest_equivalent_of_a_continuous_group_beats_a_fine_angle_grid() -> None:
    rng = np.random.default_rng(3)
    step_deg = 0.001
    for flips in (True, False):
        symmetry = _tilted_cylinder_group(rng, flips=flips)
        for _ in range(5):
            pred, gt = random_rotations(rng), random_rotations(rng)
            brute = _grid_error_deg(pred, gt, symmetry, step_deg)
            nearest = symmetry.nearest_equivalent(pred, gt)
            error = symmetry.error_deg(pred, gt)
            # The closed form is optimal: never worse than the grid, at most half a step better.
            assert brute - step_deg / 2 - 1e-9 <= error <= brute + 1e-9
            assert error == pytest.approx(float(geodesic_deg(pred, nearest)), abs=1e-12)
            # The answer is one of the equivalents: a rotation about the axis of some D @ gt.
            assert np.linalg.det(nearest) == pytest.approx(1.0)
            relative = [nearest @ (flip @ gt).T for flip in symmetry.rotations]
            assert min(np.abs(symmetry.axis @ r - symmetry.axis).max() for r in relative) < 1e-9


def test_equivalent_rotations_have_zero_error_and_tiny_errors_are_resolved() -> None:
    rng = np.random.default_rng(4)
    cube = _cube_group()
    cylinder = _tilted_cylinder_group(rng)
    for _ in range(10):
        gt = random_rotations(rng)
        for element in cube.rotations:
            assert cube.error_deg(element @ gt, gt) < 1e-9
            assert not cube.distinct(element @ gt, gt, degrees=1e-6)
        for flip in cylinder.rotations:
            spun = axis_rotation(cylinder.axis, rng.uniform(0, 2 * np.pi)) @ flip @ gt
            assert cylinder.error_deg(spun, gt) < 1e-9
        # A 0.01° turn about an axis perpendicular to the symmetry axis cannot be undone by symmetry.
        tilted = axis_rotation(np.cross(cylinder.axis, rng.standard_normal(3)), np.deg2rad(0.01)) @ gt
        assert cylinder.error_deg(tilted, gt) == pytest.approx(0.01, abs=1e-7)
        assert cube.error_deg(tilted, gt) == pytest.approx(0.01, abs=1e-7)


def test_a_pure_axis_group_error_is_the_angle_between_the_mapped_axes() -> None:
    rng = np.random.default_rng(5)
    symmetry = _tilted_cylinder_group(rng, flips=False)
    for _ in range(20):
        pred, gt = random_rotations(rng), random_rotations(rng)
        # Row vectors: the canonical axis a is observed along a @ R.
        cos = np.clip((symmetry.axis @ pred) @ (symmetry.axis @ gt), -1.0, 1.0)
        assert symmetry.error_deg(pred, gt) == pytest.approx(np.degrees(np.arccos(cos)), abs=1e-6)


def test_distinct_compares_the_error_after_symmetry_with_the_threshold() -> None:
    box = _box_group()
    gt = np.eye(3)
    turned = axis_rotation(np.array([0.0, 0, 1]), np.deg2rad(175.0))  # 5° from the z half-turn
    assert box.error_deg(turned, gt) == pytest.approx(5.0)
    assert Symmetry.identity().error_deg(turned, gt) == pytest.approx(175.0)
    assert box.distinct(turned, gt, degrees=4.0) and not box.distinct(turned, gt, degrees=6.0)
    assert box.distinct(gt, turned, degrees=4.0) and not box.distinct(gt, turned, degrees=6.0)


def test_rotations_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected a \(3, 3\) rotation"):
        _box_group().error_deg(np.eye(4), np.eye(3))
