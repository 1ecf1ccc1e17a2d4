"""Detection's first steps on real Kinect noise: the support plane found in a real tabletop frame is
its labelled table, each labelled object that stands alone is one segment, no object is merged
with the table; and a real frame, posted as PCL wrote it, through /v1/detect on a real server
gets no confident detection (none of the store's objects is in it).

The frames are ``../shared/real/mosd/testN.pcd`` beside the repository (read-only, never copied):
organized 640 x 480 clouds with a ``label`` field (0 no return, 1-9 the table, 20-29 the first
object, 30-39 the second, ...). Every bound below was measured on these frames, with the shipped
bunny's voxel (5 mm: 2 % of its 0.25 m diagonal), and is set with a margin; the measured figure is
beside each. Skipped when the folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from cloudpose.detection.detect import PLANE_DISTANCE_VOXELS, frame_segments, open_frame
from cloudpose.estimation.served import ServedObject
from cloudpose.io.clouds import read_frame_file
from cloudpose.store.package import ObjectStore
from tests.service.test_uvicorn import serving_store

REPO_ROOT = Path(__file__).resolve().parents[2]
MOSD = REPO_ROOT / ".." / "shared" / "real" / "mosd"
FRAMES = sorted(path.stem for path in MOSD.glob("test*.pcd")) if MOSD.is_dir() else []
MAX_FRAME_POINTS = 1_000_000
# Objects with fewer labelled points than this are not held to the segment bounds.
MIN_OBJECT_POINTS = 500

pytestmark = pytest.mark.skipif(not FRAMES, reason=f"the real Kinect frames are not here ({MOSD})")


@pytest.fixture(scope="module")
def bunny(shipped_store: Path) -> dict[str, ServedObject]:
    return {"bunny": ServedObject.from_package(ObjectStore(shipped_store).get("bunny"))}


def real_frame(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A frame's points with a return as the /v1/detect route reads them (the project's reader),
    and each one's label (pypcd4 reads the label field; the reader keeps the organized order)."""
    from pypcd4 import PointCloud

    path = MOSD / f"{name}.pcd"
    points = read_frame_file(path.name, path.read_bytes(), MAX_FRAME_POINTS)
    fields = PointCloud.from_path(path).pc_data
    returned = np.isfinite(np.stack([fields["x"], fields["y"], fields["z"]], axis=1)).all(axis=1)
    labels = fields["label"][returned]
    np.testing.assert_array_equal(points[:, 2], fields["z"][returned])
    return points, labels


def table(labels: np.ndarray) -> np.ndarray:
    return (labels >= 1) & (labels <= 9)


def objects_of(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Each labelled object's mask, keyed by label // 10 (20-29: 2, 30-39: 3, ...), those with at least
    ``MIN_OBJECT_POINTS`` points."""
    groups = np.where(labels >= 20, labels // 10, 0)
    masks = {int(group): groups == group for group in np.unique(groups) if group}
    return {group: mask for group, mask in masks.items() if mask.sum() >= MIN_OBJECT_POINTS}


def precision_recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hits = (found & truth).sum()
    return hits / found.sum(), hits / truth.sum()


@pytest.mark.parametrize("name", FRAMES)
def test_the_largest_support_plane_is_the_table(bunny, name: str) -> None:
    points, labels = real_frame(name)
    search, _, voxel = open_frame(points, bunny, "m", None, seed=0)
    assert search.plane is not None
    distance = np.abs(points @ search.plane[:3] + search.plane[3])
    on_largest = distance <= PLANE_DISTANCE_VOXELS * voxel
    precision, recall = precision_recall(on_largest, table(labels))
    # Measured: precision 0.985-0.999 (what is not table: the objects' lowest 7.5 mm, 205-1012
    # points), recall 0.995-0.998 over the 6 frames.
    assert precision >= 0.97, precision
    assert recall >= 0.98, recall
    assert search.plane[3] > 0  # its normal faces the sensor (at the origin)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(
                strict=True,
                reason="a second 'support plane' runs through the tops of boxes of one height, 6.2 cm "
                "above the table and parallel to it within 0.7 deg (17 % of the frame, over the 15 % "
                "share): 30,668 object points leave with it (precision 0.687)",
            ),
        )
        if name == "test60"
        else name
        for name in FRAMES
    ],
)
def test_what_leaves_with_the_support_planes_is_the_table(bunny, name: str) -> None:
    points, labels = real_frame(name)
    _, on_plane, _ = open_frame(points, bunny, "m", None, seed=0)
    precision, recall = precision_recall(on_plane, table(labels))
    # Measured on the 5 other frames: precision 0.993-0.999, recall 0.995-0.998.
    assert precision >= 0.97, precision
    assert recall >= 0.98, recall


@pytest.mark.parametrize("name", FRAMES)
def test_no_object_is_merged_with_the_table(bunny, name: str) -> None:
    points, labels = real_frame(name)
    _, on_plane, voxel = open_frame(points, bunny, "m", None, seed=0)
    segments = frame_segments(points, on_plane, voxel)
    is_table = table(labels)
    for members in segments:
        share = is_table[members].mean()
        # Measured: at most 0.47 % table points in a segment of >= 500 points; what is left of
        # the table off its plane comes in small segments of its own (43-462 points, 1-2 a frame).
        assert share <= 0.03 or len(members) < MIN_OBJECT_POINTS, (len(members), share)
    # Nearly every point off the planes is in a segment (measured 99.2-99.96 %): few flying pixels.
    assert sum(map(len, segments)) >= 0.98 * (~on_plane).sum()


@pytest.mark.parametrize("name", ["test3", "test12"])
def test_each_object_standing_alone_is_one_segment(bunny, name: str) -> None:
    # In these two frames no object touches another (test38, test45 and test60 have stacked or
    # touching ones, which one segment holds together, as it would any touching instances).
    points, labels = real_frame(name)
    _, on_plane, voxel = open_frame(points, bunny, "m", None, seed=0)
    segments = frame_segments(points, on_plane, voxel)
    objects = objects_of(labels)
    assert len(objects) == {"test3": 2, "test12": 3}[name]
    matched = set()
    for group, mask in objects.items():
        overlap = [mask[members].sum() for members in segments]
        best = int(np.argmax(overlap))
        purity = overlap[best] / len(segments[best])
        cover = overlap[best] / mask.sum()
        # Measured: purity 1.000 and cover 0.980-0.991 (what is missing lies on the table's plane).
        assert purity >= 0.95, (group, purity)
        assert cover >= 0.9, (group, cover)
        matched.add(best)
    assert len(matched) == len(objects)  # one segment each, none shared


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path):
    with serving_store(shipped_store, tmp_path_factory.mktemp("real-frames")) as url:
        yield url


def test_a_real_frame_as_pcl_wrote_it_gets_no_confident_detection(server: str) -> None:
    path = MOSD / "test3.pcd"
    answer = httpx.post(
        f"{server}/v1/detect",
        files={"file": (path.name, path.read_bytes(), "application/octet-stream")},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["n_points"] == 189_141  # the pixels with a return, of 307,200
    assert reply["complete"] is True
    assert reply["segments"] >= 2
    assert [item for item in reply["detections"] if item["confident"]] == []
