"""Frames whose objects lie far from the sensor: its noise and the spacing of its returns grow with
range, so the support plane's band widens with the noise measured on it, and far returns are
grouped as densely as near ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cloudpose.detection.detect import DETECTION_PARAMS, _plane_band, detect, frame_segments, open_frame
from pipeline.data.scenes import Intrinsics, SceneCounts, SceneLayout, make_frame
from tests.service import test_detect

# The detection tests' fixtures: the served bunny and its scene mesh in metres.
bunny, scene_bunny = test_detect.bunny, test_detect.scene_bunny
# Voxels as fine as a store whose smallest object is a quarter of the bunny's size sets them.
FINE = dataclasses.replace(DETECTION_PARAMS, voxel_fraction=DETECTION_PARAMS.voxel_fraction / 4)


def test_the_plane_band_follows_the_noise_measured_on_the_plane() -> None:
    rng = np.random.default_rng(0)
    ranges = rng.uniform(0.5, 2.0, 200_000)
    sigma = 0.0005 + 0.001 * ranges**2  # a Kinect-like axial noise
    heights = rng.normal(0.0, sigma)
    distance = 0.003
    band = _plane_band(heights, ranges, distance)
    near, far = ranges < 0.6, ranges > 1.9
    assert np.all(band[near] == pytest.approx(distance))  # the noise there is below the least band
    expected = DETECTION_PARAMS.plane_noise_sigmas * (0.0005 + 0.001 * 1.95**2)
    assert np.median(band[far]) == pytest.approx(expected, rel=0.15)
    # few of the plane's returns stay off it, at any range
    assert np.mean(np.abs(heights[far]) > band[far]) < 0.03
    # a plane without noise below it keeps the least band
    assert np.all(_plane_band(np.abs(heights), ranges, distance) == distance)


@pytest.fixture(scope="module")
def far_frame(scene_bunny):
    """A bunny alone on a table 1.6 m along the optical axis, seen from low down."""
    layout = SceneLayout(touching=0.0, distance_m=(1.6, 1.6), tilt_deg=(55.0, 55.0))
    counts = SceneCounts(target_copies=(1, 1), distractors=(0, 0))
    return make_frame([scene_bunny], [], np.random.default_rng(4), Intrinsics(), counts, layout=layout)


def test_a_far_object_is_one_segment(bunny, far_frame) -> None:
    points = far_frame.points().astype(np.float64)
    truth = far_frame.instances[0]
    search, on_plane, voxel = open_frame(points, {"bunny": bunny}, "m", None, 0, params=FINE)
    centre = bunny.centroid / bunny.scale_for("m") @ truth.rotation + truth.translation
    assert np.linalg.norm(centre) > 1.4
    mine = np.flatnonzero((np.linalg.norm(points - centre, axis=1) < 0.06) & ~on_plane)
    assert len(mine) > 300

    def best_share(segments: list[np.ndarray]) -> float:
        return max((np.isin(mine, segment).mean() for segment in segments), default=0.0)

    grouped = frame_segments(points, on_plane, voxel, FINE, search.sensor, search.pitch)
    assert best_share(grouped) > 0.8
    # grouped as they are, its returns lie too far apart for the neighbourhood: noise, no segment
    assert best_share(frame_segments(points, on_plane, voxel, FINE)) < 0.5


def test_a_far_object_is_found(bunny, far_frame) -> None:
    truth = far_frame.instances[0]
    report = detect(far_frame.points().astype(np.float64), {"bunny": bunny}, "m", params=FINE)
    found = [item for item in report.detections if item.pose.found]
    assert len(found) == 1
    pose = found[0].pose
    assert np.linalg.norm(
        pose.object_translation - truth.translation
    ) < 0.02 * bunny.diagonal / bunny.scale_for("m")
