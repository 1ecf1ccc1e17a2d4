from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import trimesh

from pipeline.data.mesh import Mesh, load_mesh, sample_surface, surface_centroid
from pipeline.data.views import (
    DEFAULT_DEPTH_NOISE,
    DEFAULT_DEPTH_NOISE_POWER,
    load_view_bank,
    make_view_bank,
    random_viewpoint,
    render_view,
    save_view_bank,
    visible_fraction,
)


@pytest.fixture(scope="module")
def bunny() -> Mesh:
    return load_mesh()


def scene_of(mesh: Mesh) -> o3d.t.geometry.RaycastingScene:
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(mesh.vertices.astype(np.float32)), o3d.core.Tensor(mesh.faces.astype(np.uint32))
    )
    return scene


def first_hit_depth(scene, camera: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth of the first surface hit along the ray from ``camera`` through each point, and the
    distance to the point itself."""
    offsets = points - camera
    distance = np.linalg.norm(offsets, axis=1)
    rays = np.hstack([np.broadcast_to(camera, points.shape), offsets / distance[:, None]]).astype(np.float32)
    return scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().astype(np.float64), distance


def test_bunny_view_keeps_first_hits_only(bunny: Mesh) -> None:
    scene = scene_of(bunny)
    camera = np.array([0.6, -0.5, 0.62]) * 2.0 * bunny.diagonal
    exact = render_view(bunny, camera, np.random.default_rng(0), depth_noise=0.0)
    assert len(exact) > 500
    hit, distance = first_hit_depth(scene, camera, exact)
    assert np.isfinite(hit).all()
    np.testing.assert_allclose(hit, distance, atol=1e-4, rtol=0)

    noisy = render_view(bunny, camera, np.random.default_rng(0))
    hit, distance = first_hit_depth(scene, camera, noisy)
    sigma = DEFAULT_DEPTH_NOISE * bunny.diagonal * (distance / bunny.diagonal) ** DEFAULT_DEPTH_NOISE_POWER
    # Noise moves a point along its own ray, so nothing on the mesh is closer by more than the noise.
    assert np.all(np.abs(hit - distance) <= 5 * sigma + 1e-4)
    assert np.abs(hit - distance).std() > 0.3 * sigma.mean()  # and the noise is really there


def test_noise_free_points_lie_on_the_surface(bunny: Mesh) -> None:
    points = render_view(bunny, np.array([0.0, 0.0, -30.0]), np.random.default_rng(1), depth_noise=0.0)
    distance = scene_of(bunny).compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()
    assert distance.max() < 1e-5 * bunny.diagonal


def two_boxes() -> Mesh:
    """A wide slab with a small cube floating above its centre."""
    slab = trimesh.creation.box(extents=(4.0, 4.0, 1.0))
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    cube.apply_translation((0.0, 0.0, 3.0))
    both = trimesh.util.concatenate([slab, cube])
    vertices = np.asarray(both.vertices, dtype=np.float64)
    faces = np.asarray(both.faces, dtype=np.int64)
    offset = surface_centroid(vertices, faces)
    return Mesh(vertices=vertices - offset, faces=faces, name="boxes", sha256="", offset=offset)


def test_back_faces_and_shadowed_faces_never_appear() -> None:
    mesh = two_boxes()
    camera = np.array([0.3, 0.2, 10.0])
    points = render_view(mesh, camera, np.random.default_rng(2), depth_noise=0.0, incidence_power=0.0)
    closest = scene_of(mesh).compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
    normals = closest["primitive_normals"].numpy().astype(np.float64)
    facing = np.einsum("ij,ij->i", normals, camera - points)
    assert facing.min() > 0, "a point on a face turned away from the camera"

    # Points on the slab (original z <= 0.5) must not lie in the cube's shadow: the segment from
    # such a point to the camera may not pass through the cube [-0.5, 0.5]² × [2.5, 3.5].
    original = points + mesh.offset
    eye = camera + mesh.offset
    on_slab = original[original[:, 2] < 0.5 + 1e-6]
    on_cube = original[original[:, 2] > 2.5 - 1e-6]
    assert len(on_slab) > 1000 and len(on_cube) > 100
    direction = eye - on_slab
    low, high = np.array([-0.5, -0.5, 2.5]), np.array([0.5, 0.5, 3.5])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (low - on_slab) / direction, (high - on_slab) / direction
    enter = np.minimum(t1, t2).max(axis=1)
    leave = np.maximum(t1, t2).min(axis=1)
    shadowed = (enter < leave) & (leave > 0) & (enter < 1)
    assert not shadowed.any()
    # The shadow is really there: the slab top right under the cube gets no points at all.
    under_cube = (np.abs(on_slab[:, 0] - 0.0) < 0.4) & (np.abs(on_slab[:, 1]) < 0.4)
    assert not under_cube.any()


def test_density_falls_off_with_distance(bunny: Mesh) -> None:
    direction = np.array([0.2, 0.9, -0.4]) / np.linalg.norm([0.2, 0.9, -0.4])
    near = render_view(bunny, direction * 1.5 * bunny.diagonal, np.random.default_rng(3))
    far = render_view(bunny, direction * 3.5 * bunny.diagonal, np.random.default_rng(3))
    assert len(far) < len(near) / 3  # ~ (1.5 / 3.5)² of the rays hit


def test_grazing_hits_are_dropped(bunny: Mesh) -> None:
    camera = np.array([-0.3, 0.8, 0.5]) * 2.0 * bunny.diagonal
    every = render_view(bunny, camera, np.random.default_rng(4), incidence_power=0.0, depth_noise=0.0)
    kept = render_view(bunny, camera, np.random.default_rng(4), depth_noise=0.0)
    assert 0.4 * len(every) < len(kept) < 0.9 * len(every)


def test_render_is_seeded(bunny: Mesh) -> None:
    camera = random_viewpoint(np.random.default_rng(5), bunny.diagonal)
    np.testing.assert_array_equal(
        render_view(bunny, camera, np.random.default_rng(6)),
        render_view(bunny, camera, np.random.default_rng(6)),
    )


def test_random_viewpoints_cover_the_sphere_at_the_right_distance(bunny: Mesh) -> None:
    rng = np.random.default_rng(7)
    cameras = np.array([random_viewpoint(rng, bunny.diagonal, (1.5, 4.0)) for _ in range(1000)])
    distance = np.linalg.norm(cameras, axis=1) / bunny.diagonal
    assert distance.min() >= 1.5 and distance.max() <= 4.0
    directions = cameras / np.linalg.norm(cameras, axis=1, keepdims=True)
    assert np.abs(directions.mean(axis=0)).max() < 0.07
    np.testing.assert_allclose((directions**2).mean(axis=0), 1 / 3, atol=0.04)


def test_visible_fraction_of_one_view_is_partial(bunny: Mesh) -> None:
    view = render_view(bunny, np.array([1.0, 1.0, 1.0]) * bunny.diagonal, np.random.default_rng(8))
    fraction = visible_fraction(view, bunny)
    assert 0.15 < fraction < 0.8
    assert visible_fraction(sample_surface(bunny, 20_000, np.random.default_rng(9)), bunny) > 0.97
    assert visible_fraction(np.empty((0, 3)), bunny) == 0.0


def test_view_bank_round_trips(bunny: Mesh, tmp_path: Path) -> None:
    views = make_view_bank(bunny, 3, np.random.default_rng(10), min_points=300)
    again = make_view_bank(bunny, 3, np.random.default_rng(10), min_points=300)
    assert len(views) == 3
    for view, same in zip(views, again, strict=True):
        assert view.dtype == np.float32 and view.shape[1] == 3 and len(view) >= 300
        np.testing.assert_array_equal(view, same)
    path = save_view_bank(tmp_path / "views.npz", views, {"seed": 10})
    loaded = load_view_bank(path)
    assert [len(v) for v in loaded] == [len(v) for v in views]
    for view, back in zip(views, loaded, strict=True):
        np.testing.assert_array_equal(view, back)
    assert [p.name for p in tmp_path.iterdir()] == ["views.npz"]


def test_view_bank_can_select_by_visible_fraction(bunny: Mesh) -> None:
    views = make_view_bank(bunny, 2, np.random.default_rng(11), visible_range=(0.35, 0.45))
    for view in views:
        assert 0.35 <= visible_fraction(view, bunny) <= 0.45
    with pytest.raises(RuntimeError):
        make_view_bank(bunny, 1, np.random.default_rng(12), min_points=10**7, max_attempts=2)
