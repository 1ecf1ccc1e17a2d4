"""Turning request payloads (JSON arrays or uploaded files) into validated (N, 3) clouds.

Every failure raises :class:`CloudError` with the HTTP status and the message the client sees.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings

import numpy as np

CLOUD_SUFFIXES = (".ply", ".pcd", ".xyz", ".npy")


class CloudError(ValueError):
    """A cloud the service cannot use; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def as_cloud(value: object, max_points: int, where: str = "points") -> np.ndarray:
    """Validate a JSON value (list of [x, y, z]) or an array as a cloud.

    Returns:
        (N, 3) float64, finite, N >= 1.
    """
    if isinstance(value, np.ndarray):
        array = value
    else:
        if not isinstance(value, list):
            raise CloudError(422, f"{where} must be a list of [x, y, z] triples")
        if len(value) == 0:
            raise CloudError(422, f"{where} is empty: send at least one point")
        if len(value) > max_points:
            raise CloudError(
                413, f"{where} has {len(value)} points; this service accepts at most {max_points}"
            )
        try:
            # No dtype here: numpy would turn "1.5", true and null into numbers; they are not JSON numbers.
            array = np.array(value)
        except (ValueError, TypeError) as error:
            raise CloudError(422, f"{where} must be a list of [x, y, z] triples of numbers") from error
        if array.dtype.kind not in "fiu":
            raise CloudError(422, f"{where} must be a list of [x, y, z] triples of numbers")
    if array.dtype.kind not in "fiu":
        raise CloudError(422, f"{where} must hold numbers, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != 3:
        raise CloudError(422, f"{where} must have shape (N, 3), got {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise CloudError(422, f"{where} is empty: send at least one point")
    if array.shape[0] > max_points:
        raise CloudError(
            413, f"{where} has {array.shape[0]} points; this service accepts at most {max_points}"
        )
    array = array.astype(np.float64, copy=False)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise CloudError(422, f"{where} contains NaN or Inf (first at point {int(np.argmin(finite))})")
    return array


def read_cloud_file(filename: str, data: bytes, max_points: int) -> np.ndarray:
    """Parse an uploaded cloud file by its suffix: .ply, .pcd, .xyz (text) or .npy."""
    suffix = os.path.splitext(filename or "")[1].lower()
    if suffix not in CLOUD_SUFFIXES:
        raise CloudError(
            415, f"unsupported file type {suffix or '(none)'!r}; send one of {', '.join(CLOUD_SUFFIXES)}"
        )
    if not data:
        raise CloudError(422, f"the uploaded file {filename!r} is empty")
    reader = {".npy": _read_npy, ".xyz": _read_xyz, ".ply": _read_ply, ".pcd": _read_pcd}[suffix]
    try:
        array = reader(data)
    except CloudError:
        raise
    except Exception as error:  # each parser fails in its own way on corrupt bytes
        raise CloudError(
            422, f"could not read {filename!r} as {suffix}: the file is corrupt or not a point cloud"
        ) from error
    if array.size == 0:
        raise CloudError(422, f"{filename!r} holds no points")
    return as_cloud(array, max_points, where=filename)


def _read_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _read_xyz(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # loadtxt warns on a file with no data rows
        rows = np.loadtxt(io.StringIO(data.decode("utf-8")), ndmin=2, comments="#")
    if rows.size == 0:
        return rows.reshape(0, 3)
    if rows.shape[1] < 3:
        raise CloudError(422, f"an .xyz file needs 3 numbers per line (x y z), found {rows.shape[1]}")
    return rows[:, :3]


def _read_ply(data: bytes) -> np.ndarray:
    import trimesh

    loaded = trimesh.load(io.BytesIO(data), file_type="ply", process=False)
    return np.asarray(loaded.vertices, dtype=np.float64)


def _read_pcd(data: bytes) -> np.ndarray:
    import open3d

    # open3d reads PCD only from a path; it reports failures by returning an empty cloud.
    with tempfile.NamedTemporaryFile(suffix=".pcd") as handle:
        handle.write(data)
        handle.flush()
        cloud = open3d.io.read_point_cloud(handle.name, format="pcd")
    return np.asarray(cloud.points, dtype=np.float64)
