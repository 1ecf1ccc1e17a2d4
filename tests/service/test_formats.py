"""Every cloud format cloudpose reads, each file written by its own library (numpy and csv for
text tables, laspy for LAS and LAZ, pye57 for E57, pypcd4 for PCD): the parser gives back the
same points, an upload to a real uvicorn gives the same pose in every format, ``cloudpose
predict`` reads them too, and damaged files get a 4xx with a fixed detail, never a 500."""

from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloudpose.io.clouds import CLOUD_SUFFIXES, CloudError, read_cloud_file
from tests.cloudpose.test_clouds import pypcd4_pcd
from tests.service.test_uvicorn import REPO_ROOT, cloudpose_command, free_port, running_server

MAX_POINTS = 1000
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
# Coordinates on a grid of 2**-10: exact in float32 (PCD, E57), in decimal text and as LAS
# integers at this scale, so every format holds exactly the same numbers.
GRID = 2.0**-10
# Georeferenced LAS files carry large offsets; the reader must give offset + integer * scale.
LAS_OFFSETS = np.array([500_000.0, 4_000_000.0, 100.0])


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    """(200, 3) points on the grid, within +-50."""
    rng = np.random.default_rng(11)
    return np.round(rng.uniform(-50.0, 50.0, size=(200, 3)) / GRID) * GRID


def parsed(name: str, data: bytes, max_points: int = MAX_POINTS) -> np.ndarray:
    return read_cloud_file(name, data, max_points)


def refused(name: str, data: bytes, max_points: int = MAX_POINTS) -> tuple[int, str]:
    with pytest.raises(CloudError) as error:
        read_cloud_file(name, data, max_points)
    return error.value.status, error.value.detail


# ---------------------------------------------------------------------------------------------
# Writers: each format as its own library writes it


def savetxt(points: np.ndarray, **options) -> bytes:
    """numpy.savetxt of the points and an intensity column."""
    buffer = io.BytesIO()
    table = np.hstack([points, np.arange(len(points))[:, None]])
    np.savetxt(buffer, table, fmt="%.17g", **options)
    return buffer.getvalue()


def csv_table(points: np.ndarray, header: list[str] | None, order: list[int], **options) -> bytes:
    """csv.writer rows (its default line ends are \\r\\n); ``order`` picks the columns of
    (x, y, z, intensity) in the file's order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, **options)
    if header is not None:
        writer.writerow(header)
    table = np.hstack([points, np.arange(len(points))[:, None]])
    writer.writerows([[repr(float(row[index])) for index in order] for row in table])
    return buffer.getvalue().encode()


def decimal_comma_csv(points: np.ndarray) -> bytes:
    """A spreadsheet's export in a locale with decimal commas: ';' between values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";")
    writer.writerow(["X", "Y", "Z"])
    writer.writerows([[repr(float(value)).replace(".", ",") for value in row] for row in points])
    return buffer.getvalue().encode()


def las(
    points: np.ndarray,
    version: str = "1.2",
    point_format: int = 3,
    compress: bool = False,
    offsets: np.ndarray | None = None,
) -> bytes:
    """A LAS (or LAZ) file of these coordinates, stored as integers at the grid's scale from
    ``offsets`` (by default the points' lower corner, as writers usually choose it)."""
    import laspy

    header = laspy.LasHeader(point_format=point_format, version=version)
    header.scales = np.full(3, GRID)
    header.offsets = np.floor(points.min(axis=0)) if offsets is None else offsets
    data = laspy.LasData(header)
    data.x, data.y, data.z = points.T
    buffer = io.BytesIO()
    data.write(buffer, do_compress=compress)
    return buffer.getvalue()


def las_with_count(data: bytes, count: int) -> bytes:
    """A LAS 1.2 file whose header declares ``count`` points (legacy point count, byte 107)."""
    return data[:107] + struct.pack("<I", count) + data[111:]


def e57(tmp_path: Path, scans: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]) -> bytes:
    """An E57 file of these scans, each (points, rotation wxyz, translation) as pye57 writes it."""
    import pye57

    path = tmp_path / f"scan{len(list(tmp_path.glob('*.e57')))}.e57"
    with pye57.E57(str(path), mode="w") as file:
        for scan, rotation, translation in scans:
            file.write_scan_raw(
                {"cartesianX": scan[:, 0], "cartesianY": scan[:, 1], "cartesianZ": scan[:, 2]},
                rotation=rotation,
                translation=translation,
            )
    return path.read_bytes()


WRITERS: dict[str, tuple[str, Callable[[np.ndarray, Path], bytes]]] = {
    "xyz-numpy": ("cloud.xyz", lambda p, _: savetxt(p)),
    "xyz-header": ("cloud.xyz", lambda p, _: savetxt(p, header="x y z intensity", comments="")),
    "txt-tabs-comments": (
        "cloud.txt",
        lambda p, _: savetxt(p, delimiter="\t", header="scanned 2026-12-01\nunits: mm", comments="# "),
    ),
    "csv-no-header": ("cloud.csv", lambda p, _: csv_table(p, None, [0, 1, 2, 3])),
    "csv-header-reordered": (
        "cloud.csv",
        lambda p, _: csv_table(p, ["intensity", "Z", "X", "Y"], [3, 2, 0, 1]),
    ),
    "csv-quoted": (
        "cloud.csv",
        lambda p, _: csv_table(p, ["X", "Y", "Z", "intensity"], [0, 1, 2, 3], quoting=csv.QUOTE_ALL),
    ),
    "csv-semicolons": (
        "cloud.csv",
        lambda p, _: csv_table(p, ["x", "y", "z", "i"], [0, 1, 2, 3], delimiter=";"),
    ),
    "csv-decimal-commas": ("cloud.csv", lambda p, _: decimal_comma_csv(p)),
    "txt-cloudcompare": ("cloud.txt", lambda p, _: csv_table(p, ["//X", "Y", "Z", "Scalar"], [0, 1, 2, 3])),
    "las-1.2": ("cloud.las", lambda p, _: las(p)),
    "las-1.4": ("cloud.las", lambda p, _: las(p, "1.4", 6)),
    "laz-1.2": ("cloud.laz", lambda p, _: las(p, compress=True)),
    "laz-1.4": ("cloud.laz", lambda p, _: las(p, "1.4", 6, compress=True)),
    "e57": ("cloud.e57", lambda p, folder: e57(folder, [(p, None, None)])),
    "pcd-ascii": ("cloud.pcd", lambda p, _: pypcd4_pcd(p, "ascii")),
    "pcd-binary": ("cloud.pcd", lambda p, _: pypcd4_pcd(p, "binary")),
    "pcd-binary-compressed": ("cloud.pcd", lambda p, _: pypcd4_pcd(p, "binary_compressed")),
}


# ---------------------------------------------------------------------------------------------
# The parser gives back the points


@pytest.mark.parametrize("writer", list(WRITERS))
def test_each_format_gives_back_its_points(points: np.ndarray, writer: str, tmp_path: Path) -> None:
    name, write = WRITERS[writer]
    cloud = parsed(name, write(points, tmp_path))
    assert cloud.dtype == np.float64 and cloud.shape == points.shape
    np.testing.assert_array_equal(cloud, points)


def test_las_coordinates_are_scaled_not_raw(points: np.ndarray) -> None:
    import laspy

    georeferenced = points + LAS_OFFSETS
    data = las(georeferenced, offsets=LAS_OFFSETS)
    stored = laspy.read(io.BytesIO(data))
    raw = np.stack([stored.X, stored.Y, stored.Z], axis=1)  # the stored integers
    np.testing.assert_array_equal(raw, points / GRID)  # neither raw nor offset-free would pass below
    np.testing.assert_array_equal(parsed("geo.las", data), georeferenced)


def test_e57_scans_are_moved_by_their_poses_into_one_frame(points: np.ndarray, tmp_path: Path) -> None:
    # A second scan taken from a scanner turned 90 degrees about z and moved 10 units along x.
    turn = np.array([np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)])  # w, x, y, z
    shift = np.array([10.0, 0.0, 0.0])
    data = e57(tmp_path, [(points[:150], None, None), (points[150:], turn, shift)])
    cloud = parsed("two.e57", data)
    np.testing.assert_array_equal(cloud[:150], points[:150])
    quarter_turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # column vectors
    np.testing.assert_allclose(cloud[150:], points[150:] @ quarter_turn.T + shift, atol=1e-9)


def test_a_trailing_separator_is_not_a_header() -> None:
    np.testing.assert_array_equal(parsed("trailing.csv", b"1,2,3,\n4,5,6,\n"), [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(parsed("named.csv", b"z,y,x,\n1,2,3,\n"), [[3, 2, 1]])


def test_every_format_is_a_suffix_the_service_accepts() -> None:
    assert set(CLOUD_SUFFIXES) >= {".xyz", ".txt", ".csv", ".las", ".laz", ".e57", ".pcd", ".ply"}
    assert {Path(name).suffix for name, _ in WRITERS.values()} <= set(CLOUD_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# Damaged files: a 4xx with a fixed detail


DAMAGED = [
    (
        "cut.las",
        lambda p, _: las(p)[:-50],
        422,
        "is truncated: its header declares 200 points of 34 bytes (6800 bytes) but 6750 bytes follow "
        "its header",
    ),
    (
        "lying.las",
        lambda p, _: las_with_count(las(p), 250),
        422,
        "is truncated: its header declares 250 points of 34 bytes (8500 bytes) but 6800 bytes follow "
        "its header",
    ),
    (
        "header.las",
        lambda p, _: las(p)[:100],
        422,
        "has a LAS header that laspy cannot read: the file is truncated or corrupt",
    ),
    (
        "text.las",
        lambda p, _: b"x y z\n1 2 3\n",
        422,
        "is not a LAS or LAZ file: it does not start with 'LASF'",
    ),
    (
        "cut.laz",
        lambda p, _: las(p, compress=True)[:-50],
        422,
        "is compressed (LAZ) but its points do not decompress: the file is truncated or corrupt",
    ),
    (
        "lying.laz",
        lambda p, _: las_with_count(las(p, compress=True), 250),
        422,
        "is compressed (LAZ) but its points do not decompress: the file is truncated or corrupt",
    ),
    (
        "cut.e57",
        lambda p, folder: e57(folder, [(p, None, None)])[:-10],
        422,
        "is 6134 bytes long but its header declares 6144: the file is truncated",
    ),
    (
        "padded.e57",
        lambda p, folder: e57(folder, [(p, None, None)]) + b"\0",
        422,
        "is 6145 bytes long but its header declares 6144: the file is corrupt",
    ),
    (
        "flipped.e57",
        lambda p, folder: (lambda d: d[:3000] + bytes([d[3000] ^ 1]) + d[3001:])(
            e57(folder, [(p, None, None)])
        ),
        422,
        "is not a readable E57 file (checksum mismatch, file is corrupted (ErrorBadChecksum))",
    ),
    (
        "text.e57",
        lambda p, _: b"ASTM-E57 is what this says",
        422,
        "is not an E57 file: it does not start with 'ASTM-E57'",
    ),
    (
        "names.csv",
        lambda p, _: csv_table(p, ["a", "b", "c", "d"], [0, 1, 2, 3]),
        422,
        "has a header line (a, b, c, d) with no column named x or y or z: name the coordinate columns x, "
        "y and z, or leave the header out (a .csv file then takes the first three columns)",
    ),
    (
        "twice.csv",
        lambda p, _: csv_table(p, ["x", "x", "z", "i"], [0, 1, 2, 3]),
        422,
        "has a header line (x, x, z, i) with no column named y and more than one column named x: name the "
        "coordinate columns x, y and z, or leave the header out (a .csv file then takes the first three "
        "columns)",
    ),
    (
        "word.csv",
        lambda p, _: b"x,y,z\n1,2,3\n4,five,6\n",
        422,
        "has 'five' where a number should be (data row 2, column 2): a .csv file holds one point per line, "
        "in numbers",
    ),
    (
        "pairs.csv",
        lambda p, _: csv_table(p, None, [0, 1]),
        422,
        "has 2 numbers on a line; a .csv file needs 3 per line (x y z)",
    ),
    (
        "binary.csv",
        lambda p, _: bytes(range(256)),
        422,
        "is not UTF-8 text: a .csv file holds lines of 'x y z'",
    ),
    ("header-only.txt", lambda p, _: b"x\ty\tz\n", 422, "holds no points"),
]


@pytest.mark.parametrize(("name", "make", "status", "detail"), DAMAGED, ids=[case[0] for case in DAMAGED])
def test_damaged_file_gets_a_fixed_detail(
    points: np.ndarray, name: str, make, status: int, detail: str, tmp_path: Path
) -> None:
    assert refused(name, make(points, tmp_path)) == (status, f"{name!r} {detail}")


@pytest.mark.parametrize(
    ("name", "make", "detail"),
    [
        (
            "billion.las",
            lambda p, _: las_with_count(las(p), 10**9),
            "'billion.las' declares 1000000000 points; this service accepts at most 1000 points",
        ),
        (
            "billion.laz",
            lambda p, _: las_with_count(las(p, compress=True), 10**9),
            "'billion.laz' declares 1000000000 points; this service accepts at most 1000 points",
        ),
        (
            "many.e57",
            lambda p, folder: e57(folder, [(np.resize(p, (MAX_POINTS + 1, 3)), None, None)]),
            f"'many.e57' declares {MAX_POINTS + 1} points; this service accepts at most {MAX_POINTS} points",
        ),
        (
            "many.csv",
            lambda p, _: csv_table(np.resize(p, (MAX_POINTS + 1, 3)), ["x", "y", "z"], [0, 1, 2]),
            f"'many.csv' has more than {MAX_POINTS} points; this service accepts at most {MAX_POINTS}",
        ),
    ],
    ids=["las", "laz", "e57", "csv"],
)
def test_too_many_points_is_refused_before_reading_them(
    points: np.ndarray, name: str, make, detail: str, tmp_path: Path
) -> None:
    data = make(points, tmp_path)
    tracemalloc.start()
    try:
        assert refused(name, data) == (413, detail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # What a billion points would take is never allocated: a few copies of the small file at most.
    assert peak < 4 * 1024 * 1024 + 4 * len(data), f"peak {peak} bytes"


# ---------------------------------------------------------------------------------------------
# Through a real uvicorn, and through `cloudpose predict`


@pytest.fixture(scope="module")
def bunny_cloud() -> np.ndarray:
    """The shipped bunny example cloud, on the grid (so every format holds the same numbers)."""
    cloud = np.loadtxt(BUNNY / "example.xyz")
    return np.round(cloud / GRID) * GRID


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("formats")
    port = free_port()
    code = (
        "import uvicorn\n"
        "from service.app import create_app\n"
        "from cloudpose.settings import Settings\n"
        f"uvicorn.run(create_app(Settings(store={str(shipped_store)!r})), host='127.0.0.1', port={port}, "
        "log_level='warning')\n"
    )
    with running_server([sys.executable, "-c", code], port, folder / "server.log") as base_url:
        yield base_url


def npy_bytes(points: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, points)
    return buffer.getvalue()


def test_every_format_uploads_to_the_same_pose(server: str, bunny_cloud: np.ndarray, tmp_path: Path) -> None:
    with httpx.Client(base_url=server, timeout=60.0) as client:
        reference = client.post("/v1/pose", files={"file": ("bunny.npy", npy_bytes(bunny_cloud))})
        assert reference.status_code == 200, reference.text
        expected = reference.json()
        assert expected["found"] is True
        for writer, (name, write) in WRITERS.items():
            response = client.post("/v1/pose", files={"file": (name, write(bunny_cloud, tmp_path))})
            assert response.status_code == 200, f"{writer}: {response.text}"
            answer = response.json()
            assert answer["n_points"] == len(bunny_cloud), writer
            assert answer["found"] is True, writer
            np.testing.assert_allclose(answer["rotation"], expected["rotation"], atol=1e-9, err_msg=writer)
            np.testing.assert_allclose(
                answer["translation"], expected["translation"], atol=1e-9, err_msg=writer
            )


@pytest.mark.parametrize(
    ("name", "make", "detail"),
    [
        ("cut.las", lambda c, _: las(c)[:-50], "is truncated: its header declares"),
        (
            "lying.laz",
            lambda c, _: las_with_count(las(c, compress=True), len(c) + 10),
            "is compressed (LAZ) but its points do not decompress: the file is truncated or corrupt",
        ),
        (
            "cut.e57",
            lambda c, folder: e57(folder, [(c, None, None)])[:-10],
            "bytes long but its header declares",
        ),
        (
            "names.csv",
            lambda c, _: csv_table(c, ["a", "b", "c", "d"], [0, 1, 2, 3]),
            "has a header line (a, b, c, d) with no column named x or y or z",
        ),
    ],
    ids=["las-truncated", "laz-lying-header", "e57-truncated", "csv-wrong-columns"],
)
def test_damaged_upload_gets_a_4xx_over_http(
    server: str, bunny_cloud: np.ndarray, name: str, make, detail: str, tmp_path: Path
) -> None:
    response = httpx.post(
        f"{server}/v1/pose", files={"file": (name, make(bunny_cloud, tmp_path))}, timeout=60.0
    )
    assert response.status_code == 422, response.text
    answer = response.json()["detail"]
    assert answer.startswith(f"{name!r} ") and detail in answer, answer


def test_cli_predict_reads_the_new_formats(
    server: str, bunny_cloud: np.ndarray, tmp_path: Path, shipped_store: Path
) -> None:
    expected = httpx.post(
        f"{server}/v1/pose", files={"file": ("bunny.npy", npy_bytes(bunny_cloud))}, timeout=60.0
    ).json()
    for name, data in (
        ("bunny.laz", las(bunny_cloud, compress=True)),
        ("bunny.csv", WRITERS["csv-quoted"][1](bunny_cloud, tmp_path)),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        result = subprocess.run(
            [*cloudpose_command(), "predict", str(path), "--store", str(shipped_store)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["n_points"] == len(bunny_cloud)
        np.testing.assert_allclose(answer["rotation"], expected["rotation"], atol=1e-9, err_msg=name)
        np.testing.assert_allclose(answer["translation"], expected["translation"], atol=1e-9, err_msg=name)


def test_the_readers_import_no_torch(points: np.ndarray, tmp_path: Path) -> None:
    paths = []
    for writer, (name, write) in WRITERS.items():
        paths.append(tmp_path / f"{writer}{Path(name).suffix}")
        paths[-1].write_bytes(write(points, tmp_path))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cloudpose.io.clouds import read_cloud_file\n"
        f"for path in map(Path, {[str(path) for path in paths]!r}):\n"
        "    assert read_cloud_file(path.name, path.read_bytes(), 1000).shape == (200, 3), path\n"
        "leaked = sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'models'))\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
