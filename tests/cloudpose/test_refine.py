"""Pose refinement against the bunny's surface model: accuracy, hypotheses, confidence, inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from cloudpose.registration import refine
from cloudpose.registration.refine import SurfaceModel, refine_pose, sample_surface_with_normals
from pipeline.data.mesh import load_mesh

SURFACE_POINTS = 20_000


@pytest.fixture(scope="module")
def mesh():
    return load_mesh()


@pytest.fixture(scope="module")
def surface(mesh) -> np.ndarray:
    return sample_surface_with_normals(mesh.vertices, mesh.faces, SURFACE_POINTS, np.random.default_rng(0))


@pytest.fixture(scope="module")
def model(surface, mesh) -> SurfaceModel:
    return SurfaceModel.from_array(surface, mesh.diagonal)


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    relative = a.T @ b
    skew = relative - relative.T
    sin = np.linalg.norm([skew[2, 1], skew[0, 2], skew[1, 0]]) / 2
    return float(np.degrees(np.arctan2(sin, (np.trace(relative) - 1) / 2)))


def posed_bunny(mesh, count: int, seed: int, noise: float = 0.0, side: float | None = None):
    """A shuffled cloud of the bunny in a random pose, and that pose (row vectors).

    Args:
        noise: Gaussian sigma as a fraction of the diagonal.
        side: keep only this fraction of the surface, on one side of a random plane.
    """
    rng = np.random.default_rng(seed)
    points = sample_surface_with_normals(mesh.vertices, mesh.faces, 4 * count, rng)[:, :3].astype(np.float64)
    if side is not None:
        direction = Rotation.random(random_state=rng).as_matrix()[0]
        height = points @ direction
        points = points[height > np.quantile(height, 1 - side)]
    points = points[rng.permutation(len(points))[:count]]
    rotation = Rotation.random(random_state=rng).as_matrix()
    translation = rng.uniform(-5, 5, 3)
    observed = points @ rotation + translation
    observed += rng.normal(scale=noise * mesh.diagonal, size=observed.shape)
    return observed, rotation, translation


def perturbed(rotation, translation, degrees: float, shift: float, seed: int):
    """The pose turned by ``degrees`` about a random axis (about the object's centre) and shifted."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    turn = Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()
    offset = rng.normal(size=3)
    return turn @ rotation, translation + shift * offset / np.linalg.norm(offset)


def sphere_cloud(count: int, radius: float, seed: int) -> np.ndarray:
    points = np.random.default_rng(seed).normal(size=(count, 3))
    return radius * points / np.linalg.norm(points, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# surface sampling and the model


def test_samples_lie_on_the_mesh_with_outward_unit_normals(mesh) -> None:
    array = sample_surface_with_normals(mesh.vertices, mesh.faces, 5000, np.random.default_rng(1))
    assert array.shape == (5000, 6) and array.dtype == np.float32
    points, normals = array[:, :3].astype(np.float64), array[:, 3:].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(mesh.vertices.astype(np.float32)), o3d.core.Tensor(mesh.faces.astype(np.uint32))
    )
    assert scene.compute_distance(o3d.core.Tensor(array[:, :3])).numpy().max() < 1e-4
    # A step along the normal leaves the (closed) bunny, a step against it enters.
    step = 1e-3 * mesh.diagonal
    outside = scene.compute_signed_distance(o3d.core.Tensor((points + step * normals).astype(np.float32)))
    inside = scene.compute_signed_distance(o3d.core.Tensor((points - step * normals).astype(np.float32)))
    assert (outside.numpy() > 0).mean() > 0.99 and (inside.numpy() < 0).mean() > 0.99
    # Divergence theorem: area * mean(p . n) / 3 is the enclosed volume, positive for outward normals.
    bunny = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    volume = bunny.area * np.mean((points * normals).sum(axis=1)) / 3
    assert volume == pytest.approx(bunny.volume, rel=0.05) and bunny.volume > 0


def test_normals_stay_outward_for_a_mesh_wound_inward(mesh) -> None:
    inward = mesh.faces[:, ::-1]
    array = sample_surface_with_normals(mesh.vertices, inward, 5000, np.random.default_rng(1))
    outward = sample_surface_with_normals(mesh.vertices, mesh.faces, 5000, np.random.default_rng(1))
    # The same faces are drawn (same areas, same generator), so the normals must match exactly.
    np.testing.assert_allclose(array[:, 3:], outward[:, 3:], atol=1e-6)


def test_surface_model_round_trips_through_a_file(tmp_path: Path, surface, mesh) -> None:
    path = tmp_path / "surface.npy"
    np.save(path, surface)
    model = SurfaceModel.load(path, mesh.diagonal)
    assert len(model) == SURFACE_POINTS and model.diagonal == mesh.diagonal
    np.testing.assert_allclose(model.points, surface[:, :3], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(model.normals, axis=1), 1.0, atol=1e-9)
    assert np.asarray(model.cloud.normals).shape == (SURFACE_POINTS, 3)
    assert 500 < len(model.coarse_points) < SURFACE_POINTS


@pytest.mark.parametrize(
    ("array", "diagonal"),
    [(np.zeros((10, 5)), 1.0), (np.ones((10, 6)), 0.0), (np.full((10, 6), np.nan), 1.0)],
)
def test_bad_surface_arrays_are_rejected(array: np.ndarray, diagonal: float) -> None:
    with pytest.raises(ValueError):
        SurfaceModel.from_array(array, diagonal)


# ---------------------------------------------------------------------------------------------
# refinement


def test_refinement_fixes_a_perturbed_pose_of_a_noisy_cloud(mesh, model) -> None:
    for seed in range(3):
        observed, rotation, translation = posed_bunny(mesh, 1024, seed, noise=0.002)
        start = perturbed(rotation, translation, 10.0, 0.05 * mesh.diagonal, seed)
        assert rotation_error_deg(start[0], rotation) == pytest.approx(10.0)
        result = refine_pose(observed, model, *start)
        assert result.refined and result.hypotheses == 1
        assert rotation_error_deg(result.object_rotation, rotation) < 0.1
        assert np.linalg.norm(result.object_translation - translation) < 0.002 * mesh.diagonal
        assert result.fitness > 0.99 and result.confident


def test_refinement_of_a_partial_view(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 1024, seed=5, side=0.4)
    start = perturbed(rotation, translation, 20.0, 0.03 * mesh.diagonal, seed=5)
    result = refine_pose(observed, model, *start)
    assert rotation_error_deg(result.object_rotation, rotation) < 0.1
    assert np.linalg.norm(result.object_translation - translation) < 0.002 * mesh.diagonal
    assert result.fitness > 0.99


def test_the_exact_pose_stays_put(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 2048, seed=6)
    result = refine_pose(observed, model, rotation, translation)
    assert rotation_error_deg(result.object_rotation, rotation) < 0.05
    assert np.linalg.norm(result.object_translation - translation) < 0.001 * mesh.diagonal


def test_hypotheses_recover_a_half_turned_start(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 1024, seed=7)
    axis = model.axes[1]
    flipped = (2 * np.outer(axis, axis) - np.eye(3)) @ rotation
    start = perturbed(flipped, translation, 5.0, 0.02 * mesh.diagonal, seed=7)
    assert rotation_error_deg(start[0], rotation) > 170

    stuck = refine_pose(observed, model, *start, search=False)
    assert rotation_error_deg(stuck.object_rotation, rotation) > 90
    assert stuck.hypotheses == 1 and stuck.fitness < 0.85

    result = refine_pose(observed, model, *start)
    assert rotation_error_deg(result.object_rotation, rotation) < 0.1
    assert result.hypotheses == 13 and result.fitness > 0.99


def test_alternatives_are_tried_when_the_start_is_doubtful(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 1024, seed=8)
    wrong = perturbed(rotation, translation, 150.0, 0.0, seed=8)
    near = perturbed(rotation, translation, 15.0, 0.02 * mesh.diagonal, seed=9)
    result = refine_pose(observed, model, *wrong, alternatives=[near], search=False)
    assert result.hypotheses == 2
    assert rotation_error_deg(result.object_rotation, rotation) < 0.1


def test_a_confident_start_tries_nothing_else(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 1024, seed=10)
    start = perturbed(rotation, translation, 5.0, 0.0, seed=10)
    decoy = perturbed(rotation, translation, 120.0, 0.0, seed=11)
    result = refine_pose(observed, model, *start, alternatives=[decoy])
    assert result.hypotheses == 1
    assert rotation_error_deg(result.object_rotation, rotation) < 0.1


def test_confidence_is_low_for_other_shapes_of_the_same_size(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 1024, seed=12)
    bunny = refine_pose(observed, model, rotation, translation)
    extents = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    box = trimesh.sample.sample_surface(trimesh.creation.box(extents=extents), 1024, seed=3)[0]
    others = {"sphere": sphere_cloud(1024, mesh.diagonal / (2 * np.sqrt(3)), seed=4), "box": box}
    assert bunny.fitness > 0.99 and bunny.confidence > 0.9 and bunny.confident
    for name, cloud in others.items():
        result = refine_pose(cloud @ rotation + translation, model, rotation, translation)
        assert result.fitness < 0.5 * bunny.fitness, name
        assert result.confidence < refine.CONFIDENT and not result.confident, name
        assert result.inlier_rmse_percent > 10 * bunny.inlier_rmse_percent, name
        summary = result.summary()
        assert summary["hypotheses"] == result.hypotheses == 13 and summary["confident"] is False


@pytest.mark.parametrize("count", [32, 100, 5000, 60_000])
def test_clouds_of_any_size(mesh, model, count: int) -> None:
    observed, rotation, translation = posed_bunny(mesh, count, seed=count)
    start = perturbed(rotation, translation, 10.0, 0.02 * mesh.diagonal, seed=count)
    result = refine_pose(observed, model, *start)
    assert result.refined
    assert rotation_error_deg(result.object_rotation, rotation) < (1.0 if count < 100 else 0.1)


def test_non_finite_rows_are_ignored_and_tiny_clouds_are_left_alone(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 500, seed=13)
    start = perturbed(rotation, translation, 10.0, 0.0, seed=13)
    damaged = observed.copy()
    damaged[::50] = np.nan
    result = refine_pose(damaged, model, *start)
    assert result.refined and rotation_error_deg(result.object_rotation, rotation) < 0.1

    tiny = refine_pose(observed[:5], model, *start)
    assert not tiny.refined and tiny.confidence == 0.0
    assert json.loads(json.dumps(tiny.summary(), allow_nan=False))["inlier_rmse"] is None
    np.testing.assert_array_equal(tiny.object_rotation, start[0])
    np.testing.assert_array_equal(tiny.object_translation, start[1])


def test_refinement_is_deterministic_and_ignores_point_order(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 3000, seed=14)
    start = perturbed(rotation, translation, 15.0, 0.02 * mesh.diagonal, seed=14)
    first = refine_pose(observed, model, *start)
    again = refine_pose(observed, model, *start)
    np.testing.assert_array_equal(first.object_rotation, again.object_rotation)
    shuffled = refine_pose(observed[::-1], model, *start)
    assert rotation_error_deg(shuffled.object_rotation, first.object_rotation) < 0.05


@pytest.mark.skipif(refine.small_gicp is None, reason="small_gicp is not installed")
def test_both_nearest_neighbour_backends_agree(mesh, surface) -> None:
    observed, rotation, translation = posed_bunny(mesh, 1024, seed=15, noise=0.01)
    start = perturbed(rotation, translation, 20.0, 0.03 * mesh.diagonal, seed=15)
    results = [
        refine_pose(observed, SurfaceModel.from_array(surface, mesh.diagonal, index_backend=backend), *start)
        for backend in refine.INDEX_BACKENDS
    ]
    np.testing.assert_allclose(results[0].object_rotation, results[1].object_rotation, atol=1e-9)
    assert results[0].fitness == results[1].fitness


# ---------------------------------------------------------------------------------------------
# the coarse stages' lookup table


def test_lookup_table_finds_a_point_within_a_few_cells_of_the_nearest(model) -> None:
    grid = model.coarse_index
    exact = refine._NearestIndex(model.coarse_points)
    rng = np.random.default_rng(0)
    queries = model.coarse_points[rng.choice(len(model.coarse_points), 3000)]
    queries = queries + rng.normal(scale=0.05 * model.diagonal, size=queries.shape)
    index, squared = grid.query(queries)
    _, exact_squared = exact.query(queries)
    np.testing.assert_allclose(squared, np.square(queries - model.coarse_points[index]).sum(axis=1))
    assert (squared >= exact_squared - 1e-9).all()
    # The representative of the nearest occupied cell: at most two cell diagonals farther.
    cell = 1.0 / grid.inverse_cell
    assert (np.sqrt(squared) <= np.sqrt(exact_squared) + 2 * np.sqrt(3) * cell + 1e-9).all()
    assert np.mean(np.sqrt(squared) - np.sqrt(exact_squared) < 0.5 * cell) > 0.8


def test_lookup_table_queries_beyond_its_box_are_beyond_every_coarse_distance(model) -> None:
    margin = refine.COARSE_SCHEDULE[0] * model.diagonal
    low, high = model.coarse_points.min(axis=0), model.coarse_points.max(axis=0)
    outside = np.array([high + 1.5 * margin, low - 3.0 * margin, [high[0] + 1.01 * margin, 0.0, 0.0]])
    index, squared = model.coarse_index.query(outside)
    np.testing.assert_allclose(squared, np.square(outside - model.coarse_points[index]).sum(axis=1))
    assert (np.sqrt(squared) > margin).all()


def test_spread_starts_find_a_view_that_no_nearby_guess_fits(mesh, model) -> None:
    from cloudpose.estimation.inference import spread_starts
    from pipeline.data.benchsets import make_set

    observed, rotation, translation = make_set("partial", mesh, 6, seed=3)[5]  # a rendered view
    wrong = perturbed(rotation, translation, 150.0, 0.0, seed=5)
    # The right rotation, 20 degrees off, at the view's centroid: too far from the object's centre.
    guess = (perturbed(rotation, translation, 20.0, 0.0, seed=105)[0], observed.mean(axis=0))
    missed = refine_pose(observed, model, *wrong, alternatives=[guess], search=False)
    assert rotation_error_deg(missed.object_rotation, rotation) > 30
    starts = spread_starts(observed, mesh.diagonal)
    found = refine_pose(observed, model, *wrong, alternatives=starts, search=False)
    assert rotation_error_deg(found.object_rotation, rotation) < 0.1
    assert found.fitness > 0.99 and found.hypotheses == 1 + len(starts)


def test_surface_noise_measures_the_scatter_about_the_local_surface() -> None:
    from cloudpose.registration.refine import surface_noise

    rng = np.random.default_rng(0)
    plane = np.column_stack([rng.uniform(-1, 1, (3000, 2)), np.zeros(3000)])
    assert surface_noise(plane) < 1e-9
    noisy = plane + np.column_stack([np.zeros((3000, 2)), rng.normal(0.0, 0.01, 3000)])
    # k-nearest patches of a noisy plane: the plane-fit residual is about sigma (a bit below).
    assert 0.006 < surface_noise(noisy) < 0.012


def test_a_fit_beyond_the_scatter_and_the_surface_tolerance_is_unexplained() -> None:
    from cloudpose.estimation.inference import EXPLAINED_RATIO, _CloudScatter
    from cloudpose.registration.refine import Refinement

    rng = np.random.default_rng(1)
    cloud = np.column_stack([rng.uniform(-1, 1, (2000, 2)), rng.normal(0.0, 0.003, 2000)])
    diagonal, tolerance = 2.0, 0.004

    def fit(rmse: float) -> Refinement:
        return Refinement(np.eye(3), np.zeros(3), 1.0, rmse, 100 * rmse / diagonal, 1, True, 1.0)

    scatter = _CloudScatter(cloud, tolerance)
    assert scatter.explains(fit(0.99 * EXPLAINED_RATIO * tolerance), diagonal)
    assert scatter.noise is None  # the tolerance alone explains it: nothing is measured
    # The scatter (about 0.0025) and the tolerance add up: sqrt(0.0025^2 + 0.004^2) = 0.0047.
    assert 0.0045 < scatter.expected() < 0.0050
    assert scatter.explains(fit(0.009), diagonal)
    assert not scatter.explains(fit(0.011), diagonal)
    assert not _CloudScatter(cloud, 0.0).explains(fit(0.009), diagonal)


def test_more_points_of_the_same_surface_do_not_make_the_check_stricter() -> None:
    """A dense scan's scatter is measured on a subsample of SCATTER_POINTS, so the expected
    residual of a right pose stops shrinking as the scan grows."""
    from cloudpose.estimation.inference import SCATTER_POINTS, _CloudScatter

    def sphere(count: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        directions = rng.normal(size=(count, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return directions * (1.0 + rng.normal(0.0, 0.002, (count, 1)))

    sparse = _CloudScatter(sphere(SCATTER_POINTS, 3), 0.0).expected()
    for count in (10_000, 40_000, 200_000):
        dense = _CloudScatter(sphere(count, count), 0.0).expected()
        assert 0.8 < dense / sparse < 1.25


def test_a_close_fit_that_leaves_part_of_a_clean_cloud_off_the_surface_is_incomplete() -> None:
    """A clean cloud fitted closely but not whole asks for a wider search; a whole fit, or a
    noisy cloud (whose stray points explain a partial fit), does not."""
    from cloudpose.estimation.inference import _CloudScatter
    from cloudpose.registration.refine import Refinement

    rng = np.random.default_rng(2)
    clean = np.column_stack([rng.uniform(-1, 1, (2000, 2)), np.zeros(2000)])
    noisy = clean + np.column_stack([np.zeros((2000, 2)), rng.normal(0.0, 0.02, 2000)])
    diagonal = 2.0

    def fit(fitness: float) -> Refinement:
        return Refinement(np.eye(3), np.zeros(3), fitness, 1e-4, 5e-3, 1, True, fitness)

    assert _CloudScatter(clean, 0.0).incomplete(fit(0.91), diagonal)
    assert not _CloudScatter(clean, 0.0).incomplete(fit(0.995), diagonal)
    assert not _CloudScatter(noisy, 0.0).incomplete(fit(0.91), diagonal)


# ---------------------------------------------------------------------------------------------
# batched screening


def test_batched_measure_matches_exact_distances(mesh, model) -> None:
    """Fitness and RMSE of many poses at once equal a brute-force count over exact distances,
    for a right pose and for poses that leave most points far from the surface."""
    observed, rotation, translation = posed_bunny(mesh, 300, seed=21)
    poses = [(rotation, translation), perturbed(rotation, translation, 30.0, 0.2 * mesh.diagonal, 1)]
    poses.append((rotation, translation + 0.5 * mesh.diagonal))
    backs = np.stack([refine.back_matrix(*pose) for pose in poses])
    inlier = refine.INLIER_DISTANCE * model.diagonal
    fitness, rmse = refine._measure_batch(observed, model, backs, inlier)
    for back, got_fitness, got_rmse in zip(backs, fitness, rmse, strict=True):
        posed = observed @ back[:3, :3].T + back[:3, 3]
        squared = ((posed[:, None, :] - model.points[None]) ** 2).sum(axis=2)  # (N, M)
        nearest = squared.argmin(axis=1)
        near = squared[np.arange(len(posed)), nearest] < inlier**2
        assert got_fitness == pytest.approx(near.mean())
        if near.any():
            residuals = ((posed - model.points[nearest]) * model.normals[nearest]).sum(axis=1)[near]
            assert got_rmse == pytest.approx(np.sqrt(np.mean(residuals**2)), rel=1e-9)
        else:
            assert got_rmse == np.inf
    assert fitness[0] > 0.99 and fitness[2] < fitness[0]


def test_screening_brings_every_start_towards_the_cloud_at_once(mesh, model) -> None:
    """Starts 25 degrees off and one 10 % of the diagonal away come close to the true pose in
    one batched run, each as far as the sequential coarse stages take a single start."""
    observed, rotation, translation = posed_bunny(mesh, 1000, seed=22)
    starts = [perturbed(rotation, translation, 25.0, 0.1 * mesh.diagonal, seed) for seed in range(4)]
    backs, fitness, rmse = refine.screen_starts(
        observed, model, starts, points=256, stages=refine.COARSE_SCHEDULE, iterations=8, seed=3
    )
    assert backs.shape == (4, 4, 4) and fitness.shape == rmse.shape == (4,)
    for back in backs:
        screened_rotation, _ = refine.object_pose(back)
        assert rotation_error_deg(screened_rotation, rotation) < 1.0
    assert (fitness > 0.95).all()


def test_screening_ranks_the_right_start_first(mesh, model) -> None:
    """Among a right start and its half-turned copies, the right one screens best."""
    observed, rotation, translation = posed_bunny(mesh, 800, seed=23, side=0.5)
    half_turns = [2.0 * np.outer(axis, axis) - np.eye(3) for axis in model.axes]
    starts = [(rotation, translation), *[(turn @ rotation, translation) for turn in half_turns]]
    _, fitness, rmse = refine.screen_starts(
        observed, model, starts, stages=refine.COARSE_SCHEDULE, iterations=8
    )
    best = max(range(len(starts)), key=lambda k: (round(fitness[k], 2), -rmse[k]))
    assert best == 0
    assert fitness[0] > 0.99


# ---------------------------------------------------------------------------------------------
# polishing (detection restarts the final fit from shifted copies)


def test_polishing_never_leaves_a_worse_fit_and_keeps_competitors(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 1500, seed=21, noise=0.004, side=0.5)
    start_rotation, start_translation = perturbed(rotation, translation, 3.0, 0.03 * mesh.diagonal, seed=4)
    first = refine_pose(observed, model, start_rotation, start_translation, search=False, doubt_fitness=0.0)
    first.competitors = [first]  # a marker: polishing must carry the competitors over
    polished = refine.polish_pose(observed, model, first)
    assert polished.refined
    assert polished.inlier_rmse <= first.inlier_rmse
    assert polished.fitness >= first.fitness - refine.RIVAL_FITNESS_MARGIN
    assert polished.competitors == [first]
    assert rotation_error_deg(polished.object_rotation, rotation) < 1.0
    assert np.linalg.norm(polished.object_translation - translation) < 0.01 * mesh.diagonal


def test_polishing_an_unrefined_fit_returns_it_unchanged(mesh, model) -> None:
    observed, rotation, translation = posed_bunny(mesh, 200, seed=3)
    far = refine_pose(observed, model, rotation, translation + 100 * mesh.diagonal, search=False)
    assert not far.refined
    assert refine.polish_pose(observed, model, far) is far


def test_polishing_under_a_spent_budget_keeps_the_fit_it_was_given() -> None:
    """Copies that the batch's coarse stages did not bring in are not compared: from a slide along
    a long plate the fine stage alone stays a slide (its kernel drops the few points that would
    pull it back), and the slid copy's inliers can fit more closely than the pose it came from."""
    from cloudpose import budget

    slab = trimesh.creation.box(extents=(60.0, 20.0, 6.0))
    boss = trimesh.creation.cylinder(radius=8.0, height=10.0)
    boss.apply_translation((-22.0, 4.0, 2.0))
    lug = trimesh.creation.box(extents=(10.0, 6.0, 12.0))
    lug.apply_translation((18.0, -7.0, -3.0))
    plate = trimesh.util.concatenate([slab, boss, lug])
    diagonal = float(np.linalg.norm(plate.extents))
    rng = np.random.default_rng(8)
    model = SurfaceModel.from_array(
        sample_surface_with_normals(plate.vertices, plate.faces, 20000, rng), diagonal
    )
    rotation = Rotation.random(random_state=rng).as_matrix()
    translation = np.array([100.0, -40.0, 250.0])
    canonical = sample_surface_with_normals(plate.vertices, plate.faces, 1500, rng)[:, :3].astype(np.float64)
    observed = canonical @ rotation + translation
    slid = translation + np.array([2.0, 0.0, 0.0]) @ rotation  # along the plate's length
    loose = refine_pose(observed, model, rotation, slid, search=False, doubt_fitness=0.0, coarse_iterations=0)
    assert loose.inlier_rmse > 0.002 * diagonal  # the fine stage alone left it off
    with budget.limited(budget.Budget(0.0)):
        assert refine.polish_pose(observed, model, loose) is loose
    polished = refine.polish_pose(observed, model, loose)  # with time, the copies come home
    assert np.linalg.norm(polished.object_translation - translation) < 0.005 * diagonal
    assert rotation_error_deg(polished.object_rotation, rotation) < 0.5
