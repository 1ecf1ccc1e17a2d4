"""The Python client against a real uvicorn serving the shipped store: every route, answers equal
to a raw httpx call's, files named in batch answers, and the typed errors with the server's detail."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh

from cloudpose import (
    AsyncClient,
    BadRequest,
    BatchResult,
    Client,
    CloudposeError,
    DetectResult,
    Forbidden,
    InvalidCloud,
    NotFound,
    Overloaded,
    PoseResult,
    ServerError,
    ServiceUnreachable,
    Unauthorized,
)
from cloudpose.client import npy_bytes, raise_for_answer
from cloudpose.geometry.rotations import geodesic_deg
from pipeline.data.scenes import Frame, Intrinsics, SceneCounts, SceneObject, make_frame
from tests.service.test_detect import matches
from tests.service.test_uvicorn import free_port, running_server

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
API_KEY = "client-test-key"
# A recovered pose is within these of the truth (degrees; fraction of the bunny's diagonal).
ROTATION_DEG = 1.0
TRANSLATION_FRACTION = 0.01


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path) -> Iterator[str]:
    """uvicorn serving the shipped objects with an API key; budgets wide enough that a busy machine
    never cuts a search short (answers are compared with other computations of the same cloud)."""
    port = free_port()
    code = (
        "import uvicorn\n"
        "from service.app import create_app\n"
        "from cloudpose.settings import Settings\n"
        f"settings = Settings(store={str(shipped_store)!r}, api_keys={API_KEY!r}, hard_processes=False, "
        "pose_budget_ms=60000, batch_budget_s=120)\n"
        f"uvicorn.run(create_app(settings), host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    log_path = tmp_path_factory.mktemp("client") / "server.log"
    with running_server([sys.executable, "-c", code], port, log_path) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[Client]:
    with Client(server, api_key=API_KEY, timeout=120) as client:
        yield client


@pytest.fixture
def raw(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server, headers={"authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as raw_client:
        yield raw_client


@pytest.fixture(scope="module")
def example() -> dict:
    data = json.loads((BUNNY / "example.json").read_text())
    return {
        "points": np.asarray(data["points"]),
        "rotation": np.asarray(data["true_rotation"]),
        "translation": np.asarray(data["true_translation"]),
    }


@pytest.fixture(scope="module")
def diagonal() -> float:
    return float(json.loads((BUNNY / "object.json").read_text())["mesh"]["diagonal"])


def posed_copy(example: dict, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The example moved by a random rigid motion, and the back transform that brings it to the
    mesh's frame: ``mesh = points @ rotation + translation``."""
    rng = np.random.default_rng(seed)
    quaternion = rng.normal(size=4)
    x, y, z, w = quaternion / np.linalg.norm(quaternion)
    turn = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    shift = rng.uniform(-20.0, 20.0, size=3)
    points = example["points"] @ turn + shift
    rotation = turn.T @ example["rotation"]
    return points, rotation, example["translation"] - shift @ rotation


def assert_pose(result: PoseResult, rotation: np.ndarray, translation: np.ndarray, size: float) -> None:
    assert result.found, result.reason
    assert result.rotation.shape == (3, 3) and result.translation.shape == (3,)
    assert result.pose_matrix.shape == (4, 4) and result.quaternion_xyzw.shape == (4,)
    assert geodesic_deg(result.rotation, rotation) < ROTATION_DEG
    assert np.linalg.norm(result.translation - translation) < TRANSLATION_FRACTION * size


def assert_same_answer(result: PoseResult, answer: dict, same_file: bool = True) -> None:
    """A result says what the raw JSON answer says (``same_file``: and names the same file)."""
    assert result.found == answer["found"]
    np.testing.assert_allclose(result.rotation, answer["rotation"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.translation, answer["translation"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.pose_matrix, answer["pose_matrix"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.quaternion_xyzw, answer["quaternion_xyzw"], rtol=0, atol=1e-9)
    assert result.confidence == answer["confidence"]["confidence"]
    assert result.fit.fitness == answer["confidence"]["fitness"]
    assert result.refined == answer["refined"]
    assert result.units == answer["units"] and result.scale == answer["scale"]
    assert result.warnings == tuple(answer.get("warnings", ()))
    assert result.n_points == answer["n_points"]
    assert result.file == answer.get("file") or not same_file


def test_health_ready_objects_model_and_metrics(client: Client, raw: httpx.Client) -> None:
    health = client.health()
    assert health.status == "ok"
    assert list(health.objects) == raw.get("/health").json()["objects"] == ["bunny"]
    assert health.model_id == raw.get("/health").json()["model_id"]
    assert client.ready().status in ("ready", "busy")

    listed = client.objects()
    raw_listed = raw.get("/v1/objects").json()
    assert listed.names() == [item["name"] for item in raw_listed["objects"]]
    assert listed.default == raw_listed["default"] == "bunny"

    bunny = client.object("bunny")
    raw_bunny = raw.get("/v1/objects/bunny").json()
    assert bunny.raw == raw_bunny
    assert bunny.name == "bunny" and bunny.model_id == raw_bunny["model_id"]
    assert bunny.diagonal == raw_bunny["size"]["diagonal"]
    assert bunny.metres_per_unit == raw_bunny["metres_per_unit"]
    np.testing.assert_allclose(bunny.extent, raw_bunny["size"]["extent"])

    model = client.model()
    raw_model = raw.get("/v1/model").json()
    assert model.model_id == raw_model["model_id"] == health.model_id
    assert model.order_free == raw_model["order_free"]
    assert model.limits == raw_model["limits"]
    assert model.object.name == "bunny"

    assert "# TYPE" in client.metrics()


def test_pose_of_an_array_is_the_raw_answer(client: Client, raw: httpx.Client, example, diagonal) -> None:
    points, rotation, translation = posed_copy(example, seed=1)
    result = client.pose(points)
    assert_pose(result, rotation, translation, diagonal)
    assert result.object == "bunny" and result.request_id
    # The same cloud as a raw .npy upload, and as JSON: the same answer.
    uploaded = raw.post("/v1/pose", files={"file": ("points.npy", npy_bytes(points))})
    assert uploaded.status_code == 200, uploaded.text
    assert_same_answer(result, uploaded.json())
    as_json = raw.post("/v1/pose", json={"points": points.tolist()})
    assert as_json.status_code == 200, as_json.text
    assert_same_answer(client.pose(points.tolist()), as_json.json())
    np.testing.assert_allclose(as_json.json()["rotation"], result.rotation, rtol=0, atol=1e-9)
    # The back transform brings the points onto the mesh's frame.
    np.testing.assert_allclose(
        result.to_canonical(points), points @ rotation + translation, atol=TRANSLATION_FRACTION * diagonal
    )


def test_pose_of_a_file_names_it(client: Client, raw: httpx.Client, example, diagonal) -> None:
    result = client.pose(BUNNY / "example.xyz")
    assert_pose(result, example["rotation"], example["translation"], diagonal)
    assert result.file == "example.xyz" and result.n_points == len(example["points"])
    uploaded = raw.post("/v1/pose", files={"file": ("example.xyz", (BUNNY / "example.xyz").read_bytes())})
    assert_same_answer(result, uploaded.json())


def test_named_object_with_units_and_without_refinement(
    client: Client, raw: httpx.Client, example, diagonal
) -> None:
    metres_per_unit = client.object("bunny").metres_per_unit
    points, rotation, translation = posed_copy(example, seed=2)
    in_metres = points * metres_per_unit
    result = client.pose(in_metres, object="bunny", units="m")
    assert result.units == "m"
    assert_pose(result, rotation, translation * metres_per_unit, diagonal * metres_per_unit)
    answer = raw.post(
        "/v1/objects/bunny/pose?units=m", files={"file": ("points.npy", npy_bytes(in_metres))}
    ).json()
    assert_same_answer(result, answer)

    network_only = client.pose(points, object="bunny", refine=False)
    assert network_only.refined is False
    answer = raw.post(
        "/v1/objects/bunny/pose?refine=false", files={"file": ("points.npy", npy_bytes(points))}
    ).json()
    assert answer["refined"] is False
    np.testing.assert_allclose(network_only.rotation, answer["rotation"], rtol=0, atol=1e-9)


def test_batch_names_each_file_in_order(
    client: Client, raw: httpx.Client, example, diagonal, tmp_path: Path
) -> None:
    first, first_rotation, first_translation = posed_copy(example, seed=3)
    second, second_rotation, second_translation = posed_copy(example, seed=4)
    saved = tmp_path / "second.npy"
    np.save(saved, second)
    batch = client.pose_batch([BUNNY / "example.xyz", saved, first], object="bunny")
    assert isinstance(batch, BatchResult) and len(batch) == 3
    assert [pose.file for pose in batch] == ["example.xyz", "second.npy", "clouds[2].npy"]
    assert batch.object == "bunny" and all(pose.object == "bunny" for pose in batch)
    assert_pose(batch[0], example["rotation"], example["translation"], diagonal)
    assert_pose(batch[1], second_rotation, second_translation, diagonal)
    assert_pose(batch[2], first_rotation, first_translation, diagonal)

    files = [
        ("files", ("example.xyz", (BUNNY / "example.xyz").read_bytes())),
        ("files", ("second.npy", saved.read_bytes())),
        ("files", ("clouds[2].npy", npy_bytes(first))),
    ]
    answer = raw.post("/v1/objects/bunny/pose/batch", files=files)
    assert answer.status_code == 200, answer.text
    assert [pose["file"] for pose in answer.json()["poses"]] == ["example.xyz", "second.npy", "clouds[2].npy"]
    for result, pose in zip(batch, answer.json()["poses"], strict=True):
        assert_same_answer(result, pose)

    # Lists go as one JSON body: no files to name.
    as_json = client.pose_batch([first.tolist(), second.tolist()])
    assert [pose.file for pose in as_json] == [None, None]
    np.testing.assert_allclose(as_json[0].rotation, batch[2].rotation, rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def frame() -> Frame:
    """A small frame (160 x 120 pixels) with one bunny and one crate on a table, in metres."""
    mesh = trimesh.load(BUNNY / "mesh.ply", force="mesh")
    mesh.apply_scale(json.loads((BUNNY / "object.json").read_text())["units"]["metres_per_unit"])
    crate = SceneObject("crate", trimesh.creation.box((0.09, 0.06, 0.11)))
    counts = SceneCounts(target_copies=(1, 1), distractors=(1, 1))
    return make_frame(
        [SceneObject("bunny", mesh)], [crate], np.random.default_rng(11), Intrinsics().scaled(0.25), counts
    )


def test_detect_a_frame_and_its_depth_image(client: Client, raw: httpx.Client, frame: Frame) -> None:
    result = client.detect(frame.points(), objects=["bunny"])
    assert isinstance(result, DetectResult)
    assert result.n_points == len(frame.points()) and result.complete
    assert len(result.detections) == 1
    assert matches(frame, [detection.raw for detection in result.detections]) == 1
    detection = result.detections[0]
    assert detection.object == "bunny" and detection.confident and 0 < detection.visible_fraction <= 1
    answer = raw.post("/v1/detect?objects=bunny", files={"file": ("frame.npy", npy_bytes(frame.points()))})
    assert answer.status_code == 200, answer.text
    assert [item["visible_fraction"] for item in answer.json()["detections"]] == [detection.visible_fraction]
    assert_same_answer(detection, answer.json()["detections"][0])

    from_depth = client.detect(
        depth=frame.depth_units(), intrinsics=frame.intrinsics.pinhole(), max_instances=1
    )
    assert from_depth.n_points == result.n_points
    assert matches(frame, [item.raw for item in from_depth.detections]) == 1


def test_track_follows_the_detections_into_the_next_frame(
    client: Client, raw: httpx.Client, frame: Frame
) -> None:
    detected = client.detect(frame.points(), objects="bunny")
    followed = client.track(frame.points(), previous=detected.detections)
    assert followed.lost == 0 and followed.n_points == len(frame.points())
    (track,) = followed.tracks
    assert track.object == "bunny" and not track.lost
    assert matches(frame, [track.detection.raw]) == 1
    previous = [
        {"object": "bunny", "rotation": item.rotation.tolist(), "translation": item.translation.tolist()}
        for item in detected.detections
    ]
    answer = raw.post(
        "/v1/track",
        files={"file": ("frame.npy", npy_bytes(frame.points()))},
        data={"previous": json.dumps(previous)},
    )
    assert answer.status_code == 200, answer.text
    assert_same_answer(track.detection, answer.json()["tracks"][0])
    # A track of the answer is itself a previous pose.
    assert not client.track(frame.points(), previous=followed.tracks).tracks[0].lost


def test_examples_and_geometry(client: Client, raw: httpx.Client) -> None:
    files = client.examples("bunny")
    assert "example.xyz" in files
    assert files == [item["file"] for item in raw.get("/v1/objects/bunny/examples").json()["examples"]]
    assert client.example("bunny", "example.xyz") == (BUNNY / "example.xyz").read_bytes()
    with pytest.raises(NotFound):
        client.example("bunny", "missing.xyz")
    geometry = client.geometry("bunny")
    assert geometry == raw.get("/v1/objects/bunny/geometry").json()
    assert geometry["object"] == "bunny" and len(geometry["points"]) > 100


def test_refusals_are_typed_errors_with_the_servers_detail(
    client: Client, raw: httpx.Client, server: str, example, tmp_path: Path
) -> None:
    few = example["points"][:10]
    with pytest.raises(InvalidCloud) as refused:
        client.pose(few)
    answer = raw.post("/v1/pose", files={"file": ("points.npy", npy_bytes(few))})
    assert answer.status_code == refused.value.status == 422
    assert (
        refused.value.detail
        == answer.json()["detail"]
        == ("points has 10 points; send at least 32 points of the object")
    )
    assert refused.value.request_id

    broken = example["points"].copy()
    broken[5, 1] = np.nan
    with pytest.raises(InvalidCloud) as refused:
        client.pose(broken)
    assert refused.value.detail == "points.npy contains NaN or Inf (first at point 5)"

    mesh_file = tmp_path / "bunny.obj"
    mesh_file.write_text("v 0 0 0\n")
    with pytest.raises(InvalidCloud) as refused:
        client.pose(mesh_file)
    assert refused.value.status == 415
    assert refused.value.detail.startswith("unsupported file type '.obj'")

    with pytest.raises(NotFound) as missing:
        client.pose(example["points"], object="teapot")
    answer = raw.post("/v1/objects/teapot/pose", json={"points": example["points"].tolist()})
    assert answer.status_code == missing.value.status == 404
    assert missing.value.detail == answer.json()["detail"] == "unknown object 'teapot'; known objects: bunny"
    with pytest.raises(NotFound):
        client.object("teapot")

    with Client(server, api_key="wrong-key") as stranger:
        with pytest.raises(Unauthorized) as denied:
            stranger.objects()
        assert stranger.health().status == "ok"  # liveness needs no key
    assert denied.value.status == 401
    assert denied.value.detail == httpx.get(f"{server}/v1/objects").json()["detail"]
    assert isinstance(denied.value, CloudposeError)

    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as nobody:
        with pytest.raises(ServiceUnreachable) as unreachable:
            nobody.health()
    assert unreachable.value.status is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (408, BadRequest),
        (409, BadRequest),
        (413, InvalidCloud),
        (415, InvalidCloud),
        (422, InvalidCloud),
        (429, Overloaded),
        (503, Overloaded),
        (500, ServerError),
    ],
)
def test_each_status_has_its_error_class(status: int, kind: type) -> None:
    answer = httpx.Response(
        status, json={"detail": "what was wrong"}, headers={"retry-after": "2", "x-request-id": "abc"}
    )
    with pytest.raises(CloudposeError) as raised:
        raise_for_answer(answer)
    assert type(raised.value) is kind
    assert (raised.value.status, raised.value.detail, raised.value.request_id) == (
        status,
        "what was wrong",
        "abc",
    )
    if kind is Overloaded:
        assert raised.value.retry_after == 2.0
    raise_for_answer(httpx.Response(200, json={}))  # an answer is no error


def test_reload_answers_the_served_models(client: Client) -> None:
    assert client.reload() == {"bunny": client.health().model_id}


def test_async_client(server: str, example, diagonal) -> None:
    async def calls() -> tuple:
        async with AsyncClient(server, api_key=API_KEY, timeout=120) as client:
            health = await client.health()
            result = await client.pose(BUNNY / "example.xyz", object="bunny")
            try:
                await client.pose(example["points"][:10])
            except InvalidCloud as error:
                return health, result, error
        raise AssertionError("10 points were accepted")

    health, result, error = asyncio.run(calls())
    assert health.objects == ("bunny",)
    assert_pose(result, example["rotation"], example["translation"], diagonal)
    assert error.detail == "points has 10 points; send at least 32 points of the object"


def test_the_client_loads_neither_the_server_nor_the_networks() -> None:
    code = (
        "import sys\n"
        "from cloudpose import Client, PoseResult, InvalidCloud\n"
        "heavy = {'torch', 'onnxruntime', 'open3d', 'fastapi', 'scipy', 'cloudpose.estimation.inference'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
