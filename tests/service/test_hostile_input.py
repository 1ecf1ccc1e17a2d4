"""Hostile input against a real uvicorn server: every bad request gets a 4xx with its fixed detail,
fast, without the server's memory growing, and the server answers good requests afterwards.

One server serves the repository's object store (the bunny) for the whole module; its process
writes its PID to a file so the test can read its resident memory from /proc.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import socket
import struct
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloudpose.io.cloudfiles import MAX_DECODED_BYTES
from tests.cloudpose.test_clouds import zipped
from tests.service.test_uvicorn import free_port, running_server

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
MAX_POINTS = 250_000  # the service's default limits, set explicitly for this server
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_BATCH = 256
# Every hostile request must be answered within this, and the whole corpus may not grow the
# server's resident memory by more than MAX_GROWTH_MB.
ANSWER_WITHIN_S = 2.0
MAX_GROWTH_MB = 200.0

BOUND = (
    "has a coordinate of {value} at point {index}; cloudpose accepts coordinates within +-1e+09 "
    "(far beyond any object in any unit): are the points scaled or encoded wrongly?"
)
NOT_NUMBERS = "points must be a list of [x, y, z] triples of numbers"
OVERSIZE = f"request body is larger than this service's limit of {MAX_BODY_BYTES} bytes"
SAME_POINT = "all points are the same: a single point cannot fix a pose"
ON_A_LINE = "the points lie on one line: a line cannot fix a pose"


# ---------------------------------------------------------------------------------------------
# Building hostile payloads


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], descr: str = "<f8", version: tuple[int, int] = (1, 0)) -> bytes:
    """An .npy header alone, declaring any shape."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buffer, header)
    else:
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def npy_raw_header(text: str) -> bytes:
    """An .npy 1.0 header holding any text, padded as numpy pads it."""
    text += " " * ((64 - (len(text) + 11) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


@functools.cache
def zip_bomb(header: bytes, zeros_mib: int) -> bytes:
    """A deflated .npz member: ``header`` then ``zeros_mib`` MiB of zeros (about 1000:1)."""
    buffer = io.BytesIO()
    chunk = bytes(1024 * 1024)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            member.write(header)
            for _ in range(zeros_mib):
                member.write(chunk)
    return buffer.getvalue()


PLY_XYZ = "property float x\nproperty float y\nproperty float z\n"
COMPRESSED_DATA = b"DATA binary_compressed\n"


def ply_ascii(vertices: int, rows: int) -> bytes:
    header = f"ply\nformat ascii 1.0\nelement vertex {vertices}\n{PLY_XYZ}end_header\n"
    return header.encode() + b"0.5 1.5 2.5\n" * rows


def ply_binary(points: np.ndarray, order: str = "<", faces: np.ndarray | None = None) -> bytes:
    name = {"<": "binary_little_endian", ">": "binary_big_endian"}[order]
    face_header = (
        "" if faces is None else f"element face {len(faces)}\nproperty list uchar int vertex_indices\n"
    )
    header = f"ply\nformat {name} 1.0\nelement vertex {len(points)}\n{PLY_XYZ}{face_header}end_header\n"
    body = np.asarray(points, dtype=f"{order}f4").tobytes()
    if faces is not None:
        rows = np.zeros(len(faces), dtype=[("n", "u1"), ("v", f"{order}i4", (3,))])
        rows["n"], rows["v"] = 3, faces
        body += rows.tobytes()
    return header.encode() + body


def pcd_header(points: int, data: str = "ascii", fields: str = "x y z", width: int | None = None) -> bytes:
    count = len(fields.split())
    return (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {fields}\nSIZE {' '.join(['4'] * count)}\nTYPE {' '.join(['F'] * count)}\n"
        f"COUNT {' '.join(['1'] * count)}\nWIDTH {points if width is None else width}\nHEIGHT 1\n"
        f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n"
    ).encode()


def pcd_binary_compressed(points: np.ndarray) -> bytes:
    """A binary_compressed PCD as open3d writes it."""
    import open3d

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cloud.pcd"
        cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(points))
        assert open3d.io.write_point_cloud(str(path), cloud, compressed=True)
        data = path.read_bytes()
    assert COMPRESSED_DATA in data
    return data


def compressed_size(data: bytes) -> int:
    """The compressed size a binary_compressed PCD states after its header."""
    start = data.index(COMPRESSED_DATA) + len(COMPRESSED_DATA)
    return struct.unpack("<I", data[start : start + 4])[0]


def compressed_sizes_lie(data: bytes, uncompressed: int) -> bytes:
    """The PCD with its stated uncompressed size replaced."""
    start = data.index(COMPRESSED_DATA) + len(COMPRESSED_DATA)
    return data[: start + 4] + struct.pack("<I", uncompressed) + data[start + 8 :]


@functools.cache
def grid_pcd() -> bytes:
    """1000 points on a coarse grid (compressible, so binary_compressed stays compressed)."""
    rng = np.random.default_rng(0)
    return pcd_binary_compressed(np.round(rng.uniform(-5, 5, size=(1000, 3)), 1))


def deep_list(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


# ---------------------------------------------------------------------------------------------
# The corpus


@dataclass
class Case:
    """One hostile request and the answer it must get.

    Attributes:
        id: the test id.
        build: makes the request: ``("json", body bytes)``, ``("content", body, content type)``,
            ``("file", name, data)``, ``("files", [(name, data), ...])`` or ``("raw", bytes)``.
        status: the status it must get.
        detail: the exact ``detail`` (or, for ``("raw", ...)`` requests uvicorn refuses before the
            app sees them, the exact body); a function for details that depend on the payload.
        path: where the request goes.
    """

    id: str
    build: Callable[[], tuple]
    status: int
    detail: str | Callable[[], str]
    path: str = "/v1/pose"


def json_points(points: object) -> Callable[[], tuple]:
    return lambda: ("json", json.dumps({"points": points}).encode())


def upload(name: str, data: Callable[[], bytes] | bytes) -> Callable[[], tuple]:
    return lambda: ("file", name, data() if callable(data) else data)


def raw(request: bytes) -> Callable[[], tuple]:
    return lambda: ("raw", request)


def post_head(length: str, content_type: str = "application/json") -> bytes:
    return (
        f"POST /v1/pose HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


SMALL = np.arange(300, dtype=np.float64).reshape(100, 3)

CASES = [
    # ---- JSON bodies
    Case(
        "json-coordinate-1e37",
        json_points([[1e37, 0.0, 0.0]] * 1000),
        422,
        "points " + BOUND.format(value="1e+37", index=0),
    ),
    Case(
        "json-coordinate-near-float32-max",
        json_points([[0.0, 1.0, 2.0]] * 50 + [[0.0, -3.4e38, 0.0]]),
        422,
        "points " + BOUND.format(value="-3.4e+38", index=50),
    ),
    Case(
        "json-integer-int64-max",
        json_points([[1, 2, 3]] * 40 + [[9223372036854775807, 0, 0]]),
        422,
        "points " + BOUND.format(value="9.22337e+18", index=40),
    ),
    Case(
        "json-batch-coordinate-1e37",
        lambda: ("json", json.dumps({"clouds": [{"points": [[1e37, 0, 0]] * 40}]}).encode()),
        422,
        "clouds[0].points " + BOUND.format(value="1e+37", index=0),
        path="/v1/pose/batch",
    ),
    Case(
        "json-nan-literal",
        lambda: ("json", b'{"points": [[NaN, 1, 2]]}'),
        400,
        "malformed JSON: unexpected character, expected a JSON value: line 1 column 14 (char 13)",
    ),
    Case(
        "json-infinity-literal",
        lambda: ("json", b'{"points": [[Infinity, 1, 2]]}'),
        400,
        "malformed JSON: unexpected character, expected a JSON value: line 1 column 14 (char 13)",
    ),
    Case(
        "json-overflowing-number",
        lambda: ("json", b'{"points": [[1e999, 1, 2]]}'),
        400,
        "malformed JSON: number is infinity when parsed as double: line 1 column 14 (char 13)",
    ),
    Case(
        "json-nesting-100000-deep",
        lambda: ("json", deep_list(100_000)),
        400,
        "malformed JSON: depth limit exceeded: line 1 column 1026 (char 1025)",
    ),
    Case(
        "json-points-nested-100000-deep",
        lambda: ("json", b'{"points": ' + deep_list(100_000) + b"}"),
        400,
        "malformed JSON: depth limit exceeded: line 1 column 1036 (char 1035)",
    ),
    Case(
        "json-points-nested-100-deep",
        lambda: ("json", b'{"points": ' + deep_list(100) + b"}"),
        422,
        NOT_NUMBERS,
    ),
    Case("json-strings-in-points", json_points([["1", "2", "3"]] * 40), 422, NOT_NUMBERS),
    Case("json-booleans-among-numbers", json_points([[1.0, 2.0, True]] * 40), 422, NOT_NUMBERS),
    Case("json-null-in-points", json_points([[None, 2.0, 3.0]] * 40), 422, NOT_NUMBERS),
    Case("json-ragged-points", json_points([[1, 2, 3], [4, 5]] * 20), 422, NOT_NUMBERS),
    Case(
        "json-four-columns",
        json_points([[1, 2, 3, 4]] * 40),
        422,
        "points must have shape (N, 3), got (40, 4)",
    ),
    Case("json-flat-triple", json_points([1, 2, 3]), 422, "points must have shape (N, 3), got (3,)"),
    Case("json-empty-cloud", json_points([]), 422, "points is empty: send at least one point"),
    Case(
        "json-one-point-too-many",
        json_points([[0.5, 1.5, 2.5]] * (MAX_POINTS + 1)),
        413,
        f"points has {MAX_POINTS + 1} points; this service accepts at most {MAX_POINTS}",
    ),
    Case(
        "json-points-a-10-MB-string",
        lambda: ("json", b'{"points": "' + b"x" * 10_000_000 + b'"}'),
        422,
        "points must be a list of [x, y, z] triples",
    ),
    Case(
        "json-not-an-object",
        lambda: ("json", b"42"),
        422,
        "JSON body must be an object with a 'points' list of [x, y, z] triples",
    ),
    Case(
        "json-empty-body",
        lambda: ("json", b""),
        400,
        'empty request body: send JSON like {"points": [[x, y, z], ...]}',
    ),
    # ---- Content types and lying headers
    Case(
        "content-type-text-plain",
        lambda: ("content", b'{"points": [[1, 2, 3]]}', "text/plain"),
        415,
        "unsupported content type 'text/plain'; send application/json or multipart/form-data",
    ),
    Case(
        "content-type-raw-npy",
        lambda: ("content", npy_bytes(SMALL), "application/octet-stream"),
        415,
        "unsupported content type 'application/octet-stream'; send application/json or multipart/form-data",
    ),
    Case(
        "content-type-multipart-without-boundary",
        lambda: ("content", b"--x\r\ngarbage", "multipart/form-data"),
        400,
        "malformed multipart body",
    ),
    Case(
        "content-type-json-with-npy-body",
        lambda: ("content", npy_bytes(SMALL), "application/json"),
        400,
        "malformed JSON: str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)",
    ),
    Case(
        "content-length-shorter-than-body",
        raw(post_head("10") + b'{"points": [[1, 2, 3]]}'),
        400,
        "malformed JSON: unexpected end of data: line 1 column 11 (char 10)",
    ),
    Case(
        "content-length-a-terabyte",
        raw(post_head(str(10**12)) + b'{"points": [[1, 2, 3]]}'),
        413,
        OVERSIZE,
    ),
    Case("content-length-negative", raw(post_head("-5") + b"{}"), 400, "Invalid HTTP request received."),
    Case("content-length-not-a-number", raw(post_head("abc") + b"{}"), 400, "Invalid HTTP request received."),
    # ---- .npy
    Case(
        "npy-declares-1e12-points",
        upload("huge.npy", lambda: npy_header((10**12, 3)) + bytes(64)),
        413,
        f"'huge.npy' declares 1000000000000 points; this service accepts at most {MAX_POINTS} points",
    ),
    Case(
        "npy-declares-1e12-elements",
        upload("flat.npy", lambda: npy_header((10**12,)) + bytes(64)),
        413,
        f"'flat.npy' declares a (1000000000000,) array of float64 (8000000000000 bytes); this service "
        f"reads at most {MAX_DECODED_BYTES} bytes of array data",
    ),
    Case(
        "npy-truncated",
        upload("cut.npy", lambda: npy_bytes(SMALL)[:-7]),
        422,
        "'cut.npy' is truncated: its header declares a (100, 3) array of float64 (2400 bytes) but 2393 "
        "bytes follow",
    ),
    Case(
        "npy-extra-bytes",
        upload("long.npy", lambda: npy_bytes(SMALL) + b"\0" * 24),
        422,
        "'long.npy' has 24 bytes after the (100, 3) array of float64 its header declares: the file is "
        "corrupt",
    ),
    Case(
        "npy-corrupt-header",
        upload("bad.npy", b"\x93NUMPY\x01\x00garbage"),
        422,
        "'bad.npy' has a corrupt .npy header: the file is damaged or not an .npy",
    ),
    Case(
        "npy-text",
        upload("text.npy", b"not an npy file at all"),
        422,
        "'text.npy' is not an .npy file: it does not start with NumPy's magic bytes (save it with "
        "numpy.save)",
    ),
    Case(
        "npy-format-version-3",
        upload("v3.npy", lambda: b"\x93NUMPY\x03\x00" + npy_header((2, 3), version=(2, 0))[8:] + bytes(48)),
        422,
        "'v3.npy' is an .npy file of format version 3.0, which cloudpose does not read; save a plain "
        "numeric array with numpy.save (format 1.0)",
    ),
    Case(
        "npy-header-nested-3000-deep",
        upload(
            "deep.npy",
            lambda: npy_raw_header("{'descr': " + "[" * 3000 + "]" * 3000 + ", 'shape': (2, 3), }"),
        ),
        422,
        "'deep.npy' has a corrupt .npy header: the file is damaged or not an .npy",
    ),
    Case(
        "npy-negative-shape",
        upload(
            "negative.npy",
            lambda: (
                npy_raw_header("{'descr': '<f8', 'fortran_order': False, 'shape': (-2, 3), }") + bytes(48)
            ),
        ),
        422,
        "'negative.npy' has a corrupt .npy header: negative shape (-2, 3)",
    ),
    Case(
        "npy-object-array",
        upload(
            "objects.npy", lambda: npy_bytes(np.array([[1, 2, {"x": 3}]], dtype=object), allow_pickle=True)
        ),
        422,
        "'objects.npy' holds Python objects (dtype object), which only unpickling could read: cloudpose "
        "never unpickles uploads; save a numeric (N, 3) array",
    ),
    Case(
        "npy-raw-pickle",
        upload("pickle.npy", lambda: pickle.dumps(SMALL)),
        422,
        "'pickle.npy' is a Python pickle, not an .npy array: cloudpose never unpickles uploads; save the "
        "points with numpy.save",
    ),
    Case(
        "npy-strings",
        upload("words.npy", lambda: npy_bytes(np.array([["a", "b", "c"]] * 40))),
        422,
        "words.npy must hold numbers, got dtype <U1",
    ),
    Case(
        "npy-complex",
        upload("complex.npy", lambda: npy_bytes(SMALL.astype(np.complex128))),
        422,
        "complex.npy must hold numbers, got dtype complex128",
    ),
    Case(
        "npy-booleans",
        upload("bool.npy", lambda: npy_bytes(SMALL > 5)),
        422,
        "bool.npy must hold numbers, got dtype bool",
    ),
    Case(
        "npy-four-columns",
        upload("quads.npy", lambda: npy_bytes(np.zeros((50, 4)))),
        422,
        "quads.npy must have shape (N, 3), got (50, 4)",
    ),
    Case(
        "npy-one-triple",
        upload("triple.npy", lambda: npy_bytes(np.zeros(3))),
        422,
        "triple.npy must have shape (N, 3), got (3,)",
    ),
    Case(
        "npy-three-dimensional",
        upload("cube.npy", lambda: npy_bytes(np.zeros((50, 3, 1)))),
        422,
        "cube.npy must have shape (N, 3), got (50, 3, 1)",
    ),
    Case(
        "npy-structured-without-xyz",
        upload("fields.npy", lambda: npy_bytes(np.zeros(50, dtype=[("a", "f4"), ("b", "f4")]))),
        422,
        "'fields.npy' holds a structured array with fields (a, b) and shape (50,); send numeric fields x, "
        "y and z in a 1-D array, or a plain (N, 3) array",
    ),
    Case(
        "npy-empty-cloud",
        upload("none.npy", lambda: npy_bytes(np.zeros((0, 3)))),
        422,
        "'none.npy' holds no points",
    ),
    Case(
        "npy-float32-near-max",
        upload("far.npy", lambda: npy_bytes(np.vstack([SMALL, [[3e38, 0, 0]]]).astype(np.float32))),
        422,
        "far.npy " + BOUND.format(value="3e+38", index=100),
    ),
    Case(
        "npy-int64-extremes",
        upload("ints.npy", lambda: npy_bytes(np.full((50, 3), np.iinfo(np.int64).min))),
        422,
        "ints.npy " + BOUND.format(value="-9.22337e+18", index=0),
    ),
    Case(
        "npy-nan",
        upload("nan.npy", lambda: npy_bytes(np.vstack([SMALL, [[np.nan, 0, 0]]]))),
        422,
        "nan.npy contains NaN or Inf (first at point 100)",
    ),
    # ---- zip archives (numpy.savez) and zip bombs
    Case(
        "npz-bomb-256-MiB-of-zeros-named-npy",
        upload("bomb.npy", lambda: zip_bomb(npy_header((200_000, 3)), 256)),
        413,
        f"'bomb.npy' (member 'arr_0.npy') expands to {256 * 2**20 + 128} bytes; this service reads at most "
        f"{MAX_DECODED_BYTES} bytes of array data",
    ),
    Case(
        "npz-bomb-declaring-1e7-points",
        upload("bomb.npz", lambda: zip_bomb(npy_header((10**7, 3)), 0)),
        413,
        f"'bomb.npz' (member 'arr_0.npy') declares 10000000 points; this service accepts at most "
        f"{MAX_POINTS} points",
    ),
    Case(
        "npz-bomb-48-MiB-after-a-small-array",
        upload("padded.npz", lambda: zip_bomb(npy_header((1000, 3)), 48)),
        422,
        "'padded.npz' (member 'arr_0.npy') has more data after the (1000, 3) array of float64 its header "
        "declares: the file is corrupt",
    ),
    Case(
        "npz-1000-members",
        upload("many.npz", lambda: zipped({f"arr_{index}.npy": b"" for index in range(1000)})),
        422,
        "'many.npz' is a zip archive of 1000 entries (56890 directory bytes); cloudpose reads archives of "
        "at most 16 arrays: send the points as one array",
    ),
    Case(
        "npz-two-arrays",
        upload("pair.npz", lambda: zipped({"a.npy": npy_bytes(SMALL), "b.npy": npy_bytes(SMALL)})),
        422,
        "'pair.npz' is an archive of 2 arrays (a.npy, b.npy); send one array, or name the points "
        "'points' (numpy.savez(file, points=...))",
    ),
    Case(
        "npz-object-array",
        upload(
            "objects.npz",
            lambda: zipped(
                {"arr_0.npy": npy_bytes(np.array([[1, 2, None]], dtype=object), allow_pickle=True)}
            ),
        ),
        422,
        "'objects.npz' (member 'arr_0.npy') holds Python objects (dtype object), which only unpickling "
        "could read: cloudpose never unpickles uploads; save a numeric (N, 3) array",
    ),
    Case(
        "npz-nested-zip",
        upload("nested.npz", lambda: zipped({"arr_0.npy": zipped({"inner.npy": npy_bytes(SMALL)})})),
        422,
        "'nested.npz' (member 'arr_0.npy') is not an .npy file: it does not start with NumPy's magic bytes "
        "(save it with numpy.save)",
    ),
    Case(
        "npz-truncated",
        upload("cut.npz", lambda: zipped({"arr_0.npy": npy_bytes(SMALL)})[:-30]),
        422,
        "'cut.npz' is a zip archive without its central directory: the file is truncated or corrupt",
    ),
    Case(
        "npz-suffix-gzipped",
        upload("cloud.npz.gz", lambda: npy_bytes(SMALL)),
        415,
        "unsupported file type '.gz'; send one of .ply, .pcd, .xyz, .txt, .csv, .las, .laz, .e57, .npy, .npz",
    ),
    # ---- .ply
    Case(
        "ply-declares-1024-holds-100",
        upload("short.ply", lambda: ply_ascii(1024, 100)),
        422,
        "'short.ply' declares 1024 rows of data (element vertex 1024) but holds 100 lines: the file is "
        "truncated or its header is wrong",
    ),
    Case(
        "ply-declares-1e9-vertices",
        upload("billion.ply", lambda: ply_ascii(10**9, 100)),
        413,
        f"'billion.ply' declares 1000000000 vertices; this service accepts at most {MAX_POINTS} points",
    ),
    Case(
        "ply-binary-truncated",
        upload("cut.ply", lambda: ply_binary(SMALL)[:-5]),
        422,
        "'cut.ply' is truncated: its header declares 1200 bytes of data (element vertex 100) but 1195 "
        "bytes follow",
    ),
    Case(
        "ply-binary-extra-bytes",
        upload("long.ply", lambda: ply_binary(SMALL) + bytes(12)),
        422,
        "'long.ply' has 12 bytes after the 1200 bytes of data its header declares (element vertex 100): "
        "the file is corrupt",
    ),
    Case(
        "ply-mesh-faces-truncated",
        upload("mesh.ply", lambda: ply_binary(SMALL, ">", np.zeros((50, 3), dtype=int))[:-100]),
        422,
        "'mesh.ply' is truncated: its header declares 1850 bytes of data (element vertex 100, element face "
        "50) but 1750 bytes follow",
    ),
    Case(
        "ply-mesh-declares-1e12-faces",
        upload(
            "faces.ply",
            lambda: ply_binary(SMALL, "<", np.zeros((50, 3), dtype=int)).replace(
                b"face 50", b"face 1000000000000"
            ),
        ),
        422,
        "'faces.ply' is truncated: its header declares 13000000001200 bytes of data (element vertex 100, "
        "element face 1000000000000) but 1850 bytes follow",
    ),
    Case(
        "ply-not-a-ply",
        upload("text.ply", b"this is not a ply file at all"),
        422,
        "'text.ply' is not a PLY file: it does not start with the line 'ply'",
    ),
    Case(
        "ply-10-MB-of-noise",
        upload("noise.ply", lambda: np.random.default_rng(3).bytes(10_000_000)),
        422,
        "'noise.ply' is not a PLY file: it does not start with the line 'ply'",
    ),
    Case(
        "ply-header-without-end",
        upload("endless.ply", b"ply\nformat ascii 1.0\n" + b"comment padding\n" * 10_000),
        422,
        "'endless.ply' has no 'end_header' line in its first 65536 bytes: not a PLY file, or its header "
        "is cut short",
    ),
    Case(
        "ply-unknown-property-type",
        upload("typo.ply", lambda: ply_ascii(2, 2).replace(b"float y", b"floot y")),
        422,
        "'typo.ply' has a malformed PLY header (line 5: field type 'floot' not in ['int8', 'i1', 'char', "
        "'uint8', 'u1', 'uchar', 'b1', 'int16', 'i2', 'short', 'uint16', 'u2', 'ushort', 'int32', 'i4', "
        "'int', 'uint32', 'u4', 'uint', 'float32', 'f4', 'float', 'float64', 'f8', 'double'])",
    ),
    Case(
        "ply-without-z",
        upload("flat.ply", lambda: ply_ascii(2, 2).replace(b"property float z\n", b"")),
        422,
        "'flat.ply' has no x, y and z vertex properties (it has x, y)",
    ),
    Case(
        "ply-words-in-rows",
        upload("words.ply", lambda: ply_ascii(2, 1) + b"1 two 3\n"),
        422,
        "'words.ply' has a vertex line that is not 3 numbers (its header declares 3 properties)",
    ),
    Case(
        "ply-coordinate-1e30",
        upload("far.ply", lambda: ply_binary(np.vstack([SMALL, [[0, 1e30, 0]]]))),
        422,
        "far.ply " + BOUND.format(value="1e+30", index=100),
    ),
    Case(
        "ply-one-10-MB-line",
        upload("line.ply", lambda: ply_ascii(1, 0) + b"1.5 " * 2_500_000 + b"\n"),
        422,
        "'line.ply' has a line longer than 4096 bytes; a text cloud holds one point per line",
    ),
    Case("ply-no-vertices", upload("none.ply", lambda: ply_ascii(0, 0)), 422, "'none.ply' holds no points"),
    # ---- .pcd
    Case(
        "pcd-declares-1e9-points",
        upload("billion.pcd", lambda: pcd_header(10**9) + b"1 2 3\n"),
        413,
        f"'billion.pcd' declares 1000000000 points; this service accepts at most {MAX_POINTS} points",
    ),
    Case(
        "pcd-declares-200000-holds-40",
        upload("short.pcd", lambda: pcd_header(200_000) + b"0.5 1.5 2.5\n" * 40),
        422,
        "'short.pcd' declares 200000 points but holds 40 lines of data: the file is truncated or its "
        "header is wrong",
    ),
    Case(
        "pcd-binary-truncated",
        upload("cut.pcd", lambda: pcd_header(100, "binary") + SMALL.astype("<f4").tobytes()[:-3]),
        422,
        "'cut.pcd' declares 100 points of 12 bytes (1200 bytes) but 1197 bytes follow its header: the file "
        "is truncated",
    ),
    Case(
        "pcd-binary-extra-bytes",
        upload("long.pcd", lambda: pcd_header(100, "binary") + SMALL.astype("<f4").tobytes() + bytes(12)),
        422,
        "'long.pcd' declares 100 points of 12 bytes (1200 bytes) but 1212 bytes follow its header: the file "
        "is corrupt",
    ),
    Case(
        "pcd-compressed-claims-4-GB",
        upload("lie.pcd", lambda: compressed_sizes_lie(grid_pcd(), 4_000_000_000)),
        422,
        "'lie.pcd' says its compressed data expands to 4000000000 bytes, but its header declares 1000 "
        "points of 12 bytes (12000 bytes): the file is corrupt",
    ),
    Case(
        "pcd-compressed-truncated",
        upload("cut.pcd", lambda: grid_pcd()[:-10]),
        422,
        lambda: (
            f"'cut.pcd' says its compressed data is {compressed_size(grid_pcd())} bytes, but "
            f"{compressed_size(grid_pcd()) - 10} bytes follow: the file is truncated"
        ),
    ),
    Case(
        "pcd-compressed-corrupt",
        upload("noise.pcd", lambda: grid_pcd()[:-64] + b"\xff" * 64),
        422,
        "could not read 'noise.pcd' as .pcd: the file is corrupt or not a point cloud",
    ),
    Case(
        "pcd-not-a-pcd",
        upload("text.pcd", b"this is not a pcd file"),
        422,
        "'text.pcd' has no DATA line in its first 65536 bytes: not a PCD file, or its header is cut short",
    ),
    Case(
        "pcd-without-z",
        upload("flat.pcd", lambda: pcd_header(2, fields="x y") + b"1 2\n3 4\n"),
        422,
        "'flat.pcd' has no z field (its FIELDS: x y)",
    ),
    Case(
        "pcd-width-disagrees-with-points",
        upload("odd.pcd", lambda: pcd_header(2, width=3) + b"1 2 3\n4 5 6\n"),
        422,
        "'odd.pcd' declares POINTS 2 but WIDTH x HEIGHT = 3 x 1: the header is corrupt",
    ),
    Case(
        "pcd-words-in-rows",
        upload("words.pcd", lambda: pcd_header(2) + b"1 2 3\n4 five 6\n"),
        422,
        "'words.pcd' has a data line that is not 3 numbers separated by single spaces (its header declares "
        "3 values per point)",
    ),
    Case(
        "pcd-coordinate-1e37",
        upload("far.pcd", lambda: pcd_header(2) + b"1 2 3\n4 1e37 6\n"),
        422,
        "far.pcd " + BOUND.format(value="1e+37", index=1),
    ),
    Case(
        "pcd-one-10-MB-line",
        upload("line.pcd", lambda: pcd_header(1) + b"1.5 " * 2_500_000 + b"\n"),
        422,
        "'line.pcd' has a line longer than 4096 bytes; a text cloud holds one point per line",
    ),
    Case("pcd-no-points", upload("none.pcd", lambda: pcd_header(0)), 422, "'none.pcd' holds no points"),
    # ---- .xyz
    Case(
        "xyz-words",
        upload("words.xyz", b"hello world again\n"),
        422,
        "could not read 'words.xyz' as .xyz: the file is corrupt or not a point cloud",
    ),
    Case(
        "xyz-binary",
        upload("binary.xyz", bytes(range(256))),
        422,
        "'binary.xyz' is not UTF-8 text: an .xyz file holds lines of 'x y z'",
    ),
    Case(
        "xyz-two-columns",
        upload("pairs.xyz", b"1 2\n3 4\n"),
        422,
        "'pairs.xyz' has 2 numbers on a line; an .xyz file needs 3 per line (x y z)",
    ),
    Case(
        "xyz-one-line-too-many",
        upload("many.xyz", lambda: b"0.5 1.5 2.5\n" * (MAX_POINTS + 1)),
        413,
        f"'many.xyz' has more than {MAX_POINTS} points; this service accepts at most {MAX_POINTS}",
    ),
    Case(
        "xyz-one-10-MB-line",
        upload("line.xyz", lambda: b"1.5 " * 2_500_000),
        422,
        "'line.xyz' has a line longer than 4096 bytes; a text cloud holds one point per line",
    ),
    Case(
        "xyz-coordinate-1e300",
        upload("far.xyz", lambda: b"1 2 3\n" * 40 + b"1e300 0 0\n"),
        422,
        "far.xyz " + BOUND.format(value="1e+300", index=40),
    ),
    # ---- empty files, unknown types, too many files
    *[
        Case(
            f"empty-file{suffix}",
            upload(f"empty{suffix}", b""),
            422,
            f"the uploaded file 'empty{suffix}' is empty",
        )
        for suffix in (".npy", ".npz", ".ply", ".pcd", ".xyz")
    ],
    Case(
        "file-type-exe",
        upload("cloud.exe", b"MZ\x90\x00"),
        415,
        "unsupported file type '.exe'; send one of .ply, .pcd, .xyz, .txt, .csv, .las, .laz, .e57, .npy, "
        ".npz",
    ),
    Case(
        "file-name-300-characters",
        upload("a" * 300 + ".npy", b"not an npy file"),
        422,
        f"'{'a' * 97}...' is not an .npy file: it does not start with NumPy's magic bytes (save it with "
        "numpy.save)",
    ),
    Case(
        "files-more-than-max-batch",
        lambda: ("files", [(f"c{index}.npy", npy_bytes(SMALL)) for index in range(MAX_BATCH + 1)]),
        413,
        f"too many clouds: more files than limit {MAX_BATCH}",
        path="/v1/pose/batch",
    ),
]


def expected_detail(case: Case) -> str:
    return case.detail() if callable(case.detail) else case.detail


# ---------------------------------------------------------------------------------------------
# The server


@dataclass
class Server:
    base_url: str
    port: int
    pid: int

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS for process {self.pid}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("hostile")
    pid_file = folder / "server.pid"
    port = free_port()
    code = (
        "import os\n"
        "import uvicorn\n"
        "from service.app import create_app\n"
        "from cloudpose.settings import Settings\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        f"settings = Settings(store={str(shipped_store)!r}, max_points={MAX_POINTS}, "
        f"max_body_bytes={MAX_BODY_BYTES}, max_batch={MAX_BATCH})\n"
        f"uvicorn.run(create_app(settings), host='127.0.0.1', port={port}, log_level='critical')\n"
    )
    with running_server([sys.executable, "-c", code], port, folder / "server.log") as base_url:
        yield Server(base_url, port, int(pid_file.read_text()))


@pytest.fixture(scope="module")
def example() -> dict:
    return json.loads((BUNNY / "example.json").read_text())


@pytest.fixture(scope="module")
def example_answer(server: Server, example: dict) -> dict:
    """The server's answer for the example cloud sent as JSON."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.post("/v1/pose", json={"points": example["points"]})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def warmed(server: Server, example: dict, example_answer: dict) -> float:
    """The server's resident memory (MB) after good requests have warmed it up."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        for _ in range(2):
            response = client.post("/v1/pose", json={"points": example["points"]})
            assert response.status_code == 200, response.text
    return server.rss_mb()


def raw_exchange(port: int, request: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send raw bytes; return the first response's status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:] if ":" in line
        }
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), body[:length]


def send(client: httpx.Client, server: Server, request: tuple, path: str) -> tuple[int, str]:
    """Make a request built by a case; return the status and the detail (or raw body)."""
    kind = request[0]
    if kind == "raw":
        status, body = raw_exchange(server.port, request[1])
        try:
            return status, json.loads(body)["detail"]
        except (ValueError, KeyError, TypeError):
            return status, body.decode("latin-1")
    if kind == "json":
        response = client.post(path, content=request[1], headers={"content-type": "application/json"})
    elif kind == "content":
        response = client.post(path, content=request[1], headers={"content-type": request[2]})
    elif kind == "file":
        response = client.post(path, files={"file": (request[1], request[2], "application/octet-stream")})
    else:
        files = [("files", (name, data, "application/octet-stream")) for name, data in request[1]]
        response = client.post(path, files=files)
    try:
        return response.status_code, response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.status_code, response.text


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_request_gets_its_4xx_fast(server: Server, warmed: float, case: Case) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        request = case.build()
        started = time.perf_counter()
        status, detail = send(client, server, request, case.path)
        elapsed_s = time.perf_counter() - started
    assert (status, detail) == (case.status, expected_detail(case))
    assert elapsed_s < ANSWER_WITHIN_S, f"{case.id} took {elapsed_s:.2f} s"


def test_server_survives_the_corpus(server: Server, warmed: float, example: dict) -> None:
    """The whole corpus, again, in one go: memory stays put, and good requests still succeed."""
    slowest = (0.0, "")
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        for case in CASES:
            request = case.build()
            started = time.perf_counter()
            status, _ = send(client, server, request, case.path)
            slowest = max(slowest, (time.perf_counter() - started, case.id))
            assert status == case.status, case.id
        grown_mb = server.rss_mb() - warmed
        assert grown_mb < MAX_GROWTH_MB, f"resident memory grew by {grown_mb:.0f} MB"
        assert slowest[0] < ANSWER_WITHIN_S, slowest
        assert client.get("/health").status_code == 200
        response = client.post("/v1/pose", json={"points": example["points"]})
        assert response.status_code == 200, response.text
        assert response.json()["n_points"] == len(example["points"])
    print(
        f"corpus: {len(CASES)} cases, slowest {slowest[0] * 1000:.0f} ms ({slowest[1]}), "
        f"resident memory {grown_mb:+.1f} MB"
    )


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        (np.tile([[0.1, 0.2, 0.3]], (1000, 1)), SAME_POINT),
        (np.tile([[1e8, -3e8, 5e8]], (1000, 1)), SAME_POINT),
        (np.linspace(0.0, 1.0, 1000)[:, None] * [[3.0, 4.0, 5.0]] + 2.0, ON_A_LINE),
        (np.repeat([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], 500, axis=0), ON_A_LINE),
        (np.c_[np.random.default_rng(1).uniform(-5, 5, size=(1000, 2)), np.zeros(1000)], None),
    ],
    ids=["1000-identical-points", "identical-far-points", "collinear", "two-distinct-points", "coplanar"],
)
def test_degenerate_cloud_is_not_found(server: Server, points: np.ndarray, reason: str | None) -> None:
    """Clouds that cannot fix a pose are answered, honestly: found false, and why."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.post("/v1/pose", json={"points": points.tolist()})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["found"] is False
    if reason is not None:
        assert answer["reason"] == reason
        assert answer["confidence"] is None
    else:  # a flat patch is no bunny: a poor fit, never a confident one
        assert answer["reason"]
        assert answer["confidence"]["confidence"] < 0.5


@pytest.fixture(scope="module")
def example_files(example: dict) -> dict[str, bytes]:
    """The example cloud in unusual but valid containers."""
    points = np.asarray(example["points"], dtype=np.float64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, points=points, normals=points)
    structured = np.zeros(len(points), dtype=[("x", ">f8"), ("y", ">f8"), ("z", ">f8"), ("intensity", "u1")])
    structured["x"], structured["y"], structured["z"] = points.T
    faces = np.arange(30).reshape(10, 3)
    return {
        "big-endian.npy": npy_bytes(points.astype(">f4")),
        "fortran.npy": npy_bytes(np.asfortranarray(points)),
        "structured.npy": npy_bytes(structured),
        "archive.npz": buffer.getvalue(),
        "zip-named.npy": zipped({"arr_0.npy": npy_bytes(points)}),
        "big-endian-mesh.ply": ply_binary(points, ">", faces),
        "compressed.pcd": pcd_binary_compressed(points),
    }


@pytest.mark.parametrize(
    "name",
    [
        "big-endian.npy",
        "fortran.npy",
        "structured.npy",
        "archive.npz",
        "zip-named.npy",
        "big-endian-mesh.ply",
        "compressed.pcd",
    ],
)
def test_unusual_valid_containers_are_read(
    server: Server, example_files: dict[str, bytes], example: dict, example_answer: dict, name: str
) -> None:
    """Read right, the same points (some at float32 precision) get the JSON cloud's pose."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.post(
            "/v1/pose", files={"file": (name, example_files[name], "application/octet-stream")}
        )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["n_points"] == len(example["points"])
    np.testing.assert_allclose(answer["rotation"], example_answer["rotation"], atol=1e-3)
    np.testing.assert_allclose(answer["translation"], example_answer["translation"], atol=1e-2)
