"""Served objects: answers in the mesh file's frame and the cloud's units, ``found`` and its
refusals, and several objects side by side behind a real uvicorn server.

Convention (row vectors): ``canonical = points @ rotation + translation``, canonical being the
mesh file's own coordinates in the cloud's units.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cloudpose.estimation.served import ObjectPose, ServedObject, degenerate_reason
from cloudpose.io.clouds import CloudError
from cloudpose.store.package import ObjectPackage, ObjectStore, read_package
from pipeline.data.mesh import load_mesh, sample_surface
from pipeline.objects.adding import add_object

pytest.importorskip("manifold3d", reason="make_objects cuts its holes with manifold3d")

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "make_objects.py"
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
BUNNY_METRES_PER_UNIT = 0.015866
BUNNY_MODEL_ID = "bunny-pointnet-n512-657a623e"
BUNNY_UNITS = "bunny unit (~15.9 mm)"
BUNNY_DIAGONAL = 15.757  # its mesh's bounding-box diagonal, bunny units
INCH_M = 0.0254
# Recovered canonical points must lie within this fraction of the object's diagonal of the truth.
TOLERANCE = 1e-3
ROTATION_TOLERANCE_DEG = 0.1
CLOUD_POINTS = 1024
READY_TIMEOUT_S = 60.0
# The 80 x 50 x 30 box's symmetries in its file's frame (origin at a corner, edges along the
# axes): the half turns about each axis through its centre.
BOX_SYMMETRY = (
    [np.diag(signs) for signs in ([1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1])],
    np.array([40.0, 25.0, 15.0]),
)
POORLY_EXPLAINED = "the best pose explains the cloud poorly (confidence "
SIZE_WARNING = (
    "the cloud's size does not fit the object's in its own units; it was posed as points in {units} "
    "(scale {scale:.6g} to the object's units); say what the points are in with ?units= to skip the search"
)


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures


class Posed:
    """Fresh surface points of a mesh, in the file's frame, rigidly posed.

    Attributes:
        canonical: (N, 3) points in the mesh file's own coordinates.
        points: (N, 3) ``canonical @ object_rotation + object_translation``.
        rotation / translation: the true back transform, ``canonical = points @ rotation + translation``.
    """

    def __init__(self, mesh_path: Path, seed: int, count: int = CLOUD_POINTS) -> None:
        mesh = load_mesh(mesh_path)
        rng = np.random.default_rng(seed)
        self.diagonal = mesh.diagonal
        self.canonical = sample_surface(mesh, count, rng) + mesh.offset  # internal -> file frame
        self.object_rotation = Rotation.random(random_state=seed).as_matrix()
        self.object_translation = rng.uniform(-1.0, 1.0, size=3) * self.diagonal
        self.points = self.canonical @ self.object_rotation + self.object_translation
        self.rotation = self.object_rotation.T
        self.translation = -self.object_translation @ self.rotation

    def xyz(self) -> bytes:
        buffer = io.BytesIO()
        np.savetxt(buffer, self.points, fmt="%.10g")
        return buffer.getvalue()

    def npy(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, self.points)
        return buffer.getvalue()


def canonical_error(rotation, translation, points: np.ndarray, canonical: np.ndarray, symmetry=None) -> float:
    """Largest distance between ``points @ rotation + translation`` and the true canonical points;
    with ``symmetry`` (turns (K, 3, 3) and the centre (3,) they turn about, file frame), the
    best over the turned copies."""
    recovered = np.asarray(points) @ np.asarray(rotation) + np.asarray(translation)
    if symmetry is None:
        return float(np.abs(recovered - canonical).max())
    turns, centre = symmetry
    return min(float(np.abs((recovered - centre) @ turn + centre - canonical).max()) for turn in turns)


def angle_deg(rotation_a, rotation_b) -> float:
    return float(
        np.degrees(Rotation.from_matrix(np.asarray(rotation_a).T @ np.asarray(rotation_b)).magnitude())
    )


def assert_rotation(rotation) -> None:
    rotation = np.asarray(rotation)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-9)


def assert_poses(answer: dict, posed: Posed, symmetry=None) -> None:
    """A found answer whose back transform recovers the canonical points, in every form it gives."""
    assert answer["found"] is True, answer.get("reason")
    assert "reason" not in answer
    assert_rotation(answer["rotation"])
    error = canonical_error(
        answer["rotation"], answer["translation"], posed.points, posed.canonical, symmetry
    )
    assert error < TOLERANCE * posed.diagonal, f"max |canonical - truth| = {error:.3g}"
    matrix = np.asarray(answer["pose_matrix"])  # column vectors: observed = M @ [canonical; 1]
    np.testing.assert_allclose(matrix[3], [0.0, 0.0, 0.0, 1.0])
    recovered = posed.points @ np.asarray(answer["rotation"]) + np.asarray(answer["translation"])
    observed = recovered @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(observed, posed.points, atol=1e-6 * posed.diagonal)
    quaternion = Rotation.from_quat(answer["quaternion_xyzw"]).as_matrix()  # scipy is scalar-last too
    np.testing.assert_allclose(quaternion, matrix[:3, :3], atol=1e-6)


@pytest.fixture(scope="module")
def meshes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("make_objects", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_objects(tmp_path_factory.mktemp("meshes"))


def add(store: ObjectStore, name: str, mesh_path: Path, units: str | None, runs_dir: Path) -> ObjectPackage:
    return add_object(
        name, mesh_path, store=store, units=units, train=False, bench_count=0, runs_dir=runs_dir
    ).package


@pytest.fixture(scope="module")
def served_store(meshes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    """Three objects side by side: the shipped bunny (with its network) and two search-only parts."""
    store = ObjectStore(tmp_path_factory.mktemp("served") / "objects")
    store.root.mkdir()
    shutil.copytree(BUNNY, store.root / "bunny")
    runs_dir = tmp_path_factory.mktemp("runs")
    add(store, "box", meshes["box"], "mm", runs_dir)
    add(store, "pebble", meshes["pebble"], "mm", runs_dir)
    return store


@pytest.fixture(scope="module")
def side_store(meshes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    """Objects that only the direct tests use: far from their origin, and without units."""
    store = ObjectStore(tmp_path_factory.mktemp("side"))
    runs_dir = tmp_path_factory.mktemp("side_runs")
    add(store, "far_origin", meshes["far_origin"], "mm", runs_dir)
    add(store, "lever", meshes["lever"], None, runs_dir)
    return store


@pytest.fixture(scope="module")
def bunny() -> ServedObject:
    return ServedObject.from_package(read_package(BUNNY))


@pytest.fixture(scope="module")
def bunny_example() -> dict:
    """The shipped posed cloud, in bunny units, and its true back transform in the file's frame."""
    example = json.loads((BUNNY / "example.json").read_text())
    return {
        "points": np.asarray(example["points"]),
        "rotation": np.asarray(example["true_rotation"]),
        "translation": np.asarray(example["true_translation"]),
    }


# ---------------------------------------------------------------------------------------------
# The file's frame


@pytest.mark.parametrize("seed", [1, 2])
def test_far_origin_answers_in_the_file_frame(
    side_store: ObjectStore, meshes: dict[str, Path], seed: int
) -> None:
    package = side_store.get("far_origin")
    # The internal frame is 10 diagonals from the file's: answering in it would miss by that much.
    assert np.linalg.norm(package.centroid) == pytest.approx(10.0 * package.diagonal, rel=1e-6)
    posed = Posed(meshes["far_origin"], seed)
    (answer,) = ServedObject.from_package(package).estimate([posed.points])
    assert answer.found is True, answer.reason
    assert answer.reason is None
    assert answer.units == "mm"
    assert answer.scale == 1.0
    assert answer.warnings == []
    assert_rotation(answer.rotation)
    assert angle_deg(answer.rotation, posed.rotation) < ROTATION_TOLERANCE_DEG
    error = canonical_error(answer.rotation, answer.translation, posed.points, posed.canonical)
    assert error < TOLERANCE * package.diagonal, f"max |canonical - file coordinates| = {error:.3g}"
    # The object pose is the inverse of the back transform.
    np.testing.assert_allclose(answer.object_rotation, answer.rotation.T, atol=1e-12)
    np.testing.assert_allclose(
        posed.canonical @ answer.object_rotation + answer.object_translation,
        posed.points,
        atol=TOLERANCE * package.diagonal,
    )
    assert_poses(answer.to_dict(), posed)


# ---------------------------------------------------------------------------------------------
# Units, with the shipped bunny


def bunny_answer(bunny: ServedObject, example: dict, factor: float, units: str | None) -> ObjectPose:
    (answer,) = bunny.estimate([example["points"] * factor], units=units)
    return answer


def assert_bunny_pose(answer: ObjectPose, example: dict, factor: float) -> None:
    """The shipped example's true pose, its translation in the cloud's units (``factor`` per bunny unit)."""
    assert answer.found is True, answer.reason
    assert angle_deg(answer.rotation, example["rotation"]) < ROTATION_TOLERANCE_DEG
    np.testing.assert_allclose(
        answer.translation, example["translation"] * factor, rtol=0, atol=TOLERANCE * BUNNY_DIAGONAL * factor
    )


@pytest.mark.parametrize(
    ("units", "metres_per_cloud_unit"), [("m", 1.0), ("mm", 1e-3), ("cm", 1e-2), ("in", INCH_M)]
)
def test_bunny_in_declared_units(
    bunny: ServedObject, bunny_example: dict, units: str, metres_per_cloud_unit: float
) -> None:
    factor = BUNNY_METRES_PER_UNIT / metres_per_cloud_unit  # cloud units per bunny unit
    answer = bunny_answer(bunny, bunny_example, factor, units)
    assert_bunny_pose(answer, bunny_example, factor)
    assert answer.units == units
    assert answer.scale == pytest.approx(1.0 / factor, rel=1e-12)
    assert answer.warnings == []
    assert answer.to_dict()["units"] == units


@pytest.mark.parametrize(("units", "metres_per_cloud_unit"), [("m", 1.0), ("mm", 1e-3)])
def test_bunny_without_units_finds_the_scale(
    bunny: ServedObject, bunny_example: dict, units: str, metres_per_cloud_unit: float
) -> None:
    factor = BUNNY_METRES_PER_UNIT / metres_per_cloud_unit
    answer = bunny_answer(bunny, bunny_example, factor, None)
    assert_bunny_pose(answer, bunny_example, factor)
    assert answer.units == units
    assert answer.scale == pytest.approx(1.0 / factor, rel=1e-12)
    assert answer.warnings == [SIZE_WARNING.format(units=units, scale=1.0 / factor)]
    declared = bunny_answer(bunny, bunny_example, factor, units)
    np.testing.assert_allclose(answer.rotation, declared.rotation, atol=1e-9)
    np.testing.assert_allclose(answer.translation, declared.translation, atol=1e-9)


def test_bunny_in_its_own_units_has_no_warning(bunny: ServedObject, bunny_example: dict) -> None:
    answer = bunny_answer(bunny, bunny_example, 1.0, None)
    assert_bunny_pose(answer, bunny_example, 1.0)
    assert answer.units == BUNNY_UNITS
    assert answer.scale == 1.0
    assert answer.warnings == []


def test_bunny_without_units_in_inches_is_never_wrongly_found(
    bunny: ServedObject, bunny_example: dict
) -> None:
    # In inches the bunny spans 0.62 of its size in its own units: that fits, so no unit scale is
    # tried, and the answer must not claim a wrong pose.
    factor = BUNNY_METRES_PER_UNIT / INCH_M
    answer = bunny_answer(bunny, bunny_example, factor, None)
    if answer.found:
        assert_bunny_pose(answer, bunny_example, factor)
    else:
        assert answer.reason.startswith(POORLY_EXPLAINED), answer.reason


def test_answers_agree_across_units(bunny: ServedObject, bunny_example: dict) -> None:
    """The same cloud in m, mm and in: one pose, its translation converted (mm ↔ m ↔ in)."""
    in_m = bunny_answer(bunny, bunny_example, BUNNY_METRES_PER_UNIT, "m")
    in_mm = bunny_answer(bunny, bunny_example, BUNNY_METRES_PER_UNIT * 1e3, "mm")
    in_inches = bunny_answer(bunny, bunny_example, BUNNY_METRES_PER_UNIT / INCH_M, "in")
    for answer in (in_mm, in_inches):
        assert answer.found is True
        assert angle_deg(answer.rotation, in_m.rotation) < 1e-3
    np.testing.assert_allclose(in_mm.translation, in_m.translation * 1e3, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(in_inches.translation, in_m.translation / INCH_M, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        in_inches.object_translation, in_m.object_translation / INCH_M, rtol=1e-6, atol=1e-7
    )


def test_object_without_units_refuses_declared_units(
    side_store: ObjectStore, meshes: dict[str, Path]
) -> None:
    lever = ServedObject.from_package(side_store.get("lever"))
    assert lever.units is None and lever.metres_per_unit is None
    posed = Posed(meshes["lever"], seed=3, count=256)
    with pytest.raises(CloudError) as error:
        lever.estimate([posed.points], units="m")
    assert error.value.status == 422
    assert error.value.detail == (
        "object 'lever' was added without units, so a cloud in 'm' cannot be converted: send the "
        "points in the object's own units, without 'units'"
    )


def test_unknown_units_are_refused(bunny: ServedObject, bunny_example: dict) -> None:
    with pytest.raises(CloudError) as error:
        bunny.estimate([bunny_example["points"]], units="furlong")
    assert error.value.status == 422
    assert error.value.detail == "unknown unit 'furlong'; use one of um, mm, cm, dm, m, in, ft"


# ---------------------------------------------------------------------------------------------
# Clouds that cannot be posed


SAME_POINT = "all points are the same: a single point cannot fix a pose"
ON_A_LINE = "the points lie on one line: a line cannot fix a pose"


@pytest.mark.parametrize(
    ("cloud", "reason"),
    [
        (np.tile([[1.5, -2.0, 30.0]], (300, 1)), SAME_POINT),
        (np.linspace(0.0, 1.0, 300)[:, None] * [[60.0, -20.0, 10.0]] + [5.0, 6.0, 7.0], ON_A_LINE),
    ],
    ids=["same_point", "one_line"],
)
def test_degenerate_clouds_are_not_found(bunny: ServedObject, cloud: np.ndarray, reason: str) -> None:
    assert degenerate_reason(cloud) == reason
    (answer,) = bunny.estimate([cloud])
    assert answer.found is False
    assert answer.reason == reason
    as_dict = answer.to_dict()
    assert as_dict["found"] is False
    assert as_dict["reason"] == reason


def test_a_posed_cloud_is_not_degenerate(bunny_example: dict) -> None:
    assert degenerate_reason(bunny_example["points"]) is None


def test_cloud_of_another_object_is_not_found(side_store: ObjectStore, bunny_example: dict) -> None:
    lever = ServedObject.from_package(side_store.get("lever"))
    # Scaled to the lever's size, so the search tries in earnest rather than at another scale.
    cloud = bunny_example["points"][:CLOUD_POINTS] * (lever.diagonal / BUNNY_DIAGONAL)
    (answer,) = lever.estimate([cloud])
    assert answer.found is False
    assert answer.reason.startswith(POORLY_EXPLAINED), answer.reason


# ---------------------------------------------------------------------------------------------
# Several objects behind a real uvicorn server


@contextmanager
def running_server(store_root: Path, log_path: Path) -> Iterator[str]:
    """uvicorn serving ``store_root`` on a free loopback port; yields the base URL once it answers."""
    from tests.service.test_uvicorn import free_port
    from tests.service.test_uvicorn import running_server as started

    port = free_port()
    code = (
        "import uvicorn\n"
        "from service.app import create_app\n"
        "from cloudpose.settings import Settings\n"
        f"uvicorn.run(create_app(Settings(store={str(store_root)!r})), host='127.0.0.1', port={port}, "
        "log_level='warning')\n"
    )
    with started([sys.executable, "-c", code], port, log_path) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(served_store: ObjectStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with (
        running_server(served_store.root, log_path) as base_url,
        httpx.Client(base_url=base_url, timeout=30.0) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def clouds(served_store: ObjectStore) -> dict[str, Posed]:
    """A fresh posed cloud of each served object, from the package's own copy of its mesh."""
    return {
        name: Posed(served_store.get(name).mesh_path, seed=10 + index)
        for index, name in enumerate(served_store.names())
    }


def post_json(client: httpx.Client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_http_health_lists_the_objects(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model_id": BUNNY_MODEL_ID,
        "objects": ["box", "bunny", "pebble"],
    }


def test_http_lists_every_object(client: httpx.Client, served_store: ObjectStore) -> None:
    response = client.get("/v1/objects")
    assert response.status_code == 200
    listing = response.json()
    assert listing["default"] == "bunny"
    objects = {item["name"]: item for item in listing["objects"]}
    assert [item["name"] for item in listing["objects"]] == ["box", "bunny", "pebble"]
    expected = {
        "box": ("mm", 1e-3, "discrete", 4, "box-search", False),
        "bunny": (BUNNY_UNITS, BUNNY_METRES_PER_UNIT, "none", 1, BUNNY_MODEL_ID, True),
        "pebble": ("mm", 1e-3, "none", 1, "pebble-search", False),
    }
    for name, (units, metres, symmetry, order, model_id, trained) in expected.items():
        item = objects[name]
        assert item["units"] == units
        assert item["metres_per_unit"] == metres
        assert item["size"]["diagonal"] == pytest.approx(served_store.get(name).diagonal, rel=1e-12)
        assert item["symmetry"]["kind"] == symmetry
        assert item["symmetry"]["order"] == order
        assert len(item["symmetry"]["rotations"]) == order
        assert item["model_id"] == model_id
        assert item["trained"] is trained
    assert objects["box"]["size"]["extent"] == pytest.approx([80.0, 50.0, 30.0], abs=1e-9)
    assert max(objects["pebble"]["size"]["extent"]) == pytest.approx(60.0, abs=1e-5)  # its longest side
    one = client.get("/v1/objects/box")
    assert one.status_code == 200
    assert one.json() == objects["box"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/objects/nope", None),
        ("POST", "/v1/objects/nope/pose", "points"),
        ("POST", "/v1/objects/nope/pose/batch", "clouds"),
    ],
)
def test_http_unknown_object_is_404(
    client: httpx.Client, clouds: dict[str, Posed], method: str, path: str, body: str | None
) -> None:
    points = clouds["box"].points.tolist()
    payload = {"points": {"points": points}, "clouds": {"clouds": [{"points": points}]}, None: None}[body]
    response = client.request(method, path, json=payload)
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown object 'nope'; known objects: box, bunny, pebble"}


@pytest.mark.parametrize("name", ["box", "bunny", "pebble"])
def test_http_each_object_answers_its_own_cloud(
    client: httpx.Client, clouds: dict[str, Posed], name: str
) -> None:
    posed = clouds[name]
    answer = post_json(client, f"/v1/objects/{name}/pose", {"points": posed.points.tolist()})
    assert answer["object"] == name
    assert answer["n_points"] == CLOUD_POINTS
    assert (
        answer["model_id"] == {"box": "box-search", "bunny": BUNNY_MODEL_ID, "pebble": "pebble-search"}[name]
    )
    assert_poses(answer, posed, symmetry=BOX_SYMMETRY if name == "box" else None)
    if name == "box":
        assert answer["symmetry"]["kind"] == "discrete"
        assert len(answer["symmetry"]["equivalent_poses"]) == 4
        for other in answer["symmetry"]["equivalent_poses"]:  # each one an equally right pose
            error = canonical_error(
                other["rotation"], other["translation"], posed.points, posed.canonical, BOX_SYMMETRY
            )
            assert error < TOLERANCE * posed.diagonal
    else:
        assert "symmetry" not in answer
        assert angle_deg(answer["rotation"], posed.rotation) < ROTATION_TOLERANCE_DEG


def test_http_bunny_cloud_at_another_object_is_not_found(
    client: httpx.Client, bunny_example: dict, served_store
) -> None:
    pebble_diagonal = served_store.get("pebble").diagonal
    points = bunny_example["points"][:CLOUD_POINTS] * (pebble_diagonal / BUNNY_DIAGONAL)
    answer = post_json(client, "/v1/objects/pebble/pose", {"points": points.tolist()})
    assert answer["object"] == "pebble"
    assert answer["found"] is False
    assert answer["reason"].startswith(POORLY_EXPLAINED), answer["reason"]


def test_http_default_route_answers_for_the_bunny(client: httpx.Client, clouds: dict[str, Posed]) -> None:
    answer = post_json(client, "/v1/pose", {"points": clouds["bunny"].points.tolist()})
    assert answer["object"] == "bunny"
    assert answer["model_id"] == BUNNY_MODEL_ID
    assert_poses(answer, clouds["bunny"])


def test_http_units_in_metres(client: httpx.Client, bunny_example: dict) -> None:
    points = (bunny_example["points"] * BUNNY_METRES_PER_UNIT).tolist()
    by_query = post_json(client, "/v1/objects/bunny/pose?units=m", {"points": points})
    by_body = post_json(client, "/v1/pose", {"points": points, "units": "m"})
    for answer in (by_query, by_body):
        assert answer["found"] is True, answer.get("reason")
        assert answer["units"] == "m"
        assert answer["scale"] == pytest.approx(1.0 / BUNNY_METRES_PER_UNIT, rel=1e-12)
        assert "warnings" not in answer
        assert angle_deg(answer["rotation"], bunny_example["rotation"]) < ROTATION_TOLERANCE_DEG
        np.testing.assert_allclose(
            answer["translation"],
            bunny_example["translation"] * BUNNY_METRES_PER_UNIT,
            rtol=0,
            atol=TOLERANCE * BUNNY_DIAGONAL * BUNNY_METRES_PER_UNIT,
        )
    np.testing.assert_allclose(by_query["translation"], by_body["translation"], atol=1e-12)


def test_http_units_errors(client: httpx.Client, bunny_example: dict) -> None:
    points = (bunny_example["points"] * BUNNY_METRES_PER_UNIT).tolist()
    twice = client.post("/v1/pose?units=mm", json={"points": points, "units": "m"})
    assert twice.status_code == 422
    assert twice.json() == {"detail": "units given twice and differently: ?units=mm and 'units': 'm'"}
    unknown = client.post("/v1/objects/box/pose?units=furlong", json={"points": points})
    assert unknown.status_code == 422
    assert unknown.json() == {"detail": "unknown unit 'furlong'; use one of um, mm, cm, dm, m, in, ft"}


def test_http_batch_of_uploaded_files_names_each(client: httpx.Client, served_store: ObjectStore) -> None:
    mesh_path = served_store.get("pebble").mesh_path
    first, second = Posed(mesh_path, seed=21), Posed(mesh_path, seed=22)
    files = [
        ("files", ("first.xyz", first.xyz(), "text/plain")),
        ("files", ("second.npy", second.npy(), "application/octet-stream")),
    ]
    response = client.post("/v1/objects/pebble/pose/batch", files=files)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "pebble"
    assert answer["model_id"] == "pebble-search"
    assert [pose["file"] for pose in answer["poses"]] == ["first.xyz", "second.npy"]
    for pose, posed in zip(answer["poses"], (first, second), strict=True):
        assert pose["n_points"] == CLOUD_POINTS
        assert_poses(pose, posed)


def test_http_json_batch_at_the_default_route(
    client: httpx.Client, served_store: ObjectStore, clouds: dict[str, Posed]
) -> None:
    other = Posed(served_store.get("bunny").mesh_path, seed=23, count=300)
    body = {"clouds": [{"points": clouds["bunny"].points.tolist()}, {"points": other.points.tolist()}]}
    answer = post_json(client, "/v1/pose/batch", body)
    assert answer["object"] == "bunny"
    assert [pose["n_points"] for pose in answer["poses"]] == [CLOUD_POINTS, 300]
    for pose, posed in zip(answer["poses"], (clouds["bunny"], other), strict=True):
        assert "file" not in pose
        assert_poses(pose, posed)


def test_a_far_stray_does_not_make_a_cloud_a_line(bunny_example: dict) -> None:
    # One point a billion units away: the spread of the rest decides, not the stray's axis.
    cloud = np.vstack([bunny_example["points"], [[1e9, 0.0, 0.0]]])
    assert degenerate_reason(cloud) is None
    line = np.linspace(0.0, 1.0, 300)[:, None] * [[60.0, -20.0, 10.0]]
    assert degenerate_reason(np.vstack([line, [[0.0, 50.0, 0.0]]])) == ON_A_LINE


def test_a_cloud_past_the_budget_is_not_looked_at(bunny: ServedObject, bunny_example: dict) -> None:
    from cloudpose.budget import Budget

    first, second = bunny.estimate([bunny_example["points"]] * 2, budgets=lambda: Budget(0.0, nominal_s=0.25))
    assert first.found is True  # looked at: an easy cloud needs no search, so no budget
    assert second.found is False
    assert second.reason.startswith("the request's compute budget ran out before this cloud was looked at")
    assert "at most 250 ms" in second.reason
    (timely,) = bunny.estimate([bunny_example["points"]], budgets=lambda: Budget(5.0))
    assert timely.found is True and not timely.warnings


def test_an_ambiguous_answer_settled_on_a_candidate_takes_that_pose(
    bunny: ServedObject, bunny_example: dict
) -> None:
    points = np.asarray(bunny_example["points"], dtype=np.float64)
    (answer,) = bunny.estimate([points])
    assert answer.found
    turn = Rotation.from_euler("z", 40, degrees=True).as_matrix()
    other_rotation = answer.object_rotation @ turn  # another pose of the same points
    other_translation = answer.object_translation + np.array([0.01, 0.0, 0.0])
    candidates = [
        {
            "rotation": r.T.tolist(),
            "translation": (-t @ r.T).tolist(),
            "fitness": f,
            "inlier_rmse": 0.01,
            "confidence": c,
        }
        for r, t, f, c in (
            (answer.object_rotation, answer.object_translation, 0.95, 0.8),
            (other_rotation, other_translation, 0.93, 0.7),
        )
    ]
    ambiguous = dataclasses.replace(answer, found=False, ambiguous=True, candidates=candidates)
    settled = bunny.settled(ambiguous, 1, "settled by the frame: the other was seen through")
    assert settled.found and not settled.ambiguous and settled.reason is None
    np.testing.assert_allclose(settled.object_rotation, other_rotation, atol=1e-12)
    np.testing.assert_allclose(settled.object_translation, other_translation, atol=1e-12)
    # The back transform and the matrix say the same pose.
    canonical = points @ settled.rotation + settled.translation
    np.testing.assert_allclose(canonical @ other_rotation + other_translation, points, atol=1e-9)
    np.testing.assert_allclose(settled.pose_matrix()[:3, :3], other_rotation.T, atol=1e-12)
    assert settled.confidence["fitness"] == 0.93 and settled.confidence["confidence"] == 0.7
    assert settled.warnings[-1] == "settled by the frame: the other was seen through"
    assert not ambiguous.found  # the answer it came from is left as it was
