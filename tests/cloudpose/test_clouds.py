"""The payload parsers, in process: every container cloudpose reads gives back its points exactly,
and every file that lies about its size is refused before anything of that size is allocated."""

from __future__ import annotations

import io
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import plyfile
import pytest

from cloudpose.io.cloudfiles import MAX_DECODED_BYTES
from cloudpose.io.clouds import MAX_ABS_COORDINATE, CloudError, as_cloud, read_cloud_file

MAX_POINTS = 1000
# Refusing a file by its header may allocate a copy of the (small) file, never what it declares.
REFUSAL_PEAK_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    """(200, 3) points exactly representable in float32 (so every container round-trips them)."""
    rng = np.random.default_rng(7)
    return np.round(rng.uniform(-50.0, 50.0, size=(200, 3)), 2).astype(np.float32).astype(np.float64)


def refused(name: str, data: bytes, max_points: int = MAX_POINTS) -> tuple[int, str]:
    with pytest.raises(CloudError) as error:
        read_cloud_file(name, data, max_points)
    return error.value.status, error.value.detail


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def ply(
    points: np.ndarray, text: bool, byte_order: str = "<", faces: bool = False, extra: bool = False
) -> bytes:
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if extra:
        fields = [("nx", "f8"), *fields, ("red", "u1")]
    vertices = np.zeros(len(points), dtype=fields)
    vertices["x"], vertices["y"], vertices["z"] = points.T
    elements = [plyfile.PlyElement.describe(vertices, "vertex")]
    if faces:
        triangles = np.zeros(len(points) // 3, dtype=[("vertex_indices", "i4", (3,))])
        triangles["vertex_indices"] = np.arange(len(triangles) * 3).reshape(-1, 3)
        elements.append(plyfile.PlyElement.describe(triangles, "face"))
    buffer = io.BytesIO()
    plyfile.PlyData(elements, text=text, byte_order=byte_order).write(buffer)
    return buffer.getvalue()


def open3d_pcd(points: np.ndarray, ascii: bool, compressed: bool = False) -> bytes:
    import open3d

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cloud.pcd"
        cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(points))
        assert open3d.io.write_point_cloud(str(path), cloud, write_ascii=ascii, compressed=compressed)
        return path.read_bytes()


def pypcd4_pcd(points: np.ndarray, encoding: str) -> bytes:
    from pypcd4 import Encoding, PointCloud

    intensity = np.arange(len(points), dtype=np.float32)[:, None]
    cloud = PointCloud.from_xyzi_points(np.hstack([points.astype(np.float32), intensity]))
    buffer = io.BytesIO()
    cloud.save(buffer, encoding=Encoding(encoding))
    data = buffer.getvalue()
    assert f"DATA {encoding}\n".encode() in data  # pypcd4 stores incompressible data as binary
    return data


def pcd_header(points: int, data: str = "ascii") -> bytes:
    return (
        f"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {points}\n"
        f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n"
    ).encode()


# ---------------------------------------------------------------------------------------------
# Every container gives back its points


def test_npy_containers(points: np.ndarray) -> None:
    structured = np.zeros(len(points), dtype=[("i", "u1"), ("z", ">f8"), ("x", "<f4"), ("y", ">i8")])
    structured["x"], structured["z"] = points[:, 0], points[:, 2]
    structured["y"] = np.round(points[:, 1])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, normals=points * 0, points=points)
    containers = {
        "float64": (npy(points), points),
        "big-endian float32": (npy(points.astype(">f4")), points),
        "fortran order": (npy(np.asfortranarray(points)), points),
        "float16": (npy(points.astype(np.float16)), points.astype(np.float16)),
        "int16": (npy(np.round(points).astype(np.int16)), np.round(points)),
        "structured": (npy(structured), np.stack([points[:, 0], np.round(points[:, 1]), points[:, 2]], 1)),
        "npz named points": (buffer.getvalue(), points),
        "stored zip": (zipped({"arr_0.npy": npy(points)}, zipfile.ZIP_STORED), points),
    }
    for label, (data, expected) in containers.items():
        name = "cloud.npz" if label.startswith("npz") else "cloud.npy"
        cloud = read_cloud_file(name, data, MAX_POINTS)
        assert cloud.dtype == np.float64 and cloud.shape == (len(points), 3), label
        np.testing.assert_array_equal(cloud, expected.astype(np.float64), err_msg=label)


@pytest.mark.parametrize(
    ("text", "byte_order", "faces", "extra"),
    [
        (True, "=", False, False),
        (True, "=", True, True),
        (False, "<", False, False),
        (False, ">", False, True),
        (False, "<", True, False),
        (False, ">", True, True),
    ],
    ids=["ascii", "ascii-mesh-extra", "little", "big-extra", "little-mesh", "big-mesh-extra"],
)
def test_ply_round_trip(points: np.ndarray, text: bool, byte_order: str, faces: bool, extra: bool) -> None:
    cloud = read_cloud_file("cloud.ply", ply(points, text, byte_order, faces, extra), MAX_POINTS)
    np.testing.assert_array_equal(cloud, points)


def test_ply_with_crlf_lines_and_trimesh(points: np.ndarray) -> None:
    import trimesh

    crlf = ply(points[:5], text=True).replace(b"\n", b"\r\n")
    np.testing.assert_array_equal(read_cloud_file("crlf.ply", crlf, MAX_POINTS), points[:5])
    exported = trimesh.PointCloud(points).export(file_type="ply")
    np.testing.assert_array_equal(read_cloud_file("trimesh.ply", exported, MAX_POINTS), points)


@pytest.mark.parametrize(
    "writer",
    [
        "open3d-ascii",
        "open3d-binary",
        "open3d-compressed",
        "pypcd4-ascii",
        "pypcd4-binary",
        "pypcd4-compressed",
    ],
)
def test_pcd_round_trip(points: np.ndarray, writer: str) -> None:
    data = {
        "open3d-ascii": lambda: open3d_pcd(points, ascii=True),
        "open3d-binary": lambda: open3d_pcd(points, ascii=False),
        "open3d-compressed": lambda: open3d_pcd(points, ascii=False, compressed=True),
        "pypcd4-ascii": lambda: pypcd4_pcd(points, "ascii"),
        "pypcd4-binary": lambda: pypcd4_pcd(points, "binary"),
        "pypcd4-compressed": lambda: pypcd4_pcd(points, "binary_compressed"),
    }[writer]()
    np.testing.assert_allclose(read_cloud_file("cloud.pcd", data, MAX_POINTS), points, rtol=1e-7)


def test_pcd_header_without_count_version_or_height() -> None:
    data = b"FIELDS x y z\nSIZE 8 8 8\nTYPE F F F\nWIDTH 2\nDATA ascii\n1 2 3\n4 5 6\n"
    np.testing.assert_array_equal(read_cloud_file("short.pcd", data, MAX_POINTS), [[1, 2, 3], [4, 5, 6]])


def test_xyz_with_comments_blank_lines_and_extra_columns() -> None:
    data = b"# x y z intensity\n1 2 3 9\n\n4 5 6 9 # a comment\n"
    np.testing.assert_array_equal(read_cloud_file("scan.xyz", data, MAX_POINTS), [[1, 2, 3], [4, 5, 6]])


# ---------------------------------------------------------------------------------------------
# Declared sizes are checked before anything of that size exists


@pytest.mark.parametrize(
    ("name", "data", "status", "detail"),
    [
        (
            "billion.pcd",
            pcd_header(10**9) + b"1 2 3\n",
            413,
            f"'billion.pcd' declares 1000000000 points of 12 bytes (12000000000 bytes); this service reads "
            f"at most {MAX_DECODED_BYTES} bytes of point data",
        ),
        (
            "short.pcd",
            pcd_header(10**6) + b"1 2 3\n" * 40,
            422,
            "'short.pcd' declares 1000000 points but holds 40 lines of data: the file is truncated or its "
            "header is wrong",
        ),
        (
            "short.ply",
            b"ply\nformat binary_little_endian 1.0\nelement vertex 5000000\nproperty double x\n"
            b"property double y\nproperty double z\nend_header\n" + bytes(240),
            422,
            "'short.ply' is truncated: its header declares 120000000 bytes of data (element vertex 5000000) "
            "but 240 bytes follow",
        ),
        (
            "lines.ply",
            b"ply\nformat ascii 1.0\nelement vertex 5000000\nproperty float x\nproperty float y\n"
            b"property float z\nend_header\n" + b"1 2 3\n" * 100,
            422,
            "'lines.ply' declares 5000000 rows of data (element vertex 5000000) but holds 100 lines: the "
            "file is truncated or its header is wrong",
        ),
        (
            "huge.npy",
            npy_header((10**8, 3)) + bytes(48),
            413,
            f"'huge.npy' declares a (100000000, 3) array of float64 (2400000000 bytes); this service reads "
            f"at most {MAX_DECODED_BYTES} bytes of array data",
        ),
        (
            "short.npy",
            npy_header((10**6, 3)) + bytes(48),
            422,
            "'short.npy' is truncated: its header declares a (1000000, 3) array of float64 (24000000 bytes) "
            "but 48 bytes follow",
        ),
    ],
    ids=["pcd-bytes", "pcd-rows", "ply-binary", "ply-ascii", "npy-bytes", "npy-truncated"],
)
def test_lying_header_is_refused_before_allocating(name: str, data: bytes, status: int, detail: str) -> None:
    # A limit far above what the file declares: only the byte limits and the data present stop it.
    tracemalloc.start()
    try:
        assert refused(name, data, max_points=10**10) == (status, detail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < REFUSAL_PEAK_BYTES + 2 * len(data), f"peak {peak} bytes"


def test_zip_bomb_is_not_decompressed_beyond_its_declared_array() -> None:
    # 64 MiB of zeros after a 1000-point array: refused after reading one byte past the array.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("arr_0.npy", "w") as member:
            member.write(npy_header((MAX_POINTS, 3)))
            for _ in range(64):
                member.write(bytes(1024 * 1024))
    data = buffer.getvalue()
    assert len(data) < 1024 * 1024
    tracemalloc.start()
    try:
        status_detail = refused("bomb.npz", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status_detail == (
        422,
        f"'bomb.npz' (member 'arr_0.npy') has more data after the ({MAX_POINTS}, 3) array of float64 its "
        "header declares: the file is corrupt",
    )
    assert peak < 4 * MAX_POINTS * 3 * 8 + REFUSAL_PEAK_BYTES, f"peak {peak} bytes"


@pytest.mark.parametrize("suffix", [".xyz", ".ply", ".pcd"])
def test_one_huge_text_line_is_refused_before_parsing(suffix: str) -> None:
    header = {
        ".xyz": b"",
        ".ply": b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
        b"property float z\nend_header\n",
        ".pcd": pcd_header(1),
    }[suffix]
    data = header + b"1.5 " * 2_500_000 + b"\n"
    tracemalloc.start()
    try:
        status_detail = refused(f"line{suffix}", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status_detail == (
        422,
        f"'line{suffix}' has a line longer than 4096 bytes; a text cloud holds one point per line",
    )
    # A parser splitting that line would take about 100 MB; the scan takes a few.
    assert peak < 4 * 1024 * 1024 + 2 * len(data), f"peak {peak} bytes"


@pytest.mark.parametrize(
    ("name", "data", "detail"),
    [
        ("many.npy", npy(np.zeros((MAX_POINTS + 1, 3))), "'many.npy' declares 1001 points"),
        (
            "many.npz",
            zipped({"arr_0.npy": npy(np.zeros((MAX_POINTS + 1, 3)))}),
            "'many.npz' (member 'arr_0.npy') declares 1001 points",
        ),
        ("many.ply", ply(np.zeros((MAX_POINTS + 1, 3)), text=False), "'many.ply' declares 1001 vertices"),
        (
            "many.pcd",
            pcd_header(MAX_POINTS + 1, "binary") + bytes(12 * (MAX_POINTS + 1)),
            "'many.pcd' declares 1001 points",
        ),
    ],
    ids=["npy", "npz", "ply", "pcd"],
)
def test_one_point_over_the_limit(name: str, data: bytes, detail: str) -> None:
    assert refused(name, data) == (413, f"{detail}; this service accepts at most {MAX_POINTS} points")


def test_xyz_over_the_limit_is_refused_without_reading_it_all() -> None:
    assert refused("many.xyz", b"1 2 3\n" * (MAX_POINTS + 1)) == (
        413,
        f"'many.xyz' has more than {MAX_POINTS} points; this service accepts at most {MAX_POINTS}",
    )


def test_at_the_limit_is_accepted(points: np.ndarray) -> None:
    cloud = np.resize(points, (MAX_POINTS, 3))
    assert read_cloud_file("full.npy", npy(cloud), MAX_POINTS).shape == (MAX_POINTS, 3)
    assert read_cloud_file("full.ply", ply(cloud, text=True), MAX_POINTS).shape == (MAX_POINTS, 3)


# ---------------------------------------------------------------------------------------------
# Files whose data does not match their header


@pytest.mark.parametrize(
    ("name", "make", "detail"),
    [
        (
            "a.ply",
            lambda p: ply(p, text=True) + b"1 2 3\n",
            "declares 200 rows of data (element vertex 200) but holds 201 lines: the file is truncated or "
            "its header is wrong",
        ),
        (
            "b.ply",
            lambda p: ply(p, text=False, faces=True)[:-1],
            "is truncated: its header declares 3258 bytes of data (element vertex 200, element face 66) but "
            "3257 bytes follow",
        ),
        (
            "c.ply",
            lambda p: ply(p, text=False, faces=True) + b"\0",
            "has 1 byte after the 3258 bytes of data its header declares (element vertex 200, element face "
            "66): the file is corrupt",
        ),
        (
            "d.ply",
            lambda p: ply(p, text=True, faces=True).rsplit(b"\n", 3)[0] + b"\n",
            "declares 266 rows of data (element vertex 200, element face 66) but holds 264 lines: the file "
            "is truncated or its header is wrong",
        ),
        (
            "e.pcd",
            lambda p: open3d_pcd(p, ascii=True) + b"1 2 3\n",
            "declares 200 points but holds 201 lines of data: the file is truncated or its header is wrong",
        ),
        (
            "f.npy",
            lambda p: npy(p)[:-8],
            "is truncated: its header declares a (200, 3) array of float64 (4800 bytes) but 4792 bytes "
            "follow",
        ),
        (
            "g.npz",
            lambda p: zipped({"arr_0.npy": npy(p)[:-8]}),
            "(member 'arr_0.npy') is truncated: its header declares a (200, 3) array of float64 (4800 bytes) "
            "but 4792 bytes follow",
        ),
    ],
    ids=[
        "ply-ascii-extra-row",
        "ply-mesh-short",
        "ply-mesh-long",
        "ply-ascii-faces-short",
        "pcd-extra-row",
        "npy-short",
        "npz-short",
    ],
)
def test_data_not_matching_the_header(points: np.ndarray, name: str, make, detail: str) -> None:
    assert refused(name, make(points)) == (422, f"{name!r} {detail}")


def test_mesh_with_mixed_polygons_is_read(points: np.ndarray) -> None:
    # Triangles and a quad: rows of two sizes, checked only for the bytes they take at least.
    faces = np.empty(2, dtype=[("vertex_indices", "O")])
    faces[0], faces[1] = (np.array([0, 1, 2], dtype=np.int32),), (np.array([0, 1, 2, 3], dtype=np.int32),)
    vertices = np.zeros(len(points), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    vertices["x"], vertices["y"], vertices["z"] = points.T
    buffer = io.BytesIO()
    plyfile.PlyData(
        [plyfile.PlyElement.describe(vertices, "vertex"), plyfile.PlyElement.describe(faces, "face")]
    ).write(buffer)
    np.testing.assert_array_equal(read_cloud_file("mixed.ply", buffer.getvalue(), MAX_POINTS), points)
    assert refused("mixed.ply", buffer.getvalue()[:-40]) == (
        422,
        "'mixed.ply' is truncated: its header declares at least 2402 bytes of data (element vertex 200, "
        "element face 2) but 2390 bytes follow",
    )


# ---------------------------------------------------------------------------------------------
# Numbers


def test_bound_is_inclusive() -> None:
    at_bound = np.array([[MAX_ABS_COORDINATE, -MAX_ABS_COORDINATE, 0.0]])
    np.testing.assert_array_equal(as_cloud(at_bound, 10), at_bound)
    beyond = np.array([[0.0, 0.0, 0.0], [0.0, np.nextafter(-MAX_ABS_COORDINATE, -np.inf), 0.0]])
    with pytest.raises(CloudError) as error:
        as_cloud(beyond, 10)
    assert (error.value.status, error.value.detail) == (
        422,
        "points has a coordinate of -1e+09 at point 1; cloudpose accepts coordinates within +-1e+09 (far "
        "beyond any object in any unit): are the points scaled or encoded wrongly?",
    )


def test_nan_is_reported_before_magnitude() -> None:
    with pytest.raises(CloudError) as error:
        as_cloud(np.array([[1e20, 0.0, 0.0], [np.inf, 0.0, 0.0]]), 10)
    assert error.value.detail == "points contains NaN or Inf (first at point 1)"


@pytest.mark.parametrize(
    "value",
    [
        [[1, 2, True]],
        [[1.5, False, 2.5], [1.0, 2.0, 3.0]],
        [[True, False, True]],
        [[1, 2, None]],
        [[1, 2, "3"]],
    ],
    ids=["int-and-bool", "float-and-bool", "all-bool", "null", "string"],
)
def test_json_non_numbers_are_refused(value: list) -> None:
    with pytest.raises(CloudError) as error:
        as_cloud(value, 10)
    assert (error.value.status, error.value.detail) == (
        422,
        "points must be a list of [x, y, z] triples of numbers",
    )


def test_json_integers_are_numbers() -> None:
    np.testing.assert_array_equal(as_cloud([[1, 2, 3], [4, 5, 6]], 10), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def test_json_triples_read_exactly_as_numpy_reads_them(points: np.ndarray) -> None:
    # Floats, ints and a mix of them: the one-pass reader gives what np.array gives, as float64.
    rows = points.tolist() + [[1, 2, 3], [4, 5.5, -6]]
    cloud = as_cloud(rows, MAX_POINTS)
    assert cloud.dtype == np.float64
    np.testing.assert_array_equal(cloud, np.array(rows, dtype=np.float64))


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ([[1, 2], [3, 4, 5, 6]], "points must be a list of [x, y, z] triples of numbers"),
        ([[1, 2, [3]]], "points must be a list of [x, y, z] triples of numbers"),
        (["abc"], "points must be a list of [x, y, z] triples of numbers"),
        ([[2**70, 1, 1]], "points must be a list of [x, y, z] triples of numbers"),
        ([[1.0, 2.0, 3.0, 4.0]], "points must have shape (N, 3), got (1, 4)"),
    ],
    ids=["ragged", "nested", "string-rows", "int-past-int64", "quads"],
)
def test_json_rows_that_are_not_triples_get_the_general_message(value: list, detail: str) -> None:
    with pytest.raises(CloudError) as error:
        as_cloud(value, 10)
    assert (error.value.status, error.value.detail) == (422, detail)


def test_a_frame_file_drops_missing_returns_a_cloud_file_refuses_them(tmp_path: Path) -> None:
    from pypcd4 import PointCloud

    from cloudpose.io.clouds import read_frame_file

    rng = np.random.default_rng(3)
    organized = rng.uniform(0.5, 1.5, size=(4, 5, 3)).astype(np.float32)
    organized[1, 2] = np.nan  # pixels without a return
    organized[3, 0] = np.nan
    expected = organized.reshape(-1, 3)[~np.isnan(organized.reshape(-1, 3)).any(axis=1)]
    np.testing.assert_array_equal(read_frame_file("frame.npy", npy(organized), MAX_POINTS), expected)
    path = tmp_path / "frame.pcd"
    PointCloud.from_xyz_points(organized.reshape(-1, 3)).save(path)
    np.testing.assert_array_equal(read_frame_file("frame.pcd", path.read_bytes(), MAX_POINTS), expected)
    status, detail = refused("frame.npy", npy(organized))
    assert status == 422
    with pytest.raises(CloudError) as error:
        read_frame_file("holes.npy", npy(np.full((2, 2, 3), np.nan, dtype=np.float32)), MAX_POINTS)
    assert (error.value.status, error.value.detail) == (
        422,
        "'holes.npy' has no point with a return (every row is NaN)",
    )
