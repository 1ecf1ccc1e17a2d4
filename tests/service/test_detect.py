"""Whole frames: the detector finds the bunnies of generated cluttered frames with their true poses and
nothing in frames without them; /v1/detect on a real server takes clouds, organized clouds and
depth images with intrinsics, gives the same detections for a depth PNG as for its cloud, and
refuses bad frames with their status and detail."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh
from PIL import Image

from cloudpose.detection.detect import DETECTION_PARAMS, detect, voxel_labels
from cloudpose.estimation.served import ServedObject
from cloudpose.geometry.rotations import geodesic_deg
from cloudpose.settings import Settings
from cloudpose.store.package import ObjectStore
from pipeline.data.scenes import Frame, Intrinsics, SceneCounts, SceneObject, make_frame
from tests.service.test_uvicorn import cloudpose_command, serving_store

REPO_ROOT = Path(__file__).resolve().parents[2]
# A found instance's pose is within these of the truth (degrees; metres).
ROTATION_DEG = 2.0
TRANSLATION_M = 0.005


@pytest.fixture(scope="module")
def bunny(shipped_store: Path) -> ServedObject:
    return ServedObject.from_package(ObjectStore(shipped_store).get("bunny"))


@pytest.fixture(scope="module")
def scene_bunny(bunny: ServedObject, shipped_store: Path) -> SceneObject:
    """The served bunny's mesh, in metres (its package's units), as the scenes place it."""
    mesh = trimesh.load(shipped_store / "bunny" / "mesh.ply", force="mesh")
    mesh.apply_scale(bunny.metres_per_unit)
    return SceneObject("bunny", mesh)


@pytest.fixture(scope="module")
def distractors() -> list[SceneObject]:
    return [
        SceneObject("crate", trimesh.creation.box((0.09, 0.06, 0.11))),
        SceneObject("can", trimesh.creation.cylinder(0.035, 0.09, sections=24)),
    ]


def frame_with(scene_bunny, distractors, seed: int, copies: tuple[int, int]) -> Frame:
    counts = SceneCounts(target_copies=copies, distractors=(2, 2))
    return make_frame([scene_bunny], distractors, np.random.default_rng(seed), Intrinsics(), counts)


def matches(frame: Frame, detections: list[dict]) -> int:
    """How many ground-truth instances a detection (object pose in the sensor frame) matches."""
    hits = 0
    for instance in frame.instances:
        for detection in detections:
            rotation = np.asarray(detection["pose_matrix"])[:3, :3].T  # row-vector object rotation
            translation = np.asarray(detection["pose_matrix"])[:3, 3]
            if (
                geodesic_deg(rotation, instance.rotation) < ROTATION_DEG
                and np.linalg.norm(translation - instance.translation) < TRANSLATION_M
            ):
                hits += 1
                break
    return hits


def test_voxel_labels_are_means_of_their_points() -> None:
    points = np.array([[0.0, 0.0, 0.0], [0.4, 0.0, 0.0], [1.2, 0.0, 0.0], [1.6, 0.2, 0.0]])
    means, voxel = voxel_labels(points, 1.0)
    assert voxel[0] == voxel[1] and voxel[2] == voxel[3] and voxel[0] != voxel[2]
    np.testing.assert_allclose(means[voxel[0]], [0.2, 0.0, 0.0])
    np.testing.assert_allclose(means[voxel[2]], [1.4, 0.1, 0.0])


def test_the_bunnies_of_a_cluttered_frame_are_found_with_their_poses(bunny, scene_bunny, distractors) -> None:
    frame = frame_with(scene_bunny, distractors, seed=11, copies=(2, 2))
    assert len(frame.instances) == 2
    report = detect(frame.points().astype(np.float64), {"bunny": bunny})
    found = [detection.to_dict() for detection in report.detections]
    assert all(detection["object"] == "bunny" and detection["confident"] for detection in found)
    assert matches(frame, found) == 2
    assert len(found) == 2  # no duplicate, nothing on the crate, the can or the table
    assert all(0.3 < detection["visible_fraction"] <= 1.0 for detection in found)


def test_a_frame_without_the_object_gets_no_detection(bunny, scene_bunny, distractors) -> None:
    frame = frame_with(scene_bunny, distractors, seed=12, copies=(0, 0))
    assert frame.instances == []
    assert detect(frame.points().astype(np.float64), {"bunny": bunny}).detections == []


# The service ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path):
    with serving_store(shipped_store, tmp_path_factory.mktemp("detect")) as url:
        yield url


@pytest.fixture(scope="module")
def frame(scene_bunny, distractors) -> Frame:
    return frame_with(scene_bunny, distractors, seed=11, copies=(2, 2))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def png_bytes(depth_units: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(depth_units).save(buffer, format="PNG")
    return buffer.getvalue()


def camera_fields(intrinsics: Intrinsics) -> dict[str, str]:
    return {
        "fx": str(intrinsics.fx),
        "fy": str(intrinsics.fy),
        "cx": str(intrinsics.cx),
        "cy": str(intrinsics.cy),
        "depth_scale": str(intrinsics.depth_scale),
    }


def test_detect_route_takes_a_frame_file_and_a_depth_png_alike(server: str, frame: Frame) -> None:
    cloud = httpx.post(
        f"{server}/v1/detect", files={"file": ("frame.npy", npy_bytes(frame.points()))}, timeout=60
    )
    assert cloud.status_code == 200, cloud.text
    answer = cloud.json()
    assert answer["n_points"] == len(frame.points()) and answer["complete"] is True
    assert matches(frame, answer["detections"]) == 2

    depth = httpx.post(
        f"{server}/v1/detect",
        files={"depth": ("frame.png", png_bytes(frame.depth_units()))},
        data=camera_fields(frame.intrinsics),
        timeout=60,
    )
    assert depth.status_code == 200, depth.text
    from_depth = depth.json()
    assert from_depth["n_points"] == answer["n_points"]
    assert len(from_depth["detections"]) == len(answer["detections"])
    for first, second in zip(answer["detections"], from_depth["detections"], strict=True):
        rotation_a = np.asarray(first["pose_matrix"])[:3, :3]
        rotation_b = np.asarray(second["pose_matrix"])[:3, :3]
        assert geodesic_deg(rotation_a, rotation_b) < 0.5
        # Where the object lies (the back translation would scale the turn by the range).
        shift = np.asarray(first["pose_matrix"])[:3, 3] - np.asarray(second["pose_matrix"])[:3, 3]
        assert np.linalg.norm(shift) < 0.002


def test_an_organized_cloud_with_missing_returns_is_a_frame(server: str, frame: Frame) -> None:
    from cloudpose.io.frames import back_project

    organized = back_project(frame.depth, frame.intrinsics.pinhole()).astype(np.float32)  # NaN holes
    assert np.isnan(organized).any()
    answer = httpx.post(
        f"{server}/v1/detect?objects=bunny&max_instances=1",
        files={"file": ("organized.npy", npy_bytes(organized))},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["n_points"] == len(frame.points())
    assert len(answer.json()["detections"]) == 1


def test_a_vga_frame_at_the_point_limit_is_accepted(server: str) -> None:
    # Every pixel of a VGA frame returns: a flat wall 1 m away, with nothing on it.
    depth = np.full((480, 640), 1000, dtype=np.uint16)
    answer = httpx.post(
        f"{server}/v1/detect",
        files={"depth": ("wall.png", png_bytes(depth))},
        data=camera_fields(Intrinsics()),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["n_points"] == 640 * 480
    assert answer.json()["detections"] == []


@pytest.mark.parametrize(
    ("request_kwargs", "status", "detail"),
    [
        (
            {"files": {"depth": ("frame.png", b"\x89PNG broken")}, "data": camera_fields(Intrinsics())},
            422,
            "'frame.png' is not a readable PNG image",
        ),
        (
            {
                "files": {"depth": ("frame.png", png_bytes(np.full((8, 8), 900, np.uint16)))},
                "data": {"fx": "0"},
            },
            422,
            "bad camera intrinsics: fy is missing; cx is missing; cy is missing; fx must be positive, got 0",
        ),
        (
            {"files": {"depth": ("frame.jpg", b"jpeg")}, "data": camera_fields(Intrinsics())},
            415,
            "unsupported depth image type '.jpg'; send a 16-bit .png or an .npy (H, W)",
        ),
        (
            {"files": {"picture": ("frame.png", b"x")}},
            422,
            "send one frame: a cloud file in the multipart field 'file', or a depth image (.png, .npy) "
            "in 'depth' with the fields fx, fy, cx, cy (and depth_scale)",
        ),
        (
            {"json": {"points": [[0.0, 0.0, 1.0]] * 40, "viewpoint": [0.0, "up", 0.0]}},
            422,
            "viewpoint must be a list of [x, y, z] triples of numbers",
        ),
    ],
    ids=["corrupt-png", "bad-intrinsics", "jpg", "wrong-field", "bad-viewpoint"],
)
def test_bad_frames_are_refused(server: str, request_kwargs: dict, status: int, detail: str) -> None:
    answer = httpx.post(f"{server}/v1/detect", timeout=30, **request_kwargs)
    assert (answer.status_code, answer.json()["detail"]) == (status, detail)


def test_unknown_objects_and_frames_over_the_limit_are_refused(server: str) -> None:
    unknown = httpx.post(f"{server}/v1/detect?objects=teapot", json={"points": [[0, 0, 1]] * 40}, timeout=30)
    assert unknown.status_code == 404
    assert unknown.json()["detail"].startswith("unknown object 'teapot'")
    limit = Settings().max_frame_points
    too_large = httpx.post(
        f"{server}/v1/detect",
        files={"depth": ("big.png", png_bytes(np.zeros((1000, 1001), np.uint16)))},
        data=camera_fields(Intrinsics()),
        timeout=30,
    )
    assert too_large.status_code == 413
    assert too_large.json()["detail"] == (
        f"'big.png' is 1001 x 1000 = 1001000 pixels; this service accepts at most {limit} points"
    )


def test_cli_detect_prints_the_detections_and_fails_in_one_line(
    frame: Frame, tmp_path: Path, shipped_store: Path
) -> None:
    import json
    import subprocess

    cloud = tmp_path / "frame.npy"
    cloud.write_bytes(npy_bytes(frame.points()))
    done = subprocess.run(
        [*cloudpose_command(), "detect", str(cloud), "--store", str(shipped_store)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert matches(frame, json.loads(done.stdout)["detections"]) == 2
    depth = tmp_path / "frame.png"
    depth.write_bytes(png_bytes(frame.depth_units()))
    failed = subprocess.run(
        [*cloudpose_command(), "detect", str(depth), "--store", str(shipped_store), "--fx", "525"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert (
        failed.stderr.strip() == "error: bad camera intrinsics: fy is missing; cx is missing; cy is missing"
    )


def test_the_shipped_example_frame_holds_the_bunny_that_detect_finds(server: str) -> None:
    """The example frame of the bunny's package (``cloudpose scene make --example``), posted as
    the documentation shows, as a depth PNG with its camera and as a cloud."""
    import json

    package = ObjectStore(REPO_ROOT / "data" / "objects").get("bunny")
    files = package.meta["example_frame"]["files"]
    assert files == ["example_frame.json", "example_frame.npy", "example_frame.png"]
    assert sum((package.path / name).stat().st_size for name in files) < 1_000_000
    about = json.loads((package.path / "example_frame.json").read_text())
    assert about["command"] == package.meta["example_frame"]["command"]
    (truth,) = about["instances"]
    assert truth["object"] == "bunny"
    camera = {key: str(value) for key, value in about["camera"].items()}
    answers = [
        httpx.post(
            f"{server}/v1/detect",
            files={"depth": ("example_frame.png", (package.path / "example_frame.png").read_bytes())},
            data=camera,
            timeout=60,
        ),
        httpx.post(
            f"{server}/v1/detect",
            files={"file": ("example_frame.npy", (package.path / "example_frame.npy").read_bytes())},
            timeout=60,
        ),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        (found,) = [item for item in answer.json()["detections"] if item["confident"]]
        assert found["object"] == "bunny" and found["found"] is True
        rotation = np.asarray(found["rotation"])
        assert geodesic_deg(rotation, np.asarray(truth["rotation"])) < ROTATION_DEG
        assert np.linalg.norm(np.subtract(found["translation"], truth["translation"])) < TRANSLATION_M
        np.testing.assert_allclose(found["pose_matrix"], truth["pose_matrix"], atol=0.01)


def test_an_object_without_units_is_skipped_with_a_warning_not_a_422(tmp_path: Path, copy_package) -> None:
    """A frame in metres and a store holding an object added without units: the others are still
    looked for, and the answer says which object was not; with only that object, the 422 stays."""
    import json

    from cloudpose.detection.detect import detect
    from cloudpose.estimation.served import ServedObject
    from cloudpose.io.clouds import CloudError

    shipped = ObjectStore(REPO_ROOT / "data" / "objects")
    folder = copy_package(shipped.get("bunny").path, tmp_path, "unitless")
    descriptor = folder / "object.json"
    meta = json.loads(descriptor.read_text())
    descriptor.write_text(json.dumps({**meta, "units": {"name": None, "metres_per_unit": None}}))
    bunny = ServedObject.from_package(shipped.get("bunny"))
    unitless = ServedObject.from_package(ObjectStore(tmp_path).get("unitless"))
    frame = np.load(shipped.get("bunny").path / "example_frame.npy")

    report = detect(frame, {"unitless": unitless, "bunny": bunny}, "m")

    assert [item.object for item in report.detections] == ["bunny"]
    (warning,) = report.answer(len(frame), None)["warnings"]
    assert warning.startswith("object 'unitless' was added without units") and "not looked for" in warning
    with pytest.raises(CloudError) as refused:
        detect(frame, {"unitless": unitless}, "m")
    assert refused.value.status == 422


def test_a_frame_of_random_points_stops_at_its_budget_and_says_what_it_left() -> None:
    """Clutter that cuts into many segments, each posed in turn (after the frame's votes): past
    the budget no segment is posed, and the answer says how many were not looked at."""
    import time

    from cloudpose.estimation.served import ServedObject

    bunny = ServedObject.from_package(ObjectStore(REPO_ROOT / "data" / "objects").get("bunny"))
    rng = np.random.default_rng(0)
    # Blobs of a bunny's size scattered in front of the camera: many segments, none the bunny.
    centres = rng.uniform([-0.6, -0.4, 1.0], [0.6, 0.4, 2.0], size=(60, 3))
    frame = np.concatenate([centre + rng.normal(0, 0.03, size=(800, 3)) for centre in centres])
    budget_s = 0.3

    started = time.perf_counter()
    report = detect(frame, {"bunny": bunny}, "m", budget_s=budget_s)
    elapsed = time.perf_counter() - started

    assert not report.complete
    assert report.segments > report.examined >= 0
    (warning,) = report.answer(len(frame), budget_s)["warnings"]
    assert f"{report.segments - report.examined} of {report.segments} not looked at" in warning
    if report.votes_left:
        assert f"nor {report.votes_left} of the poses the frame's votes put forward" in warning
    # One segment's search may run past the budget by its own budget, never more.
    assert elapsed < budget_s + 2 * DETECTION_PARAMS.segment_budget_s + 1.0
