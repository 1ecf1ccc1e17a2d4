import mpmath
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from cloudpose.geometry.rotations import axis_rotation, geodesic_deg, random_rotations


def _rodrigues_row(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation for row vectors by Rodrigues' formula, independent of scipy."""
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    x, y, z = axis
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])  # cross @ v == axis × v
    # Row vectors: the transpose of the column-vector matrix, so the skew part changes sign.
    return np.cos(angle) * np.eye(3) - np.sin(angle) * cross + (1.0 - np.cos(angle)) * np.outer(axis, axis)


def _reference_deg(rotation_a: np.ndarray, rotation_b: np.ndarray) -> float:
    """The geodesic angle of the float64 matrices as given, in 50-digit arithmetic."""
    with mpmath.workdps(50):
        a = mpmath.matrix(rotation_a.tolist())
        b = mpmath.matrix(rotation_b.tolist())
        relative = a.T * b
        cos = (relative[0, 0] + relative[1, 1] + relative[2, 2] - 1) / 2
        skew = [
            relative[2, 1] - relative[1, 2],
            relative[0, 2] - relative[2, 0],
            relative[1, 0] - relative[0, 1],
        ]
        sin = mpmath.sqrt(sum(value**2 for value in skew)) / 2
        return float(mpmath.degrees(mpmath.atan2(sin, cos)))


def test_axis_rotation_turns_row_vectors_right_handed_about_the_axis() -> None:
    quarter = axis_rotation(np.array([0.0, 0.0, 2.0]), np.pi / 2)
    np.testing.assert_allclose(np.array([1.0, 0, 0]) @ quarter, [0, 1, 0], atol=1e-15)
    np.testing.assert_allclose(np.array([0.0, 0, 1]) @ quarter, [0, 0, 1], atol=1e-15)
    assert np.linalg.det(quarter) == pytest.approx(1.0)
    assert geodesic_deg(quarter, np.eye(3)) == pytest.approx(90.0)


def test_axis_rotation_equals_rodrigues_for_row_vectors() -> None:
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.uniform(-2 * np.pi, 2 * np.pi, 200), [0.0, np.pi, -np.pi, 1e-9, 1e-300]])
    for angle in angles:
        axis = rng.normal(size=3) * rng.uniform(0.1, 10.0)
        rotation = axis_rotation(axis, angle)
        np.testing.assert_allclose(rotation, _rodrigues_row(axis, angle), rtol=0, atol=1e-12)
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), rtol=0, atol=1e-12)
        # The axis is fixed by the turn, as a row vector.
        np.testing.assert_allclose(axis @ rotation, axis, rtol=0, atol=1e-12 * np.linalg.norm(axis))


def test_axis_rotation_is_scipys_column_matrix_transposed() -> None:
    axis, angle = np.array([0.3, -0.5, 0.8]), 1.2
    column = Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix()
    points = np.random.default_rng(1).normal(size=(10, 3))
    np.testing.assert_allclose(points @ axis_rotation(axis, angle), (column @ points.T).T, atol=1e-12)


@pytest.mark.parametrize(
    "angle_deg", [1e-7, 1e-5, 1e-3, 0.1, 1.0, 45.0, 90.0, 179.0, 179.99999, 180.0 - 1e-7]
)
def test_geodesic_is_accurate_for_every_angle_against_high_precision(angle_deg: float) -> None:
    rng = np.random.default_rng(2)
    start = random_rotations(rng)
    turn = axis_rotation(rng.normal(size=3), np.deg2rad(angle_deg))
    turned = turn @ start
    reference = _reference_deg(start, turned)
    assert geodesic_deg(start, turned) == pytest.approx(reference, rel=0, abs=1e-9)
    # The matrices round the turn to float64, so the angle they hold is the intended one to ~1e-13°.
    assert reference == pytest.approx(angle_deg, rel=0, abs=1e-11)
    assert geodesic_deg(turned, start) == pytest.approx(reference, rel=0, abs=1e-9)


def test_acos_alone_would_lose_tiny_angles() -> None:
    # Why geodesic_deg takes atan2(sin, cos): at 1e-7 degrees the cosine rounds to 1.
    turn = axis_rotation(np.array([0.0, 0.0, 1.0]), np.deg2rad(1e-7))
    cos = (np.trace(turn) - 1.0) / 2.0
    assert np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) == 0.0
    assert geodesic_deg(turn, np.eye(3)) == pytest.approx(1e-7, rel=1e-6)


def test_geodesic_broadcasts_over_leading_dimensions() -> None:
    rng = np.random.default_rng(3)
    rotations_a = random_rotations(rng, 4)[:, None]  # (4, 1, 3, 3)
    rotations_b = random_rotations(rng, 5)  # (5, 3, 3)
    angles = geodesic_deg(rotations_a, rotations_b)
    assert angles.shape == (4, 5) and angles.dtype == np.float64
    for i in range(4):
        for j in range(5):
            assert angles[i, j] == pytest.approx(_reference_deg(rotations_a[i, 0], rotations_b[j]), abs=1e-9)
    assert geodesic_deg(np.eye(3), np.diag([1.0, -1.0, -1.0])) == pytest.approx(180.0, abs=1e-12)
    assert geodesic_deg(rotations_b, rotations_b) == pytest.approx(np.zeros(5), abs=1e-12)


def test_random_rotations_are_proper_reproducible_and_scipys_draws() -> None:
    single = random_rotations(np.random.default_rng(4))
    assert single.shape == (3, 3)
    many = random_rotations(np.random.default_rng(4), 100)
    assert many.shape == (100, 3, 3)
    np.testing.assert_allclose(
        np.swapaxes(many, 1, 2) @ many, np.broadcast_to(np.eye(3), many.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(many), 1.0, atol=1e-12)
    np.testing.assert_array_equal(random_rotations(7, 3), random_rotations(7, 3))
    expected = Rotation.random(100, random_state=np.random.default_rng(4)).as_matrix()
    np.testing.assert_array_equal(many, expected)


def test_random_rotation_angles_follow_the_haar_density() -> None:
    # Uniform on SO(3), the angle has density (1 - cos θ) / π, so CDF (θ - sin θ) / π on [0, π].
    angles = np.deg2rad(geodesic_deg(random_rotations(np.random.default_rng(5), 20_000), np.eye(3)))
    result = stats.kstest(angles, lambda theta: (theta - np.sin(theta)) / np.pi)
    assert result.pvalue > 1e-3
