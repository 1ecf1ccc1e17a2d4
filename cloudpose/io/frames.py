"""Depth frames: a depth image and its camera's intrinsics, back-projected to points on the server.

Sensor frame (OpenCV's, as depth cameras and ``cv2.rgbd`` use): the camera at the origin looking
along +z, x to the right, y down. A pixel in column ``u`` and row ``v`` whose depth is ``z``
(metres: the raw value times ``depth_scale``) is the point::

    ((u - cx) * z / fx, (v - cy) * z / fy, z)

A raw value of 0 means no return (the sensor saw nothing there). An image is accepted as a
16-bit PNG (``I;16``, how depth cameras store depth: millimetres with ``depth_scale`` 0.001) or an
``.npy`` array of shape (H, W): an integer array holds raw values (times ``depth_scale``), a float
array holds metres. Sizes are checked before any pixel is decoded: at most ``max_points`` pixels.
Every refusal raises :class:`cloudpose.io.clouds.CloudError` with the status and a fixed detail.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cloudpose.io.cloudfiles import BadCloudFile, read_npy
from cloudpose.io.clouds import MAX_ABS_COORDINATE, CloudError, as_cloud, shown_name

DEPTH_SUFFIXES = (".png", ".npy")
# 16-bit grayscale as Pillow names it (little- and big-endian), and 32-bit integers (a 16-bit
# PNG some writers open as "I").
DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L", "I")
INTRINSIC_FIELDS = ("fx", "fy", "cx", "cy")
DEFAULT_DEPTH_SCALE = 0.001


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole depth camera: focal lengths and principal point in pixels, and what a raw depth
    unit is in metres.

    Attributes:
        fx, fy: focal lengths, pixels (> 0).
        cx, cy: principal point, pixels (column, row).
        depth_scale: metres per raw depth unit (0.001 for millimetre PNGs).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    depth_scale: float = DEFAULT_DEPTH_SCALE

    @classmethod
    def parse(cls, values: Mapping[str, object]) -> Intrinsics:
        """Intrinsics from request fields (``fx``, ``fy``, ``cx``, ``cy``, optional
        ``depth_scale``); every problem is named in one 422."""
        problems, numbers = [], {}
        for name in (*INTRINSIC_FIELDS, "depth_scale"):
            value = values.get(name)
            if value is None:
                if name != "depth_scale":
                    problems.append(f"{name} is missing")
                continue
            try:
                number = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                problems.append(f"{name} must be a number, got {str(value)[:40]!r}")
                continue
            if isinstance(value, bool) or not math.isfinite(number):
                problems.append(f"{name} must be a finite number, got {str(value)[:40]!r}")
                continue
            numbers[name] = number
        for name in ("fx", "fy", "depth_scale"):
            if name in numbers and numbers[name] <= 0:
                problems.append(f"{name} must be positive, got {numbers[name]:g}")
        for name in INTRINSIC_FIELDS:
            if name in numbers and abs(numbers[name]) > 1e6:
                problems.append(f"{name} of {numbers[name]:g} pixels is not a camera's")
        if problems:
            raise CloudError(422, "bad camera intrinsics: " + "; ".join(problems))
        return cls(**numbers)


def back_project(depth_m: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """The organized cloud of a depth image, in the sensor frame.

    Args:
        depth_m: (H, W) depth in metres, 0 where there is no return.
        intrinsics: the camera.

    Returns:
        (H, W, 3) points in depth's float dtype (float64 for integer depths), NaN where there is
        no return.
    """
    depth_m = np.asarray(depth_m)
    dtype = depth_m.dtype if np.issubdtype(depth_m.dtype, np.floating) else np.float64
    z = np.where(depth_m > 0, depth_m, np.nan).astype(dtype, copy=False)  # (H, W)
    height, width = depth_m.shape
    u = ((np.arange(width) - intrinsics.cx) / intrinsics.fx).astype(dtype)  # (W,)
    v = ((np.arange(height) - intrinsics.cy) / intrinsics.fy).astype(dtype)  # (H,)
    points = np.empty((height, width, 3), dtype=dtype)
    points[..., 0] = z * u[None, :]
    points[..., 1] = z * v[:, None]
    points[..., 2] = z
    return points


def valid_points(organized: np.ndarray) -> np.ndarray:
    """The (N, 3) points of an (H, W, 3) organized cloud that have a return, row by row."""
    flat = organized.reshape(-1, 3)  # (H*W, 3)
    return flat[np.isfinite(flat).all(axis=1)]


def read_depth_image(filename: str, data: bytes, intrinsics: Intrinsics, max_points: int) -> np.ndarray:
    """An uploaded depth image in metres, (H, W) float64, 0 where there is no return.

    Raises:
        CloudError: 415 for a file that is not .png or .npy, 413 for more than ``max_points``
            pixels, 422 for an image that is not one depth channel, corrupt, empty, or holds
            negative, non-finite or absurd depths.
    """
    shown, suffix = shown_name(filename)
    if suffix not in DEPTH_SUFFIXES:
        raise CloudError(
            415, f"unsupported depth image type {suffix or '(none)'!r}; send a 16-bit .png or an .npy (H, W)"
        )
    if not data:
        raise CloudError(422, f"the uploaded depth image {shown!r} is empty")
    raw = _read_png(shown, data, max_points) if suffix == ".png" else _read_npy(shown, data, max_points)
    if raw.dtype.kind == "f":
        depth = raw.astype(np.float64)
        if not np.isfinite(depth).all():
            raise CloudError(422, f"{shown!r} holds NaN or Inf depths; use 0 for pixels without a return")
    else:
        depth = raw.astype(np.float64) * intrinsics.depth_scale
    if (depth < 0).any():
        raise CloudError(422, f"{shown!r} holds negative depths; depth is the distance along +z, 0 for none")
    if depth.max(initial=0.0) > MAX_ABS_COORDINATE:
        raise CloudError(
            422, f"{shown!r} holds depths beyond {MAX_ABS_COORDINATE:.0e} m: is depth_scale right?"
        )
    if not (depth > 0).any():
        raise CloudError(422, f"{shown!r} has no pixel with a return (every depth is 0)")
    return depth


def depth_frame_points(
    filename: str, data: bytes, fields: Mapping[str, object], max_points: int
) -> np.ndarray:
    """A depth-image frame's points: intrinsics from ``fields`` (:meth:`Intrinsics.parse`), the
    image read and back-projected; (N, 3) float64 metres in the sensor frame, validated as
    :func:`cloudpose.io.clouds.as_cloud` does."""
    intrinsics = Intrinsics.parse(fields)
    depth = read_depth_image(filename, data, intrinsics, max_points)
    return as_cloud(valid_points(back_project(depth, intrinsics)), max_points, where=shown_name(filename)[0])


def _too_large(shown: str, width: int, height: int, max_points: int) -> CloudError:
    return CloudError(
        413,
        f"{shown!r} is {width} x {height} = {width * height} pixels; this service accepts at most "
        f"{max_points} points",
    )


def _read_png(shown: str, data: bytes, max_points: int) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["PNG"])  # reads the header only
    except Exception as error:  # Pillow raises several types for what is not a PNG
        raise CloudError(422, f"{shown!r} is not a readable PNG image") from error
    width, height = image.size
    if width * height > max_points:
        raise _too_large(shown, width, height, max_points)
    if image.mode not in DEPTH_PNG_MODES:
        raise CloudError(
            422,
            f"{shown!r} is a PNG of mode {image.mode}, not a 16-bit depth image: save depth as one "
            "16-bit channel (e.g. cv2.imwrite of a uint16 array)",
        )
    try:
        image.load()
    except Exception as error:  # truncated or corrupt pixel data
        raise CloudError(422, f"{shown!r} is a truncated or corrupt PNG") from error
    return np.asarray(image)


def _read_npy(shown: str, data: bytes, max_points: int) -> np.ndarray:
    try:
        array = read_npy(data, max_points)
    except BadCloudFile as error:
        raise CloudError(error.status, f"{shown!r} {error.problem}") from error
    except Exception as error:  # numpy fails in its own ways on corrupt bytes
        raise CloudError(422, f"could not read {shown!r} as .npy: the file is corrupt") from error
    if array.dtype.names is not None or array.ndim != 2 or array.dtype.kind not in "fiu":
        raise CloudError(
            422, f"{shown!r} must be a numeric (H, W) depth array, got {array.dtype} of shape {array.shape}"
        )
    height, width = array.shape
    if width * height > max_points:
        raise _too_large(shown, width, height, max_points)
    if array.size == 0:
        raise CloudError(422, f"{shown!r} is an empty depth image")
    return array
