"""How objects rest on a plane (cloudpose/geometry/resting.py): stable poses and poses on a tilted plane."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from cloudpose.geometry.resting import plane_axes, rest_on, resting_poses


@pytest.fixture(scope="module")
def brick() -> trimesh.Trimesh:
    # Off-centre, so the poses must move it onto the plane, not just turn it.
    return trimesh.creation.box(
        extents=(0.3, 0.2, 0.1), transform=trimesh.transformations.translation_matrix([1, 2, 3])
    )


def test_a_brick_rests_on_its_faces_most_probable_first(brick) -> None:
    poses = resting_poses(brick)
    assert len(poses) == 6  # a box rests on each of its faces
    probabilities = [pose.probability for pose in poses]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
    # The largest faces (0.3 x 0.2) are the likeliest: the brick then stands 0.1 high.
    assert poses[0].height == pytest.approx(0.1)
    for pose in poses:
        rested = brick.vertices @ pose.rotation + pose.translation
        assert rested[:, 2].min() == pytest.approx(0.0, abs=1e-9)  # on the plane z = 0
        low, high = rested.min(axis=0), rested.max(axis=0)
        np.testing.assert_allclose((low[:2] + high[:2]) / 2, 0.0, atol=1e-9)  # centred on the z axis
        assert pose.height == pytest.approx(high[2] - low[2])
        assert np.linalg.det(pose.rotation) == pytest.approx(1.0)


def test_plane_axes_are_a_right_handed_frame_around_the_normal() -> None:
    normal = np.array([0.2, -0.9, -0.4])
    axes = plane_axes(normal)
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(axes) == pytest.approx(1.0)
    np.testing.assert_allclose(axes[2], normal / np.linalg.norm(normal))


def test_resting_on_a_tilted_plane_puts_the_lowest_point_on_it_under_the_given_spot(brick) -> None:
    axes = plane_axes(np.array([0.0, -0.6, -0.8]))
    origin = np.array([0.1, 0.3, 1.2])
    for pose in resting_poses(brick):
        for angle in (0.0, 1.0, 4.0):
            rotation, translation = rest_on(pose, axes, origin, angle)
            posed = brick.vertices @ rotation + translation
            heights = (posed - origin) @ axes[2]
            assert heights.min() == pytest.approx(0.0, abs=1e-9)
            assert heights.max() == pytest.approx(pose.height)
            in_plane = (posed - origin) @ axes[:2].T
            low, high = in_plane.min(axis=0), in_plane.max(axis=0)
            np.testing.assert_allclose((low + high) / 2, 0.0, atol=1e-9)
