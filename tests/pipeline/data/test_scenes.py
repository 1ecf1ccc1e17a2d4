"""The scene generator: seeded cluttered frames whose ground truth (poses, masks, visible fractions)
matches what the depth sensor saw, and whose depth PNG the service reads back as the same cloud."""

import io

import numpy as np
import open3d as o3d
import pytest
import trimesh
from PIL import Image
from scipy.spatial import ConvexHull, cKDTree

from cloudpose.io.frames import read_depth_image
from pipeline.data.mesh import load_mesh
from pipeline.data.scenes import (
    DISTRACTOR,
    NO_RETURN,
    Intrinsics,
    NoiseModel,
    Placement,
    SceneCounts,
    SceneLayout,
    SceneObject,
    back_project,
    make_frame,
    project,
    render_frame,
    support_plane,
    valid_points,
)

SMALL = Intrinsics().scaled(0.25)  # 160 x 120, same field of view as VGA
EXACT = NoiseModel.none()


def small_bunny() -> SceneObject:
    """The bunny about 0.15 m across, as the scene tests place it."""
    mesh = load_mesh()
    scale = 0.15 / (mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)).max()
    return SceneObject("bunny", trimesh.Trimesh(mesh.vertices * scale, mesh.faces, process=False))


@pytest.fixture(scope="module")
def bunny() -> SceneObject:
    return small_bunny()


@pytest.fixture(scope="module")
def distractors() -> list[SceneObject]:
    return [
        SceneObject("box", trimesh.creation.box(extents=(0.08, 0.06, 0.10))),
        SceneObject("cylinder", trimesh.creation.cylinder(radius=0.04, height=0.12, sections=24)),
        SceneObject("capsule", trimesh.creation.capsule(height=0.10, radius=0.03, count=[8, 8])),
    ]


def box_object(name: str, extents: tuple[float, float, float]) -> SceneObject:
    return SceneObject(name, trimesh.creation.box(extents=extents))


def at(scene_object: SceneObject, translation, kind="target", rotation=None) -> Placement:
    rotation = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    return Placement(scene_object, rotation, np.asarray(translation, dtype=np.float64), kind)


def pixel_directions(intrinsics: Intrinsics) -> np.ndarray:
    """(H, W, 3) ray directions with z = 1, computed here independently of the module."""
    v, u = np.mgrid[0 : intrinsics.height, 0 : intrinsics.width].astype(np.float64)
    return np.stack(
        [(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy, np.ones_like(u)], axis=-1
    )


def surface_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(N,) unsigned distance from each point to the mesh's surface."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
        o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)),
    )
    return scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy().astype(np.float64)


def test_same_seed_same_frame_other_seed_other(bunny, distractors):
    counts = SceneCounts(target_copies=(1, 2), distractors=(2, 3))
    first = make_frame([bunny], distractors, np.random.default_rng(3), SMALL, counts)
    again = make_frame([bunny], distractors, np.random.default_rng(3), SMALL, counts)
    other = make_frame([bunny], distractors, np.random.default_rng(4), SMALL, counts)

    np.testing.assert_array_equal(first.depth, again.depth)
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(first.plane, again.plane)
    assert len(first.instances) == len(again.instances) >= 1
    for a, b in zip(first.instances, again.instances, strict=True):
        np.testing.assert_array_equal(a.rotation, b.rotation)
        np.testing.assert_array_equal(a.translation, b.translation)
        assert a.visible_fraction == b.visible_fraction
    assert not np.array_equal(first.depth, other.depth)
    assert not np.array_equal(first.plane, other.plane)


@pytest.mark.parametrize("noise", [EXACT, NoiseModel(sigma_angle_m=0.0)], ids=["exact", "noisy"])
def test_instance_points_lie_on_the_target_surface(bunny, distractors, noise):
    counts = SceneCounts(target_copies=(3, 3), distractors=(2, 2))
    frame = make_frame([bunny], distractors, np.random.default_rng(11), SMALL, counts, noise)
    organized = back_project(frame.depth, SMALL)
    assert len(frame.instances) == 3
    checked = 0
    for index, instance in enumerate(frame.instances):
        rotation, translation = instance.rotation, instance.translation
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-9)
        assert instance.name == "bunny"
        np.testing.assert_array_equal(instance.mask, frame.labels == index)
        assert instance.n_points == int(instance.mask.sum())
        assert (frame.depth[instance.mask] > 0).all()
        if instance.n_points < 20:
            continue
        points = organized[instance.mask].astype(np.float64)
        canonical = (points - translation) @ rotation.T
        distance = surface_distance(bunny.mesh, canonical)
        if noise is EXACT:
            assert distance.max() < 1e-4
        else:
            bound = 4.0 * noise.sigma(points[:, 2].max()) + SMALL.depth_scale
            assert np.quantile(distance, 0.99) < bound
            assert np.median(distance) < noise.sigma(points[:, 2].max())
        checked += 1
    assert checked >= 2


def convex_footprints_overlap(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-6) -> bool:
    """Whether two 2D point sets' convex hulls overlap (by more than ``tolerance``): no edge normal
    of either hull separates them."""
    for hull_points in (a, b):
        hull = ConvexHull(hull_points)
        corners = hull_points[hull.vertices]
        edges = np.roll(corners, -1, axis=0) - corners
        for normal in np.column_stack([-edges[:, 1], edges[:, 0]]):
            pa, pb = a @ normal, b @ normal
            if pa.max() <= pb.min() + tolerance or pb.max() <= pa.min() + tolerance:
                return False
    return True


def test_objects_rest_on_the_plane_without_overlap(bunny, distractors):
    # A small table, so that the objects crowd it and only the footprint test keeps them apart
    # (none is put close beside another).
    counts = SceneCounts(target_copies=(5, 5), distractors=(0, 0))
    layout = SceneLayout(size_m=0.55, tilt_deg=(30.0, 30.0), distance_m=(0.7, 0.7), touching=0.0)
    frame = make_frame([bunny], distractors, np.random.default_rng(1), SMALL, counts, EXACT, layout)
    normal, offset = frame.plane[:3], frame.plane[3]
    assert np.linalg.norm(normal) == pytest.approx(1.0)
    assert offset > 0  # the camera (origin) is on the side the normal points to
    in_plane = np.linalg.svd(np.eye(3) - np.outer(normal, normal))[0][:, :2]  # (3, 2) plane basis
    footprints = []
    for instance in frame.instances:
        posed = bunny.mesh.vertices @ instance.rotation + instance.translation
        height = posed @ normal + offset
        assert height.min() == pytest.approx(0.0, abs=1e-6)
        footprints.append(posed @ in_plane)
    assert len(footprints) >= 3
    for i in range(len(footprints)):
        for j in range(i + 1, len(footprints)):
            assert not convex_footprints_overlap(footprints[i], footprints[j])

    # The support's returns lie on the stored plane, but for the small table's side faces.
    plane_points = valid_points(back_project(frame.depth, SMALL))[frame.point_labels() == NO_RETURN]
    assert len(plane_points) > 1000
    assert np.quantile(np.abs(plane_points @ normal + offset), 0.9) < 1e-4


def test_close_objects_nearly_touch_without_interpenetrating(bunny):
    import open3d as o3d

    counts = SceneCounts(target_copies=(4, 4), distractors=(0, 0))
    layout = SceneLayout(touching=1.0, tilt_deg=(45.0, 45.0), distance_m=(0.8, 0.8))
    frame = make_frame([bunny], [], np.random.default_rng(5), SMALL, counts, EXACT, layout)
    assert len(frame.instances) >= 3
    gaps = []
    for i, first in enumerate(frame.instances):
        scene = o3d.t.geometry.RaycastingScene()
        vertices = (bunny.mesh.vertices @ first.rotation + first.translation).astype(np.float32)
        scene.add_triangles(o3d.core.Tensor(vertices), o3d.core.Tensor(bunny.mesh.faces.astype(np.uint32)))
        for j, second in enumerate(frame.instances):
            if i != j:
                sample = (bunny.surface_sample @ second.rotation + second.translation).astype(np.float32)
                gaps.append(float(scene.compute_distance(o3d.core.Tensor(sample)).numpy().min()))
    # Never closer than the clearance (no interpenetration), and some pairs are close enough to
    # touch in the sensor's eyes (a couple of voxels).
    assert min(gaps) >= layout.clearance_m - 1e-6
    assert min(gaps) < 0.02


def test_a_layout_for_small_parts_brings_the_camera_closer_and_keeps_objects_near(bunny):
    assert SceneLayout.for_size(0.25).distance_m == SceneLayout().distance_m  # the bunny's
    small = SceneLayout.for_size(0.15)
    assert small.distance_m == (0.5, 0.8) and small.max_range_m == pytest.approx(1.2)
    counts = SceneCounts(target_copies=(4, 4), distractors=(0, 0))
    layout = SceneLayout(tilt_deg=(70.0, 70.0), distance_m=(0.6, 0.6), max_range_m=0.8)
    frame = make_frame([bunny], [], np.random.default_rng(2), SMALL, counts, EXACT, layout)
    assert frame.instances
    for instance in frame.instances:
        centre = bunny.mesh.bounds.mean(axis=0) @ instance.rotation + instance.translation
        assert np.linalg.norm(centre) <= 0.8 + 0.5 * np.linalg.norm(bunny.mesh.extents)


def test_visible_fraction_is_one_alone_and_lower_behind_an_occluder(bunny):
    target = at(bunny, (0.0, 0.0, 0.8))
    occluder = at(box_object("board", (0.1, 0.3, 0.01)), (0.05, 0.0, 0.6), kind="distractor")
    rng = np.random.default_rng(0)

    alone = render_frame([target], rng, SMALL, EXACT).instances[0]
    hidden = render_frame([target, occluder], rng, SMALL, EXACT).instances[0]
    hidden_noisy = render_frame([target, occluder], rng, SMALL, NoiseModel()).instances[0]

    assert alone.visible_fraction == 1.0
    assert 0.2 < hidden.visible_fraction < 0.8
    # Without dropout, the pixels seen over the pixels covered alone are the two masks' sizes.
    assert hidden.visible_fraction == pytest.approx(hidden.n_points / alone.n_points)
    # Occlusion is geometry: the sensor's dropout does not change it.
    assert hidden_noisy.visible_fraction == hidden.visible_fraction
    assert hidden_noisy.n_points < hidden.n_points


def test_visible_fractions_of_random_frames_are_fractions(bunny, distractors):
    counts = SceneCounts(target_copies=(2, 3), distractors=(3, 4))
    fractions = []
    for seed in range(4):
        frame = make_frame([bunny], distractors, np.random.default_rng(seed), SMALL, counts)
        fractions += [instance.visible_fraction for instance in frame.instances]
    assert fractions
    assert all(0.0 <= fraction <= 1.0 for fraction in fractions)


def test_back_project_then_project_gives_the_pixels_and_depths():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.4, 3.0, size=(SMALL.height, SMALL.width)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.2] = 0.0

    organized = back_project(depth, SMALL)
    assert organized.shape == (SMALL.height, SMALL.width, 3)
    assert np.isnan(organized[depth == 0]).all()
    rows, cols = np.nonzero(depth > 0)
    points = valid_points(organized)
    assert points.shape == (len(rows), 3)
    pixels = project(points, SMALL)
    np.testing.assert_allclose(pixels[:, 0], cols, atol=1e-3)
    np.testing.assert_allclose(pixels[:, 1], rows, atol=1e-3)
    np.testing.assert_array_equal(points[:, 2], depth[rows, cols])


def test_back_project_rejects_a_depth_of_the_wrong_size():
    with pytest.raises(ValueError, match="shape"):
        back_project(np.zeros((10, 10)), SMALL)


def test_zero_noise_gives_the_exact_ray_cast_depth():
    table = support_plane(tilt_deg=40.0, distance_m=0.9, roll_deg=5.0, size_m=4.0)
    placements = [table.placement()]
    exact = render_frame(placements, np.random.default_rng(0), SMALL, EXACT)
    noisy = render_frame(placements, np.random.default_rng(0), SMALL, NoiseModel())

    directions = pixel_directions(SMALL)
    normal, offset = table.coefficients[:3], table.coefficients[3]
    analytic = -offset / (directions @ normal)  # z where each pixel's ray meets the plane
    in_plane = (directions * analytic[..., None] - table.origin) @ table.axes[:2].T
    inside = (analytic > 0) & (np.abs(in_plane) < table.size_m / 2 - 0.01).all(axis=-1)
    assert inside.mean() > 0.9
    assert (exact.depth[inside] > 0).all()
    np.testing.assert_allclose(exact.depth[inside], analytic[inside], rtol=1e-5)
    assert exact.depth.dtype == np.float32
    both = inside & (noisy.depth > 0)
    assert np.abs(noisy.depth[both] - exact.depth[both]).mean() > 1e-4


def test_depth_noise_grows_with_depth():
    table = support_plane(tilt_deg=62.0, distance_m=1.2, size_m=6.0)
    placements = [table.placement()]
    noise = NoiseModel(sigma_angle_m=0.0, dropout=0.0)
    exact = render_frame(placements, np.random.default_rng(0), SMALL, EXACT).depth.astype(np.float64)
    noisy = render_frame(placements, np.random.default_rng(0), SMALL, noise).depth.astype(np.float64)

    both = (exact > 0) & (noisy > 0)
    z, error = exact[both], (noisy - exact)[both]
    near, far = z < np.quantile(z, 0.25), z > np.quantile(z, 0.75)
    assert z[far].mean() > 1.5 * z[near].mean()
    spreads = []
    for band in (near, far):
        expected = np.sqrt(np.mean(noise.sigma(z[band]) ** 2) + SMALL.depth_scale**2 / 12)
        spread = error[band].std()
        assert 0.8 < spread / expected < 1.25
        assert abs(error[band].mean()) < 0.2 * expected
        spreads.append(spread)
    assert spreads[1] > 2.0 * spreads[0]
    quantized = noisy[noisy > 0] / SMALL.depth_scale
    np.testing.assert_allclose(quantized, np.round(quantized), atol=1e-3)


def test_grazing_returns_are_dropped():
    table = support_plane(tilt_deg=72.0, distance_m=1.0, size_m=8.0)
    placements = [table.placement()]
    noise = NoiseModel()
    exact = render_frame(placements, np.random.default_rng(0), SMALL, EXACT).depth
    noisy = render_frame(placements, np.random.default_rng(0), SMALL, noise).depth

    directions = pixel_directions(SMALL)
    cos = np.abs(directions @ table.normal) / np.linalg.norm(directions, axis=-1)
    incidence_deg = np.rad2deg(np.arccos(cos))
    hit = exact > 0
    beyond = hit & (incidence_deg > noise.grazing_max_deg + 0.5)
    head_on = hit & (incidence_deg < noise.grazing_start_deg - 5.0)
    assert beyond.sum() > 500 and head_on.sum() > 500
    assert not (noisy[beyond] > 0).any()
    assert (noisy[head_on] > 0).mean() > 0.97
    lower = hit & (incidence_deg > noise.grazing_start_deg) & (incidence_deg < noise.grazing_start_deg + 5)
    upper = hit & (incidence_deg > noise.grazing_max_deg - 5) & (incidence_deg < noise.grazing_max_deg)
    assert (noisy[lower] > 0).mean() > (noisy[upper] > 0).mean() + 0.3


def test_edge_pixels_are_dropped():
    cube = at(box_object("cube", (0.2, 0.2, 0.2)), (0.0, 0.0, 0.6), kind="distractor")
    wall = at(box_object("wall", (4.0, 4.0, 0.02)), (0.0, 0.0, 1.5), kind="distractor")
    exact = render_frame([cube, wall], np.random.default_rng(0), SMALL, EXACT).depth
    noisy = render_frame([cube, wall], np.random.default_rng(0), SMALL, NoiseModel()).depth

    jump = np.zeros(exact.shape, dtype=bool)
    jump[:, 1:] |= np.abs(np.diff(exact, axis=1)) > 0.3
    jump[:, :-1] |= np.abs(np.diff(exact, axis=1)) > 0.3
    jump[1:, :] |= np.abs(np.diff(exact, axis=0)) > 0.3
    jump[:-1, :] |= np.abs(np.diff(exact, axis=0)) > 0.3
    near_jump = jump.copy()
    for axis in (0, 1):
        for shift in (-2, -1, 1, 2):
            near_jump |= np.roll(jump, shift, axis=axis)
    assert jump.sum() > 100
    assert (noisy[jump] > 0).mean() < 0.25
    interior = (exact > 0) & ~near_jump
    assert (noisy[interior] > 0).mean() > 0.97


def test_a_frame_without_targets_has_no_instances(bunny, distractors):
    frame = make_frame([], distractors, np.random.default_rng(2), SMALL, SceneCounts(distractors=(3, 3)))
    assert frame.instances == []
    assert set(np.unique(frame.labels)) == {NO_RETURN, DISTRACTOR}
    no_copies = make_frame([bunny], distractors, np.random.default_rng(2), SMALL, SceneCounts((0, 0), (1, 2)))
    assert no_copies.instances == []
    assert (no_copies.labels < 0).all()


def test_a_vga_frame_has_at_most_one_point_per_pixel(bunny, distractors):
    intrinsics = Intrinsics()
    counts = SceneCounts(target_copies=(1, 2), distractors=(2, 4))
    frame = make_frame([bunny], distractors, np.random.default_rng(8), intrinsics, counts)

    points = frame.points()
    assert frame.depth.shape == (480, 640) and frame.depth.dtype == np.float32
    assert frame.labels.shape == (480, 640) and frame.labels.dtype == np.int32
    assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 3
    assert 100_000 < len(points) <= 640 * 480
    assert len(points) == int((frame.depth > 0).sum()) == len(frame.point_labels())
    assert np.isfinite(points).all()
    assert (points[:, 2] >= NoiseModel().range_m[0]).all()
    assert {instance.name for instance in frame.instances} == {"bunny"}
    units = frame.depth_units()
    assert units.dtype == np.uint16
    np.testing.assert_allclose(units * intrinsics.depth_scale, frame.depth, atol=1e-6)


def test_the_depth_png_of_a_frame_reads_back_as_its_cloud(bunny, distractors):
    # What a client sends to the service (a 16-bit PNG and the intrinsics) back-projects to the
    # frame's own points, within the millimetre the PNG rounds depth to.
    frame = make_frame([bunny], distractors, np.random.default_rng(5), SMALL, SceneCounts((1, 1), (2, 2)))
    buffer = io.BytesIO()
    Image.fromarray(frame.depth_units()).save(buffer, format="PNG")
    depth = read_depth_image(
        "frame.png", buffer.getvalue(), SMALL.pinhole(), max_points=SMALL.width * SMALL.height
    )
    served = valid_points(back_project(depth, SMALL))
    points = frame.points()
    assert served.shape == points.shape
    np.testing.assert_allclose(served, points, atol=SMALL.depth_scale)


def test_scene_make_writes_seeded_frames_whose_files_agree(tmp_path, copy_package):
    """``cloudpose scene make``: per frame a depth PNG, its camera and true poses (JSON) and its
    cloud; the PNG back-projects to the cloud, the true pose puts the mesh on the frame's points,
    and the same seed gives the same bytes."""
    import json
    import subprocess

    from cloudpose.store.package import SHIPPED_STORE
    from tests.service.test_uvicorn import cloudpose_command

    def make(out, *extra, objects="bunny"):
        arguments = ["--count", "2", "--seed", "4", "--scale", "0.25", "--objects", objects, *extra]
        command = [*cloudpose_command(), "scene", "make", str(out), *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    made = make(tmp_path / "a")
    assert made.returncode == 0, made.stderr
    assert made.stdout.count("wrote ") == 2 and "160 x 120" in made.stdout
    assert made.stderr.strip().startswith(
        f"try: curl -s -X POST localhost:8000/v1/detect -F depth=@{tmp_path / 'a' / 'frame_001'}.png -F fx="
    )
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == [
        f"frame_00{index}{suffix}" for index in (0, 1) for suffix in (".json", ".npy", ".png")
    ]
    about = json.loads((tmp_path / "a" / "frame_000.json").read_text())
    assert about["camera"] == {
        "fx": SMALL.fx,
        "fy": SMALL.fy,
        "cx": SMALL.cx,
        "cy": SMALL.cy,
        "depth_scale": 0.001,
    }
    assert about["size"] == [160, 120] and about["seed"] == 4 and about["frame"] == 0
    assert about["command"].startswith("cloudpose scene make ")
    depth = read_depth_image(
        "frame_000.png", (tmp_path / "a" / "frame_000.png").read_bytes(), SMALL.pinhole(), 160 * 120
    )
    points = np.load(tmp_path / "a" / "frame_000.npy")
    np.testing.assert_allclose(valid_points(back_project(depth, SMALL)), points, atol=SMALL.depth_scale)
    (truth,) = about["instances"]
    metres = json.loads((SHIPPED_STORE / "bunny" / "object.json").read_text())["units"]["metres_per_unit"]
    mesh = trimesh.load(SHIPPED_STORE / "bunny" / "mesh.ply", force="mesh")
    matrix = np.asarray(truth["pose_matrix"])
    posed = (np.asarray(mesh.vertices) * metres) @ matrix[:3, :3].T + matrix[:3, 3]
    # canonical = points @ rotation + translation takes the posed mesh back to the file's frame.
    np.testing.assert_allclose(
        posed @ np.asarray(truth["rotation"]) + truth["translation"],
        np.asarray(mesh.vertices) * metres,
        atol=1e-9,
    )
    near, _ = cKDTree(posed).query(points, distance_upper_bound=0.01)
    assert np.isfinite(near).sum() >= 0.9 * truth["n_points"]  # the bunny's points are where it stands

    again = make(tmp_path / "b")
    assert again.returncode == 0, again.stderr
    for name in ("frame_001.png", "frame_001.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    unitless = tmp_path / "unitless"
    descriptor = copy_package(SHIPPED_STORE / "bunny", unitless, "blob") / "object.json"
    meta = json.loads(descriptor.read_text())
    descriptor.write_text(json.dumps({**meta, "units": {"name": None, "metres_per_unit": None}}))
    refused = make(tmp_path / "c", "--store", str(unitless), objects="blob")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: blob was added without units, and a frame is in metres: add it again with --units"
    )
    example = make(tmp_path / "d", "--example")
    assert example.returncode == 1
    assert (
        example.stderr.strip()
        == "error: --example makes one frame of one object: pass --objects NAME --count 1"
    )


def test_frames_made_without_a_layout_scale_it_to_the_largest_target() -> None:
    reference = box_object("reference", (0.15, 0.15, 0.1323))  # a 0.25 m diagonal, as the bunny's
    assert SceneLayout.for_targets([reference]) == SceneLayout() == SceneLayout.for_targets([])
    large = SceneLayout.for_targets([SceneObject("crate", trimesh.creation.box((0.6, 0.5, 0.4)))])
    diagonal = float(np.linalg.norm((0.6, 0.5, 0.4)))
    assert large == SceneLayout.for_size(diagonal)
    assert large.distance_m == pytest.approx((2.4 * diagonal, 4.8 * diagonal))
    assert large.size_m == pytest.approx(5.0 * diagonal)
