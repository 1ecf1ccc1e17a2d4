"""Depth frames: 16-bit PNG and .npy depth images with intrinsics, back-projected in the sensor frame,
and every bad image or intrinsic refused with its status and detail."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cloudpose.io.clouds import CloudError
from cloudpose.io.frames import Intrinsics, back_project, read_depth_image, valid_points

CAMERA = Intrinsics(fx=525.0, fy=520.0, cx=79.5, cy=59.5, depth_scale=0.001)
MAX_POINTS = 250_000
UNSUPPORTED = "unsupported depth image type '.jpg'; send a 16-bit .png or an .npy (H, W)"
NO_RETURN = "'frame.png' has no pixel with a return (every depth is 0)"


@pytest.fixture(scope="module")
def raw_depth() -> np.ndarray:
    """(120, 160) millimetres: a tilted plane 0.6-1.4 m away with a hole of no returns."""
    rows, columns = np.mgrid[0:120, 0:160]
    depth = (600 + 4 * columns + 2 * rows).astype(np.uint16)
    depth[40:60, 70:90] = 0
    return depth


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def refused(name: str, data: bytes, max_points: int = MAX_POINTS) -> tuple[int, str]:
    with pytest.raises(CloudError) as error:
        read_depth_image(name, data, CAMERA, max_points)
    return error.value.status, error.value.detail


def test_a_16_bit_png_reads_as_metres(raw_depth: np.ndarray) -> None:
    data = png(raw_depth)
    assert Image.open(io.BytesIO(data)).mode == "I;16"  # what Pillow writes for uint16
    depth = read_depth_image("frame.png", data, CAMERA, MAX_POINTS)
    np.testing.assert_array_equal(depth, raw_depth * 0.001)


def test_npy_depth_integer_is_raw_and_float_is_metres(raw_depth: np.ndarray) -> None:
    from_raw = read_depth_image("frame.npy", npy(raw_depth), CAMERA, MAX_POINTS)
    from_metres = read_depth_image("frame.npy", npy(raw_depth * 0.001), CAMERA, MAX_POINTS)
    np.testing.assert_allclose(from_raw, from_metres, rtol=0, atol=1e-12)


def test_back_projection_projects_back_to_its_pixels(raw_depth: np.ndarray) -> None:
    depth = raw_depth * 0.001
    organized = back_project(depth, CAMERA)
    assert organized.shape == (120, 160, 3)
    rows, columns = np.nonzero(depth > 0)
    x, y, z = organized[rows, columns].T
    np.testing.assert_allclose(CAMERA.fx * x / z + CAMERA.cx, columns, atol=1e-9)
    np.testing.assert_allclose(CAMERA.fy * y / z + CAMERA.cy, rows, atol=1e-9)
    np.testing.assert_allclose(z, depth[rows, columns])
    # No return is NaN in the organized cloud and absent from the points.
    assert np.isnan(organized[50, 80]).all()
    points = valid_points(organized)
    assert points.shape == (int((depth > 0).sum()), 3)
    # OpenCV's frame: the pixel right of and below the principal point is at +x, +y.
    assert organized[119, 159, 0] > 0 and organized[119, 159, 1] > 0
    assert organized[0, 0, 0] < 0 and organized[0, 0, 1] < 0


def test_intrinsics_parse_names_every_problem() -> None:
    assert Intrinsics.parse({"fx": 525, "fy": "520", "cx": 319.5, "cy": 239.5}) == Intrinsics(
        525.0, 520.0, 319.5, 239.5, 0.001
    )
    with pytest.raises(CloudError) as error:
        Intrinsics.parse({"fy": -1, "cx": float("nan"), "cy": True, "depth_scale": "mm"})
    assert error.value.status == 422
    assert error.value.detail == (
        "bad camera intrinsics: fx is missing; cx must be a finite number, got 'nan'; "
        "cy must be a finite number, got 'True'; depth_scale must be a number, got 'mm'; "
        "fy must be positive, got -1"
    )
    with pytest.raises(CloudError) as error:
        Intrinsics.parse({"fx": 1e9, "fy": 500, "cx": 0, "cy": 0, "depth_scale": 0})
    assert error.value.detail == (
        "bad camera intrinsics: depth_scale must be positive, got 0; fx of 1e+09 pixels is not a camera's"
    )


@pytest.mark.parametrize(
    ("name", "make", "status", "detail"),
    [
        (
            "frame.jpg",
            lambda d: png(d),
            415,
            UNSUPPORTED,
        ),
        ("frame.png", lambda d: b"", 422, "the uploaded depth image 'frame.png' is empty"),
        ("frame.png", lambda d: b"not a png at all", 422, "'frame.png' is not a readable PNG image"),
        (
            "frame.png",
            lambda d: png((d // 8).astype(np.uint8)),
            422,
            "'frame.png' is a PNG of mode L, not a 16-bit depth image: save depth as one 16-bit channel "
            "(e.g. cv2.imwrite of a uint16 array)",
        ),
        (
            "frame.png",
            lambda d: png(np.stack([(d // 8).astype(np.uint8)] * 3, axis=-1)),
            422,
            "'frame.png' is a PNG of mode RGB, not a 16-bit depth image: save depth as one 16-bit channel "
            "(e.g. cv2.imwrite of a uint16 array)",
        ),
        ("frame.png", lambda d: png(d)[:-200], 422, "'frame.png' is a truncated or corrupt PNG"),
        (
            "frame.png",
            lambda d: png(np.zeros_like(d)),
            422,
            NO_RETURN,
        ),
        (
            "frame.npy",
            lambda d: npy(-(d * 0.001)),
            422,
            "'frame.npy' holds negative depths; depth is the distance along +z, 0 for none",
        ),
        (
            "frame.npy",
            lambda d: npy(np.where(d > 0, np.nan, 0.0)),
            422,
            "'frame.npy' holds NaN or Inf depths; use 0 for pixels without a return",
        ),
        (
            "frame.npy",
            lambda d: npy(np.stack([d, d], axis=-1)),
            422,
            "'frame.npy' must be a numeric (H, W) depth array, got uint16 of shape (120, 160, 2)",
        ),
        ("frame.npy", lambda d: npy(d)[:-10], 422, None),
    ],
    ids=[
        "suffix",
        "empty",
        "not-png",
        "8-bit",
        "rgb",
        "truncated",
        "all-zero",
        "negative",
        "nan",
        "3-d",
        "npy-cut",
    ],
)
def test_bad_depth_images_are_refused(raw_depth, name, make, status, detail) -> None:
    got_status, got_detail = refused(name, make(raw_depth))
    assert got_status == status
    if detail is None:
        assert got_detail.startswith("'frame.npy' is truncated"), got_detail
    else:
        assert got_detail == detail


def test_an_image_over_the_limit_is_refused_from_its_header() -> None:
    # 2000 x 2000 zeros compress to a few kilobytes: the header alone tells it is too large.
    data = png(np.zeros((2000, 2000), dtype=np.uint16))
    assert len(data) < 64 * 1024
    assert refused("big.png", data, max_points=307_200) == (
        413,
        "'big.png' is 2000 x 2000 = 4000000 pixels; this service accepts at most 307200 points",
    )
    assert refused("big.npy", npy(np.zeros((700, 500), dtype=np.uint16)), max_points=307_200) == (
        413,
        "'big.npy' is 500 x 700 = 350000 pixels; this service accepts at most 307200 points",
    )


def test_a_vga_frame_at_the_limit_is_read() -> None:
    depth = np.full((480, 640), 1000, dtype=np.uint16)
    assert read_depth_image("vga.png", png(depth), CAMERA, max_points=307_200).shape == (480, 640)
