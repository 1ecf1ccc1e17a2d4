"""The file readers on files real tools wrote: PCL's organized Kinect frames (PCD binary_compressed,
with the slack PCL leaves after the compressed block), the Cyberware scanner software's ASCII PLY
with a ``range_grid`` element, and PCDs open3d writes; each read the same as a maintained library
(pypcd4) or the data's own array reads it.

The real files are read from ``../shared/real`` beside the repository (read-only, never copied);
the tests that need them are skipped when it is absent."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from cloudpose.io.cloudfiles import BadCloudFile, read_pcd, read_ply
from cloudpose.io.clouds import CloudError, read_cloud_file, read_frame_file

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "real"
MOSD = REAL / "mosd"
DRAGON = REAL / "dragon"
FRAMES = sorted(MOSD.glob("test*.pcd")) if MOSD.is_dir() else []
# The frame route's limit (CLOUDPOSE_MAX_FRAME_POINTS' default); a VGA frame is 307,200 points.
MAX_FRAME_POINTS = 1_000_000
MAX_POINTS = 250_000
VGA = 640 * 480

needs_frames = pytest.mark.skipif(not FRAMES, reason=f"the real Kinect frames are not here ({MOSD})")
needs_dragon = pytest.mark.skipif(
    not (DRAGON / "raw").is_dir(), reason=f"the real dragon scans are not here ({DRAGON})"
)


def pypcd4_fields(path: Path) -> np.ndarray:
    """The file's points as pypcd4 reads them (its own reader, from the path)."""
    from pypcd4 import PointCloud

    return PointCloud.from_path(path).pc_data


def compressed_block(data: bytes) -> tuple[int, int, int]:
    """Where a binary_compressed PCD's data starts, and the compressed and decompressed sizes it states."""
    start = data.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n")
    compressed, uncompressed = struct.unpack("<II", data[start : start + 8])
    return start, compressed, uncompressed


@needs_frames
def test_there_are_the_six_frames_and_pcl_left_slack_after_their_data() -> None:
    # The reason these files were refused before: PCL's writer leaves zeros after the block.
    assert len(FRAMES) == 6
    for path in FRAMES:
        data = path.read_bytes()
        start, compressed, uncompressed = compressed_block(data)
        assert uncompressed == VGA * 5 * 4  # label x y z rgba, 4 bytes each
        slack = data[start + 8 + compressed :]
        assert len(slack) > 0 and not any(slack), path.name


@needs_frames
@pytest.mark.parametrize("path", FRAMES, ids=[path.name for path in FRAMES])
def test_a_kinect_frame_reads_as_pypcd4_reads_it(path: Path) -> None:
    data = path.read_bytes()
    organized = read_pcd(data, MAX_FRAME_POINTS)
    fields = pypcd4_fields(path)
    assert organized.shape == (VGA, 3)
    expected = np.stack([fields["x"], fields["y"], fields["z"]], axis=1)
    np.testing.assert_array_equal(organized, expected)  # NaN where pypcd4 has NaN

    # The frame route keeps the points with a return: every point whose label is not 0 (invalid).
    points = read_frame_file(path.name, data, MAX_FRAME_POINTS)
    valid = fields["label"] != 0
    assert len(points) == int(valid.sum())
    np.testing.assert_array_equal(points, expected[valid])
    assert np.isfinite(points).all()
    # Metres in the Kinect's frame: in front of it, within its range, around the optical axis
    # (measured over the 6 frames: z from 0.518 to 1.665 m).
    assert 0.4 < points[:, 2].min() and points[:, 2].max() < 3.0
    assert np.abs(points[:, :2]).max() < 2.0
    assert 0.3 * VGA < len(points) < VGA


@needs_frames
def test_a_frame_with_minus_zero_x_y_and_nan_z_for_no_return_is_read() -> None:
    # test25.pcd marks 70,601 pixels without a return as (-0, -0, NaN), the others as
    # (NaN, NaN, NaN): both are no return, as PCL's isFinite has it.
    path = MOSD / "test25.pcd"
    fields = pypcd4_fields(path)
    partly = np.isnan(fields["z"]) & ~np.isnan(fields["x"])
    assert partly.sum() > 0 and (fields["label"][partly] == 0).all()
    points = read_frame_file(path.name, path.read_bytes(), MAX_FRAME_POINTS)
    assert len(points) == int((~np.isnan(fields["z"])).sum())


@needs_frames
def test_a_vga_frame_is_over_the_pose_routes_limit_and_nan_is_no_return_only_for_frames() -> None:
    data = FRAMES[0].read_bytes()
    with pytest.raises(CloudError) as error:
        read_cloud_file(FRAMES[0].name, data, MAX_POINTS)
    assert (error.value.status, error.value.detail) == (
        413,
        f"'{FRAMES[0].name}' declares {VGA} points; this service accepts at most {MAX_POINTS} points",
    )
    with pytest.raises(CloudError) as error:  # a cut-out cloud for /v1/pose holds no NaN
        read_cloud_file(FRAMES[0].name, data, MAX_FRAME_POINTS)
    assert error.value.status == 422 and "contains NaN or Inf" in error.value.detail


@needs_frames
def test_the_slack_is_ignored_but_a_size_that_lies_is_still_refused() -> None:
    data = FRAMES[0].read_bytes()
    start, compressed, _ = compressed_block(data)
    exact = data[: start + 8 + compressed]
    np.testing.assert_array_equal(read_pcd(exact, MAX_FRAME_POINTS), read_pcd(data, MAX_FRAME_POINTS))
    # Other slack than zeros (a writer's leftover buffer) is never read either.
    noisy = exact + np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    np.testing.assert_array_equal(read_pcd(noisy, MAX_FRAME_POINTS), read_pcd(exact, MAX_FRAME_POINTS))
    # Cut inside the compressed block: truncated, whatever the slack was.
    with pytest.raises(BadCloudFile) as error:
        read_pcd(exact[:-10], MAX_FRAME_POINTS)
    assert (error.value.status, error.value.problem) == (
        422,
        f"says its compressed data is {compressed} bytes, but {compressed - 10} bytes follow: the file is "
        "truncated",
    )
    # A compressed size that points into the slack: the stream does not decompress to what the
    # header declares, so the file is refused (as corrupt) rather than read short or long.
    longer = exact[:start] + struct.pack("<I", compressed + 100) + exact[start + 4 :] + bytes(200)
    with pytest.raises(CloudError) as refused:
        read_frame_file("longer.pcd", longer, MAX_FRAME_POINTS)
    assert refused.value.status == 422
    # A stated decompressed size that is not the header's: refused before anything is decompressed.
    lie = exact[: start + 4] + struct.pack("<I", 4_000_000_000) + exact[start + 8 :]
    with pytest.raises(BadCloudFile) as error:
        read_pcd(lie, MAX_FRAME_POINTS)
    assert error.value.problem.startswith("says its compressed data expands to 4000000000 bytes")


@pytest.mark.parametrize("compressed", [True, False], ids=["binary_compressed", "binary"])
def test_open3d_pcds_read_back(tmp_path: Path, compressed: bool) -> None:
    import open3d as o3d

    points = np.random.default_rng(4).uniform(-0.3, 0.3, size=(5000, 3))
    path = tmp_path / "cloud.pcd"
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.colors = o3d.utility.Vector3dVector(np.full((5000, 3), 0.5))  # an rgb field beside x, y, z
    assert o3d.io.write_point_cloud(str(path), cloud, compressed=compressed)
    read = read_cloud_file("cloud.pcd", path.read_bytes(), MAX_POINTS)
    np.testing.assert_array_equal(read, points.astype(np.float32))  # open3d writes float32


def test_an_open3d_ascii_pcd_reads_back(tmp_path: Path) -> None:
    import open3d as o3d

    points = np.random.default_rng(5).uniform(-0.3, 0.3, size=(2000, 3))
    path = tmp_path / "cloud.pcd"
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    assert o3d.io.write_point_cloud(str(path), cloud, write_ascii=True)
    assert b"DATA ascii" in path.read_bytes()[:500]
    read = read_cloud_file("cloud.pcd", path.read_bytes(), MAX_POINTS)
    # open3d prints the doubles to 10 significant digits under a float32 header (TYPE F, SIZE 4):
    # read as float32, a value is its float32 rounding, or one ulp off it (decimal, then binary).
    np.testing.assert_array_max_ulp(read.astype(np.float32), points.astype(np.float32), maxulp=1)


@needs_dragon
def test_the_scanners_range_grid_ply_gives_the_scans_points() -> None:
    data = (DRAGON / "raw" / "dragonStandRight_0.ply").read_bytes()
    assert b"element range_grid" in data[:2000]
    points = read_ply(data, MAX_POINTS)
    scan = np.load(DRAGON / "scans" / "dragonStandRight_0.npy")
    assert points.shape == scan.shape == (41841, 3)
    # In the same order. The .npy holds the scan's values to 5 significant digits (from the
    # scanner's own data: it rounds ties the other way from the PLY's 6-7 digits in 1.4 % of the
    # values), so each value is within half a unit of its 5th digit, plus float32 rounding.
    magnitude = np.maximum(np.abs(points), np.abs(scan.astype(np.float64)))
    half_unit = 0.5 * 10.0 ** (np.floor(np.log10(np.maximum(magnitude, 1e-12))) - 4)
    error = np.abs(points - scan)
    assert (error <= half_unit * (1 + 1e-3) + np.spacing(np.float32(magnitude))).all()
    assert error.max() < 1e-5  # 10 micrometres, on a 0.27 m object
    # Through the upload path as well (the range_grid rows are counted, not read).
    np.testing.assert_array_equal(read_cloud_file("scan.ply", data, MAX_POINTS), points)


def test_slack_after_a_compressed_block_and_partly_nan_rows_without_the_real_files(tmp_path: Path) -> None:
    # The two traits of PCL's Kinect frames, rebuilt here so that they are checked where
    # ../shared/real is absent: zeros after the binary_compressed block, and (-0, -0, NaN) rows.
    from pypcd4 import Encoding, PointCloud

    # Millimetre steps, as a Kinect's depth comes: compressible, so pypcd4 writes it compressed.
    rng = np.random.default_rng(6)
    organized = (np.round(rng.uniform(0.5, 1.5, size=(48, 64, 3)), 3)).astype(np.float32)
    organized[1, 2] = np.nan
    organized[4, 5] = (-0.0, -0.0, np.nan)
    path = tmp_path / "frame.pcd"
    cloud = PointCloud.from_xyz_points(organized.reshape(-1, 3))
    cloud.save(path, encoding=Encoding.BINARY_COMPRESSED)
    assert b"DATA binary_compressed" in path.read_bytes()[:300]
    data = path.read_bytes() + bytes(3889)  # as much slack as PCL left in each mosd frame
    np.testing.assert_array_equal(read_pcd(data, MAX_POINTS), organized.reshape(-1, 3))
    points = read_frame_file("frame.pcd", data, MAX_POINTS)
    flat = organized.reshape(-1, 3)
    np.testing.assert_array_equal(points, flat[~np.isnan(flat).any(axis=1)])
    assert len(points) == 48 * 64 - 2
