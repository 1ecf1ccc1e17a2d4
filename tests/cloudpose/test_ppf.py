"""Point-pair features: the features are what their definition says, the table holds what it
should, and a posed copy of the model votes its own pose into the top cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cloudpose.estimation.ppf import PPFModel, PPFSettings, _feature, _frame
from cloudpose.store.package import ObjectStore

STORE = Path(__file__).resolve().parents[2] / "data" / "objects"


@pytest.fixture(scope="module")
def bunny() -> tuple[np.ndarray, float]:
    package = ObjectStore(STORE).get("bunny")
    return package.surface(), package.diagonal


@pytest.fixture(scope="module")
def model(bunny) -> PPFModel:
    surface, diagonal = bunny
    return PPFModel(surface[:, :3], surface[:, 3:], diagonal)


def angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0)))


def test_features_equal_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        p1, p2 = rng.normal(size=3), rng.normal(size=3)
        n1, n2 = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 3)))
        d = p2 - p1
        expected = (np.linalg.norm(d), angle(n1, d), angle(n2, d), angle(n1, n2))
        np.testing.assert_allclose(_feature(p1, n1, p2, n2), expected, atol=1e-9)


def test_features_do_not_change_under_a_rigid_motion() -> None:
    rng = np.random.default_rng(1)
    p1, p2 = rng.normal(size=3), rng.normal(size=3)
    n1, n2 = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 3)))
    turn, shift = Rotation.random(random_state=2).as_matrix(), rng.normal(size=3)
    moved = _feature(turn @ p1 + shift, turn @ n1, turn @ p2 + shift, turn @ n2)
    np.testing.assert_allclose(moved, _feature(p1, n1, p2, n2), atol=1e-9)


@pytest.mark.parametrize("normal", [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.3, -0.5, 0.8]])
def test_a_frame_puts_the_point_at_the_origin_and_its_normal_on_x(normal) -> None:
    normal = np.asarray(normal) / np.linalg.norm(normal)
    point = np.array([0.2, -1.0, 3.0])
    rotation, translation = _frame(point, normal)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(rotation @ point + translation, 0.0, atol=1e-12)
    np.testing.assert_allclose(rotation @ normal, [1.0, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("which", ["bucket_cap", "frame_bucket_cap"])
def test_no_feature_bin_holds_more_than_the_cap(model: PPFModel, which: str) -> None:
    cap = getattr(model.settings, which)
    starts, refs, alphas = model.tables[cap]
    sizes = np.diff(starts)
    assert sizes.sum() == len(refs) == len(alphas)
    assert sizes.max() <= cap
    assert 0 <= refs.min() and refs.max() < len(model.points)


def test_the_frame_table_keeps_every_pair_of_the_single_cloud_one_and_more(model: PPFModel) -> None:
    """A bin the single cloud's cap leaves whole, the frame's leaves whole too; a fuller bin keeps
    more of its pairs for a frame's votes."""
    settings = model.settings
    assert settings.frame_bucket_cap > settings.bucket_cap
    small_starts, small_refs, _ = model.tables[settings.bucket_cap]
    large_starts, large_refs, _ = model.tables[settings.frame_bucket_cap]
    small, large = np.diff(small_starts), np.diff(large_starts)
    assert np.all(large >= small)
    whole = (small < settings.bucket_cap) & (small > 0)
    assert np.array_equal(large[whole], small[whole])
    assert (large > small).any()
    for index in np.flatnonzero(whole)[:50]:
        assert np.array_equal(
            np.sort(small_refs[small_starts[index] : small_starts[index + 1]]),
            np.sort(large_refs[large_starts[index] : large_starts[index + 1]]),
        )


def test_the_frame_table_keeps_few_pairs_of_a_flat_surface(bunny) -> None:
    """Pairs whose normals agree and lie square to the line between them (any two points of a
    flat face) keep at most the flat cap in the frame table; other features keep more."""
    surface, diagonal = bunny
    settings = PPFSettings(frame_planar_cap=64)
    model = PPFModel(surface[:, :3], surface[:, 3:], diagonal, settings)
    starts, _, _ = model.tables[settings.frame_bucket_cap]
    sizes = np.diff(starts)
    bins, step = settings.angle_bins, np.pi / settings.angle_bins
    rng = np.random.default_rng(3)
    flat, other = [], []
    for i, j in rng.integers(0, len(model.points), size=(20000, 2)):
        length, f2, f3, f4 = _feature(model.points[i], model.normals[i], model.points[j], model.normals[j])
        if i == j or length > model.diameter:
            continue
        q = [min(int(f / step), bins - 1) for f in (f2, f3, f4)]
        key = (
            (min(int(length / model.step), model.distance_bins - 1) * bins + q[0]) * bins + q[1]
        ) * bins + q[2]
        square = all(abs(np.degrees(f) - 90.0) < 6.0 for f in (f2, f3))
        (flat if square and np.degrees(f4) < 6.0 else other).append(key)
    assert len(flat) > 20
    assert settings.frame_planar_cap < settings.frame_bucket_cap
    assert sizes[flat].max() <= settings.frame_planar_cap
    assert sizes[other].max() > settings.frame_planar_cap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_posed_copy_of_the_model_votes_its_own_pose_first(bunny, model: PPFModel, seed: int) -> None:
    """Row vectors: observed = canonical @ rotation + translation; the top cluster is that pose."""
    surface, diagonal = bunny
    rng = np.random.default_rng(seed)
    rotation = Rotation.random(random_state=seed).as_matrix()
    translation = rng.uniform(-3.0, 3.0, 3) * diagonal
    sample = surface[rng.choice(len(surface), 2000, replace=False), :3]
    observed = sample @ rotation + translation
    (best_rotation, best_translation, votes), *others = model.hypotheses(observed, seed=seed)
    error_deg = np.degrees(Rotation.from_matrix(best_rotation.T @ rotation).magnitude())
    assert error_deg < 10.0  # the angle bins are 12 degrees wide
    assert np.linalg.norm(best_translation - translation) < 0.05 * diagonal
    assert all(votes >= other[2] for other in others)


def test_a_cloud_of_random_points_gets_no_strong_cluster(model: PPFModel, bunny) -> None:
    """Votes from clutter spread out: the best cluster of random points gets a fraction of what the
    object's own cloud gives."""
    surface, diagonal = bunny
    rng = np.random.default_rng(5)
    noise = rng.uniform(-0.5, 0.5, (2000, 3)) * diagonal
    own = model.hypotheses(surface[rng.choice(len(surface), 2000, replace=False), :3])[0][2]
    random_best = model.hypotheses(noise)[0][2]
    assert random_best < 0.25 * own


def test_settings_change_the_table(bunny) -> None:
    surface, diagonal = bunny
    coarse = PPFModel(surface[:, :3], surface[:, 3:], diagonal, PPFSettings(sampling=0.08))
    fine = PPFModel(surface[:, :3], surface[:, 3:], diagonal, PPFSettings(sampling=0.04))
    assert len(coarse.points) < len(fine.points)
