"""HTTP API tests through FastAPI's TestClient: every endpoint, every file type, every bad input."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloudpose.estimation.inference import ModelLoadError, PoseEstimator
from cloudpose.settings import Settings
from service.app import create_app

MAX_POINTS = 200
MAX_BODY_BYTES = 64 * 1024
MAX_BATCH = 4
# Recovered clouds must match the template to this fraction of the mesh's bounding-box diagonal.
TOLERANCE = 1e-3

EXAM_DETAIL = (
    "{where} has {count} points, but this exam-setting model takes exactly {n}: the template's points "
    "in the template's order, rigidly posed (GET /v1/model returns the template)"
)


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures


def quaternion_to_column_matrix(quaternion_xyzw: np.ndarray) -> np.ndarray:
    """Column-vector rotation matrix of a unit quaternion given scalar last."""
    x, y, z, w = quaternion_xyzw
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniform rotation for row vectors (``points @ R``): normalized Gaussian quaternion -> matrix."""
    quaternion = rng.normal(size=4)
    return quaternion_to_column_matrix(quaternion / np.linalg.norm(quaternion)).T


class Posed:
    """A posed copy of the template: ``points = template @ rotation + translation``."""

    def __init__(self, template: np.ndarray, diagonal: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rotation = random_rotation(rng)
        self.translation = rng.uniform(-0.5, 0.5, size=3) * diagonal
        self.points = template.astype(np.float64) @ self.rotation + self.translation

    def npy(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, self.points)
        return buffer.getvalue()

    def xyz(self) -> bytes:
        buffer = io.BytesIO()
        np.savetxt(buffer, self.points, fmt="%.10g")
        return buffer.getvalue()

    def ply(self) -> bytes:
        import trimesh

        return trimesh.PointCloud(self.points).export(file_type="ply")

    def pcd(self, folder: Path) -> bytes:
        import open3d

        path = folder / "cloud.pcd"
        cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(self.points))
        assert open3d.io.write_point_cloud(str(path), cloud)
        return path.read_bytes()


@pytest.fixture(scope="module")
def export_dir(exported_model) -> Path:
    return exported_model.model_path.parent


@pytest.fixture(scope="module")
def template(export_dir: Path) -> np.ndarray:
    return np.load(export_dir / "template.npy")


@pytest.fixture(scope="module")
def sidecar(export_dir: Path) -> dict:
    return json.loads((export_dir / "model.json").read_text())


@pytest.fixture(scope="module")
def diagonal(sidecar: dict) -> float:
    return float(sidecar["mesh"]["diagonal"])


@pytest.fixture(scope="module")
def client(exported_model) -> Iterator[TestClient]:
    settings = Settings(
        model_path=exported_model.model_path,
        max_points=MAX_POINTS,
        max_body_bytes=MAX_BODY_BYTES,
        max_batch=MAX_BATCH,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture()
def posed(template: np.ndarray, diagonal: float, request: pytest.FixtureRequest) -> Posed:
    # A different pose for every test, reproducible from the test's name.
    return Posed(template, diagonal, seed=sum(request.node.name.encode()))


def assert_pose(pose: dict, points: np.ndarray, template: np.ndarray, diagonal: float) -> None:
    """The answered pose maps ``points`` back onto the template; its four forms agree."""
    rotation = np.asarray(pose["rotation"], dtype=np.float64)
    translation = np.asarray(pose["translation"], dtype=np.float64)
    assert rotation.shape == (3, 3) and translation.shape == (3,)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-9)
    recovered = points @ rotation + translation
    error = np.abs(recovered - template).max()
    assert error < TOLERANCE * diagonal, f"max |canonical - template| = {error:.3g}"

    matrix = np.asarray(pose["pose_matrix"], dtype=np.float64)
    assert matrix.shape == (4, 4)
    np.testing.assert_array_equal(matrix[3], [0.0, 0.0, 0.0, 1.0])
    homogeneous = np.hstack([template, np.ones((len(template), 1))])
    observed = (matrix @ homogeneous.T).T[:, :3]
    assert np.abs(observed - points).max() < TOLERANCE * diagonal
    # The object pose is the inverse of the back transform.
    back = np.eye(4)
    back[:3, :3] = rotation.T
    back[:3, 3] = translation
    np.testing.assert_allclose(matrix @ back, np.eye(4), atol=1e-9)

    quaternion = np.asarray(pose["quaternion_xyzw"], dtype=np.float64)
    assert quaternion.shape == (4,)
    assert np.linalg.norm(quaternion) == pytest.approx(1.0, abs=1e-12)
    assert quaternion[3] >= 0
    np.testing.assert_allclose(quaternion_to_column_matrix(quaternion), matrix[:3, :3], atol=1e-9)


def upload(name: str, data: bytes, field: str = "file") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (name, data, "application/octet-stream"))]


def post_json_bytes(client: TestClient, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers={"content-type": "application/json"})


def assert_error(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"detail": detail}


def assert_error_starts(response: httpx.Response, status: int, prefix: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["detail"].startswith(prefix), response.json()


# ---------------------------------------------------------------------------------------------
# Metadata endpoints


def test_health(client: TestClient, sidecar: dict) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_id": sidecar["model_id"], "objects": ["bunny"]}


def test_model_description(client: TestClient, sidecar: dict, template: np.ndarray, exported_model) -> None:
    response = client.get("/v1/model")
    assert response.status_code == 200
    body = response.json()
    assert body["model_id"] == sidecar["model_id"]
    assert body["kind"] == sidecar["kind"]
    assert body["n_points"] == exported_model.n_points == sidecar["n_points"]
    assert body["order_free"] is False
    assert body["mesh"] == sidecar["mesh"]
    assert body["convention"] == sidecar["convention"]
    assert f"exactly {exported_model.n_points} points" in body["input_requirement"]
    served = np.asarray(body["template"], dtype=np.float32)
    assert served.shape == template.shape
    np.testing.assert_array_equal(served, template)
    assert body["limits"] == {
        "max_points": MAX_POINTS,
        "max_body_bytes": MAX_BODY_BYTES,
        "max_batch": MAX_BATCH,
        "pose_budget_ms": 1000.0,
        "batch_budget_s": 20.0,
    }


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404, "Not Found")
    assert_error(client.get("/v1/pose"), 405, "Method Not Allowed")


# ---------------------------------------------------------------------------------------------
# One cloud


def test_pose_json(
    client: TestClient, posed: Posed, template: np.ndarray, diagonal: float, sidecar: dict
) -> None:
    response = client.post("/v1/pose", json={"points": posed.points.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_pose(body, posed.points, template, diagonal)
    np.testing.assert_allclose(body["rotation"], posed.rotation.T, atol=1e-3)
    assert body["model_id"] == sidecar["model_id"]
    assert body["n_points"] == len(template)
    assert body["server_time_ms"] > 0


def test_pose_json_content_type_with_parameters(client: TestClient, posed: Posed, template, diagonal) -> None:
    body = json.dumps({"points": posed.points.tolist()}).encode()
    response = client.post(
        "/v1/pose", content=body, headers={"content-type": "Application/JSON; charset=utf-8"}
    )
    assert response.status_code == 200, response.text
    assert_pose(response.json(), posed.points, template, diagonal)


def test_pose_json_without_content_type(client: TestClient, posed: Posed, template, diagonal) -> None:
    body = json.dumps({"points": posed.points.tolist()}).encode()
    response = client.post("/v1/pose", content=body, headers={"content-type": ""})
    assert response.status_code == 200, response.text
    assert_pose(response.json(), posed.points, template, diagonal)


@pytest.mark.parametrize("suffix", [".npy", ".xyz", ".ply", ".pcd"])
def test_pose_file_upload(
    client: TestClient, posed: Posed, template: np.ndarray, diagonal: float, suffix: str, tmp_path: Path
) -> None:
    data = {".npy": posed.npy, ".xyz": posed.xyz, ".ply": posed.ply, ".pcd": lambda: posed.pcd(tmp_path)}[
        suffix
    ]()
    response = client.post("/v1/pose", files=upload(f"cloud{suffix.upper()}", data))
    assert response.status_code == 200, response.text
    body = response.json()
    assert_pose(body, posed.points, template, diagonal)
    assert body["n_points"] == len(template)


# ---------------------------------------------------------------------------------------------
# Batches


def test_batch_json(client: TestClient, template: np.ndarray, diagonal: float, sidecar: dict) -> None:
    clouds = [Posed(template, diagonal, seed) for seed in (11, 12, 13)]
    response = client.post("/v1/pose/batch", json={"clouds": [{"points": c.points.tolist()} for c in clouds]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == sidecar["model_id"]
    assert body["server_time_ms"] > 0
    assert len(body["poses"]) == len(clouds)
    for pose, cloud in zip(body["poses"], clouds, strict=True):
        assert_pose(pose, cloud.points, template, diagonal)
        np.testing.assert_allclose(pose["rotation"], cloud.rotation.T, atol=1e-3)
        assert pose["n_points"] == len(template)


def test_batch_multipart(client: TestClient, template: np.ndarray, diagonal: float) -> None:
    first, second = Posed(template, diagonal, 21), Posed(template, diagonal, 22)
    files = upload("first.npy", first.npy(), "files") + upload("second.xyz", second.xyz(), "files")
    response = client.post("/v1/pose/batch", files=files)
    assert response.status_code == 200, response.text
    poses = response.json()["poses"]
    assert len(poses) == 2
    assert_pose(poses[0], first.points, template, diagonal)
    assert_pose(poses[1], second.points, template, diagonal)


# ---------------------------------------------------------------------------------------------
# Bad JSON bodies


def test_malformed_json(client: TestClient) -> None:
    assert_error_starts(
        post_json_bytes(client, "/v1/pose", b'{"points": [[1, 2, 3]'), 400, "malformed JSON: "
    )


@pytest.mark.parametrize("content_type", ["application/json", ""])
def test_empty_body(client: TestClient, content_type: str) -> None:
    response = client.post("/v1/pose", content=b"", headers={"content-type": content_type})
    assert_error(response, 400, 'empty request body: send JSON like {"points": [[x, y, z], ...]}')


@pytest.mark.parametrize(
    "body",
    [[[1, 2, 3]], "points", 42, None, {"pts": [[1, 2, 3]]}],
    ids=["list", "string", "number", "null", "no-points"],
)
def test_json_not_an_object_with_points(client: TestClient, body: object) -> None:
    response = post_json_bytes(client, "/v1/pose", json.dumps(body).encode())
    assert_error(response, 422, "JSON body must be an object with a 'points' list of [x, y, z] triples")


@pytest.mark.parametrize("points", ["1 2 3", 7, {"x": 1}, None], ids=["string", "number", "object", "null"])
def test_points_not_a_list(client: TestClient, points: object) -> None:
    assert_error(
        client.post("/v1/pose", json={"points": points}), 422, "points must be a list of [x, y, z] triples"
    )


@pytest.mark.parametrize(
    ("points", "shape"),
    [
        ([[1, 2], [3, 4]], "(2, 2)"),
        ([1, 2, 3], "(3,)"),
        ([[[1, 2, 3]]], "(1, 1, 3)"),
        ([[1, 2, 3, 4]], "(1, 4)"),
    ],
    ids=["pairs", "flat", "nested", "quads"],
)
def test_points_wrong_shape(client: TestClient, points: list, shape: str) -> None:
    assert_error(
        client.post("/v1/pose", json={"points": points}), 422, f"points must have shape (N, 3), got {shape}"
    )


@pytest.mark.parametrize(
    "points",
    [
        [[1, 2, 3], [4, 5]],
        [[1, 2, 3], 4],
        [["a", "b", "c"]],
        [["1", "2", "3"]],
        [[1, 2, "3"]],
        [[None, 1, 2]],
        [[True, False, True]],
        [[{"x": 1}, 2, 3]],
    ],
    ids=["ragged", "mixed", "letters", "numeric-strings", "one-string", "null", "booleans", "object"],
)
def test_points_not_numbers(client: TestClient, points: list) -> None:
    assert_error(
        client.post("/v1/pose", json={"points": points}),
        422,
        "points must be a list of [x, y, z] triples of numbers",
    )


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_json_nan_and_infinity_are_malformed(client: TestClient, token: bytes) -> None:
    # JSON has no NaN or Infinity; orjson refuses them, and numbers that overflow a double.
    body = b'{"points": [[' + token + b", 1, 2]]}"
    assert_error_starts(post_json_bytes(client, "/v1/pose", body), 400, "malformed JSON: ")


def test_empty_cloud(client: TestClient) -> None:
    assert_error(
        client.post("/v1/pose", json={"points": []}), 422, "points is empty: send at least one point"
    )


def test_too_many_points(client: TestClient) -> None:
    points = [[0.0, 0.0, 0.0]] * (MAX_POINTS + 1)
    assert_error(
        client.post("/v1/pose", json={"points": points}),
        413,
        f"points has {MAX_POINTS + 1} points; this service accepts at most {MAX_POINTS}",
    )


@pytest.mark.parametrize("count_offset", [-1, 1])
def test_wrong_point_count_for_exam_model(
    client: TestClient, template: np.ndarray, count_offset: int
) -> None:
    count = len(template) + count_offset
    points = np.resize(template, (count, 3)).tolist()
    assert_error(
        client.post("/v1/pose", json={"points": points}),
        422,
        EXAM_DETAIL.format(where="points", count=count, n=len(template)),
    )


# ---------------------------------------------------------------------------------------------
# Body size, content type


OVERSIZE_DETAIL = f"request body is larger than this service's limit of {MAX_BODY_BYTES} bytes"


@pytest.mark.parametrize("path", ["/v1/pose", "/v1/pose/batch"])
def test_oversized_body_with_content_length(client: TestClient, path: str) -> None:
    body = b" " * (MAX_BODY_BYTES + 1)
    assert_error(post_json_bytes(client, path, body), 413, OVERSIZE_DETAIL)


def test_oversized_body_streamed_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"points": ['
        for _ in range(MAX_BODY_BYTES // 16 + 1):
            yield b"[1.0, 2.0, 3.0],"

    response = client.post("/v1/pose", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, OVERSIZE_DETAIL)


def test_oversized_multipart_streamed_without_content_length(client: TestClient) -> None:
    boundary = b"cloudposeboundary"

    def chunks() -> Iterator[bytes]:
        yield (
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.xyz"\r\n\r\n'
        )
        for _ in range(MAX_BODY_BYTES // 16 + 1):
            yield b"1.0 2.0 3.00000\n"
        yield b"\r\n--" + boundary + b"--\r\n"

    content_type = "multipart/form-data; boundary=" + boundary.decode()
    response = client.post("/v1/pose", content=chunks(), headers={"content-type": content_type})
    assert_error(response, 413, OVERSIZE_DETAIL)


def test_oversized_multipart_upload(client: TestClient) -> None:
    response = client.post("/v1/pose", files=upload("big.npy", b"\0" * (MAX_BODY_BYTES + 1)))
    assert_error(response, 413, OVERSIZE_DETAIL)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_unsupported_content_type(client: TestClient, content_type: str) -> None:
    response = client.post(
        "/v1/pose", content=b'{"points": [[1, 2, 3]]}', headers={"content-type": content_type}
    )
    assert_error(
        response,
        415,
        f"unsupported content type {content_type!r}; send application/json or multipart/form-data",
    )


# ---------------------------------------------------------------------------------------------
# Bad uploads


@pytest.mark.parametrize(
    ("name", "suffix"), [("cloud.obj", "'.obj'"), ("cloud", "'(none)'"), ("cloud.ply.gz", "'.gz'")]
)
def test_unsupported_file_suffix(client: TestClient, posed: Posed, name: str, suffix: str) -> None:
    response = client.post("/v1/pose", files=upload(name, posed.xyz()))
    assert_error(
        response,
        415,
        f"unsupported file type {suffix}; send one of .ply, .pcd, .xyz, .txt, .csv, .las, .laz, .e57, .npy, "
        ".npz",
    )


PLY_XYZ_HEADER = (
    b"ply\nformat binary_little_endian 1.0\nelement vertex 64\nproperty float x\nproperty float y\n"
    b"property float z\nend_header\n"
)


@pytest.mark.parametrize(
    ("name", "data", "detail"),
    [
        (
            "bad.ply",
            b"this is not a ply file at all",
            "is not a PLY file: it does not start with the line 'ply'",
        ),
        (
            "bad.ply",
            b"ply\nformat binary_little_endian 1.0\nelement vertex 64\nproperty float x\nend_header\n\x01",
            "has no x, y and z vertex properties (it has x)",
        ),
        (
            "bad.ply",
            PLY_XYZ_HEADER + b"\x01",
            "is truncated: its header declares 768 bytes of data (element vertex 64) but 1 byte follows",
        ),
        (
            "bad.npy",
            b"not an npy file",
            "is not an .npy file: it does not start with NumPy's magic bytes (save it with numpy.save)",
        ),
        (
            "bad.npy",
            b"\x93NUMPY\x01\x00garbage",
            "has a corrupt .npy header: the file is damaged or not an .npy",
        ),
        ("bad.xyz", bytes(range(256)), "is not UTF-8 text: an .xyz file holds lines of 'x y z'"),
        (
            "bad.pcd",
            b"this is not a pcd file",
            "has no DATA line in its first 65536 bytes: not a PCD file, or its header is cut short",
        ),
        (
            "bad.pcd",
            b"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nPOINTS 64\nDATA binary\n\x00\x01",
            "has no SIZE or TYPE line in its PCD header",
        ),
    ],
    ids=[
        "ply-text",
        "ply-without-y-z",
        "ply-truncated",
        "npy-text",
        "npy-header",
        "xyz-binary",
        "pcd-text",
        "pcd-truncated-header",
    ],
)
def test_corrupt_file(client: TestClient, name: str, data: bytes, detail: str) -> None:
    response = client.post("/v1/pose", files=upload(name, data))
    assert_error(response, 422, f"{name!r} {detail}")


@pytest.mark.parametrize(
    ("name", "data"),
    [("bad.xyz", b"hello world\n"), ("bad.xyz", b"1 2 3\n4 5\n")],
    ids=["xyz-words", "xyz-ragged"],
)
def test_unparseable_file(client: TestClient, name: str, data: bytes) -> None:
    response = client.post("/v1/pose", files=upload(name, data))
    assert_error(response, 422, f"could not read {name!r} as .xyz: the file is corrupt or not a point cloud")


def test_xyz_with_two_columns(client: TestClient) -> None:
    response = client.post("/v1/pose", files=upload("flat.xyz", b"1 2\n3 4\n"))
    assert_error(response, 422, "'flat.xyz' has 2 numbers on a line; an .xyz file needs 3 per line (x y z)")


def test_xyz_with_only_comments(client: TestClient) -> None:
    response = client.post("/v1/pose", files=upload("blank.xyz", b"# no points here\n\n"))
    assert_error(response, 422, "'blank.xyz' holds no points")


@pytest.mark.parametrize("suffix", [".npy", ".xyz", ".ply", ".pcd"])
def test_empty_uploaded_file(client: TestClient, suffix: str) -> None:
    response = client.post("/v1/pose", files=upload(f"empty{suffix}", b""))
    assert_error(response, 422, f"the uploaded file 'empty{suffix}' is empty")


def test_npy_with_nan(client: TestClient, posed: Posed) -> None:
    points = posed.points.copy()
    points[5, 1] = np.nan
    buffer = io.BytesIO()
    np.save(buffer, points)
    response = client.post("/v1/pose", files=upload("nan.npy", buffer.getvalue()))
    assert_error(response, 422, "nan.npy contains NaN or Inf (first at point 5)")


def test_xyz_with_infinity(client: TestClient, posed: Posed) -> None:
    lines = posed.xyz().decode().splitlines()
    lines[3] = "inf 0 0"
    response = client.post("/v1/pose", files=upload("inf.xyz", "\n".join(lines).encode()))
    assert_error(response, 422, "inf.xyz contains NaN or Inf (first at point 3)")


@pytest.mark.parametrize(
    ("array", "detail"),
    [
        (np.zeros((64,)), "odd.npy must have shape (N, 3), got (64,)"),
        (np.zeros((64, 2)), "odd.npy must have shape (N, 3), got (64, 2)"),
        (np.array([["a", "b", "c"]]), "odd.npy must hold numbers, got dtype <U1"),
        (np.zeros((0, 3)), "'odd.npy' holds no points"),
    ],
    ids=["flat", "pairs", "strings", "empty"],
)
def test_npy_wrong_array(client: TestClient, array: np.ndarray, detail: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    assert_error(client.post("/v1/pose", files=upload("odd.npy", buffer.getvalue())), 422, detail)


def test_npy_with_pickled_objects(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1, 2, {"x": 3}]], dtype=object), allow_pickle=True)
    response = client.post("/v1/pose", files=upload("pickle.npy", buffer.getvalue()))
    assert_error(
        response,
        422,
        "'pickle.npy' holds Python objects (dtype object), which only unpickling could read: cloudpose "
        "never unpickles uploads; save a numeric (N, 3) array",
    )


def test_uploaded_file_with_too_many_points(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((MAX_POINTS + 1, 3)))
    response = client.post("/v1/pose", files=upload("many.npy", buffer.getvalue()))
    assert_error(
        response,
        413,
        f"'many.npy' declares {MAX_POINTS + 1} points; this service accepts at most {MAX_POINTS} points",
    )


def test_uploaded_file_with_wrong_point_count(client: TestClient, template: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, template[:-2])
    response = client.post("/v1/pose", files=upload("short.npy", buffer.getvalue()))
    assert_error(response, 422, EXAM_DETAIL.format(where="points", count=len(template) - 2, n=len(template)))


def test_multipart_without_file_field(client: TestClient, posed: Posed) -> None:
    response = client.post(
        "/v1/pose", data={"file": "not a file"}, files=upload("cloud.xyz", posed.xyz(), "cloud")
    )
    assert_error(response, 422, "multipart body has no file: upload the cloud in a field named 'file'")


def test_multipart_malformed(client: TestClient) -> None:
    response = client.post(
        "/v1/pose", content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data"}
    )
    assert_error(response, 400, "malformed multipart body")


def test_two_files_to_single_pose(client: TestClient, posed: Posed) -> None:
    files = upload("a.xyz", posed.xyz()) + upload("b.xyz", posed.xyz())
    assert_error(
        client.post("/v1/pose", files=files), 422, "send one file to /v1/pose, or several to /v1/pose/batch"
    )


# ---------------------------------------------------------------------------------------------
# Bad batches


def test_batch_too_many_clouds_json(client: TestClient) -> None:
    clouds = [{"points": [[0.0, 0.0, 0.0]]}] * (MAX_BATCH + 1)
    response = client.post("/v1/pose/batch", json={"clouds": clouds})
    assert_error(response, 413, f"too many clouds: {MAX_BATCH + 1} > limit {MAX_BATCH}")


@pytest.mark.parametrize("extra", [1, 3])
def test_batch_too_many_clouds_multipart(client: TestClient, posed: Posed, extra: int) -> None:
    files = [
        item for index in range(MAX_BATCH + extra) for item in upload(f"c{index}.npy", posed.npy(), "files")
    ]
    response = client.post("/v1/pose/batch", files=files)
    assert_error_starts(response, 413, "too many clouds: ")
    assert f"limit {MAX_BATCH}" in response.json()["detail"]


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        ([[1, 2], [3, 4]], "clouds[1].points must have shape (N, 3), got (2, 2)"),
        ([], "clouds[1].points is empty: send at least one point"),
        ("x", "clouds[1].points must be a list of [x, y, z] triples"),
        ([["a", 1, 2]], "clouds[1].points must be a list of [x, y, z] triples of numbers"),
    ],
    ids=["shape", "empty", "not-a-list", "strings"],
)
def test_batch_bad_cloud_at_index_1(client: TestClient, posed: Posed, bad: object, detail: str) -> None:
    good = {"points": posed.points.tolist()}
    response = client.post("/v1/pose/batch", json={"clouds": [good, {"points": bad}, good]})
    assert_error(response, 422, detail)


def test_batch_wrong_point_count_at_index_1(client: TestClient, posed: Posed, template: np.ndarray) -> None:
    good = {"points": posed.points.tolist()}
    short = {"points": posed.points[:-1].tolist()}
    response = client.post("/v1/pose/batch", json={"clouds": [good, short]})
    assert_error(
        response, 422, EXAM_DETAIL.format(where="clouds[1]", count=len(template) - 1, n=len(template))
    )


def test_batch_entry_not_an_object(client: TestClient, posed: Posed) -> None:
    response = client.post(
        "/v1/pose/batch", json={"clouds": [{"points": posed.points.tolist()}, [[1, 2, 3]]]}
    )
    assert_error(response, 422, "clouds[1] must be an object with a 'points' list")


@pytest.mark.parametrize(
    "body",
    [{"points": [[1, 2, 3]]}, {"clouds": []}, {"clouds": "x"}, [{"points": [[1, 2, 3]]}]],
    ids=["no-clouds", "empty", "string", "list"],
)
def test_batch_without_clouds(client: TestClient, body: object) -> None:
    response = client.post("/v1/pose/batch", json=body)
    assert_error(
        response,
        422,
        "JSON body must be an object with a non-empty 'clouds' list of {\"points\": [...]} objects",
    )


def test_batch_malformed_json(client: TestClient) -> None:
    assert_error_starts(post_json_bytes(client, "/v1/pose/batch", b'{"clouds": ['), 400, "malformed JSON: ")


def test_batch_multipart_bad_file_at_index_1(client: TestClient, posed: Posed) -> None:
    files = upload("good.npy", posed.npy(), "files") + upload("bad.npy", b"junk", "files")
    response = client.post("/v1/pose/batch", files=files)
    assert_error(
        response,
        422,
        "'bad.npy' is not an .npy file: it does not start with NumPy's magic bytes (save it with numpy.save)",
    )


# ---------------------------------------------------------------------------------------------
# Still serving after all of the above (module order: this runs last)


def test_server_still_answers_after_bad_input(
    client: TestClient, template: np.ndarray, diagonal: float
) -> None:
    for seed in (101, 102):
        cloud = Posed(template, diagonal, seed)
        response = client.post("/v1/pose", json={"points": cloud.points.tolist()})
        assert response.status_code == 200, response.text
        assert_pose(response.json(), cloud.points, template, diagonal)
    assert client.get("/health").json()["status"] == "ok"


# ---------------------------------------------------------------------------------------------
# Model loading


@pytest.fixture()
def export_copy(export_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the export folder; returns its model.onnx."""
    target = tmp_path / "export"
    shutil.copytree(export_dir, target)
    return target / "model.onnx"


def test_copied_export_loads(export_copy: Path, sidecar: dict) -> None:
    estimator = PoseEstimator(export_copy)
    assert estimator.model_id == sidecar["model_id"]


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model file not found"):
        PoseEstimator(tmp_path / "model.onnx")


def test_missing_sidecar(export_copy: Path) -> None:
    export_copy.with_suffix(".json").unlink()
    with pytest.raises(ModelLoadError, match="model sidecar not found"):
        PoseEstimator(export_copy)


def test_model_hash_mismatch(export_copy: Path) -> None:
    data = bytearray(export_copy.read_bytes())
    data[-1] ^= 0xFF
    export_copy.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match the hash in model.json"):
        PoseEstimator(export_copy)


def test_corrupt_sidecar_json(export_copy: Path) -> None:
    sidecar_path = export_copy.with_suffix(".json")
    sidecar_path.write_text(sidecar_path.read_text()[:-20])
    with pytest.raises(ModelLoadError, match="is not valid JSON"):
        PoseEstimator(export_copy)


@pytest.mark.parametrize("content", [[1, 2, 3], {"format": "something-else/1"}], ids=["list", "other-format"])
def test_sidecar_of_another_format(export_copy: Path, content: object) -> None:
    export_copy.with_suffix(".json").write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match="is not a cloudpose-model/1 file"):
        PoseEstimator(export_copy)


@pytest.mark.parametrize("field", ["model_id", "n_points", "template", "kind"])
def test_sidecar_missing_field(export_copy: Path, field: str) -> None:
    sidecar_path = export_copy.with_suffix(".json")
    content = json.loads(sidecar_path.read_text())
    del content[field]
    sidecar_path.write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=f"lacks.*{field}"):
        PoseEstimator(export_copy)


def test_missing_template(export_copy: Path) -> None:
    (export_copy.parent / "template.npy").unlink()
    with pytest.raises(ModelLoadError, match="template .* is missing or corrupt"):
        PoseEstimator(export_copy)


def test_model_bytes_not_onnx(export_copy: Path) -> None:
    # The hash matches, but the bytes are not a model onnxruntime can load.
    import hashlib

    garbage = b"not an onnx model"
    export_copy.write_bytes(garbage)
    sidecar_path = export_copy.with_suffix(".json")
    content = json.loads(sidecar_path.read_text())
    content["onnx_sha256"] = hashlib.sha256(garbage).hexdigest()
    sidecar_path.write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match="onnxruntime could not load"):
        PoseEstimator(export_copy)


def test_app_startup_fails_on_bad_model(tmp_path: Path) -> None:
    app = create_app(Settings(model_path=tmp_path / "missing.onnx"))
    with pytest.raises(ModelLoadError, match="model file not found"):
        with TestClient(app):
            pass
