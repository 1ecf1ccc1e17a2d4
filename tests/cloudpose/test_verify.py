"""Frame verification: a pose is judged by the sensor's view of where it puts the object. An
answer that several poses fit is settled on the one the frame bears out where they differ (a
look-alike turn stays out), and a pose turned or moved off its instance scores below the bar that
its true pose clears."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cloudpose.detection.detect import DETECTION_PARAMS, RangeImage, open_frame
from cloudpose.estimation.served import ObjectPose, ServedObject
from cloudpose.geometry.rotations import axis_rotation
from pipeline.data.scenes import (
    Frame,
    Intrinsics,
    SceneCounts,
    SceneLayout,
    SceneObject,
    make_frame,
)
from tests.service import test_detect

# The detection tests' fixtures: the served bunny, its scene mesh in metres, distractors.
bunny, scene_bunny, distractors = test_detect.bunny, test_detect.scene_bunny, test_detect.distractors


@pytest.fixture(scope="module")
def frame(scene_bunny, distractors) -> Frame:
    """One bunny on a table with two distractors, none touching it."""
    counts = SceneCounts(target_copies=(1, 1), distractors=(2, 2))
    rng = np.random.default_rng(21)
    return make_frame([scene_bunny], distractors, rng, Intrinsics(), counts, layout=SceneLayout(touching=0.0))


@pytest.fixture(scope="module")
def search(bunny, frame):
    found, _, _ = open_frame(frame.points().astype(np.float64), {"bunny": bunny}, "m", None, 0)
    return found


def object_pose(bunny, rotation: np.ndarray, translation: np.ndarray, **extra) -> ObjectPose:
    """An answer for an object pose (row vectors, sensor frame, metres)."""
    return ObjectPose(
        rotation.T,
        -translation @ rotation.T,
        rotation,
        translation,
        False,
        scale=bunny.scale_for("m"),
        **extra,
    )


def turned(degrees: float, about: str, rotation: np.ndarray) -> np.ndarray:
    """``rotation`` followed by a turn about one of the object's own axes."""
    return Rotation.from_euler(about, degrees, degrees=True).as_matrix() @ rotation


def candidate(rotation: np.ndarray, translation: np.ndarray) -> dict:
    back = rotation.T  # an answer's back transform
    return {
        "rotation": back.tolist(),
        "translation": (-translation @ back).tolist(),
        "fitness": 0.95,
        "inlier_rmse": 0.001,
        "confidence": 0.8,
    }


def ambiguous_answer(bunny, truth, rotations: list[np.ndarray]) -> ObjectPose:
    return object_pose(
        bunny, rotations[0], truth.translation, confidence={"confidence": 0.8},
        candidates=[candidate(rotation, truth.translation) for rotation in rotations], ambiguous=True,
        reason=f"{len(rotations) - 1} other pose(s) fit the cloud about as well",
    )  # fmt: skip


def test_the_range_image_renders_the_nearest_surface_and_knows_its_inside() -> None:
    sensor = np.zeros(3)
    near = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])  # one direction, two depths
    image = RangeImage(near, sensor, cell=0.01)
    keys, ranges, _ = image.nearest_of(near)
    assert len(keys) == 1 and ranges[0] == pytest.approx(1.0)
    assert image.observed(keys)[0] == pytest.approx(1.0)
    assert np.isnan(image.observed(keys + 7)).all()  # nothing was seen there
    grid = np.stack(np.meshgrid(np.arange(-3, 4) * 0.01, np.arange(-3, 4) * 0.01), axis=-1).reshape(-1, 2)
    square = np.column_stack([grid, np.ones(len(grid))])
    keys, _, _ = image.nearest_of(square)
    inside = image.interior(keys)
    assert 0 < inside.sum() < len(keys)  # the border cells are not inside, the middle ones are
    assert image.in_view(keys).all()  # the sensor looked there (it saw the near point)
    assert not image.in_view(keys + 1000).any()  # far beyond anything it saw


def test_an_ambiguous_answer_is_settled_on_the_candidate_the_frame_bears_out(bunny, frame, search) -> None:
    truth = frame.instances[0]
    look_alike = turned(30, "z", truth.rotation)
    answer = ambiguous_answer(bunny, truth, [look_alike, truth.rotation])
    settled = search._settle("bunny", answer)
    assert settled.found and not settled.ambiguous
    np.testing.assert_allclose(settled.object_rotation, truth.rotation, atol=1e-9)
    assert any(warning.startswith("settled by the frame") for warning in settled.warnings)


def test_an_answer_whose_candidates_are_all_wrong_stays_ambiguous(bunny, frame, search) -> None:
    truth = frame.instances[0]
    answer = ambiguous_answer(
        bunny, truth, [turned(30, "z", truth.rotation), turned(-30, "z", truth.rotation)]
    )
    assert search._settle("bunny", answer) is answer


def test_the_true_pose_clears_the_view_bar_and_its_look_alikes_do_not(bunny, frame, search) -> None:
    truth = frame.instances[0]
    bar = DETECTION_PARAMS.min_view_agreement
    assert search.view("bunny", object_pose(bunny, truth.rotation, truth.translation)) >= bar
    for rotation in (turned(90, "x", truth.rotation), turned(180, "z", truth.rotation)):
        assert search.view("bunny", object_pose(bunny, rotation, truth.translation)) < bar
    shifted = truth.translation + np.array([0.03, 0.0, 0.0])  # a third of the bunny aside
    assert search.view("bunny", object_pose(bunny, truth.rotation, shifted)) < bar


def test_a_pose_that_leaves_part_of_its_segment_off_its_surface_is_not_a_detection(bunny, frame) -> None:
    """The bunny's points and a patch of a twentieth as many beside it (a neighbour's face) make a
    segment whose pose fits the bunny and leaves the patch off its surface: refused by the
    fitness floor (the segment's parts are posed next); without the floor, a detection."""
    points, labels = frame.points().astype(np.float64), frame.point_labels()
    search, _, _ = open_frame(points, {"bunny": bunny}, "m", None, 0)
    own = points[labels == 0]
    centre = own.mean(axis=0)
    sight = centre / np.linalg.norm(centre)
    side = np.cross(sight, [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    up = np.cross(side, sight)
    square = np.random.default_rng(0).uniform(-0.03, 0.03, (len(own) // 20, 2))
    patch = centre + 0.13 * side + square[:, :1] * side + square[:, 1:] * up
    segment = np.vstack([own, patch])
    assert search._pose_once(segment) is None
    assert search.refused == 1
    search.params = dataclasses.replace(search.params, min_fitness=0.0)
    found = search._pose_once(segment)
    assert found is not None and found.detection.pose.found
    assert 0.9 < found.detection.pose.confidence["fitness"] < DETECTION_PARAMS.min_fitness
    truth = frame.instances[0]
    assert bunny.symmetry.error_deg(found.detection.pose.object_rotation, truth.rotation) < 5.0


@pytest.fixture(scope="module")
def flange(added_part) -> tuple[ServedObject, SceneObject]:
    """The parts benchmark's flange (six bolt holes: nearly round about its axis), added without
    training, served, and its mesh in metres."""
    return added_part("flange")


def test_a_flange_turned_off_its_holes_is_settled_on_the_turn_the_frame_bears_out(flange) -> None:
    served, scene_flange = flange
    counts = SceneCounts(target_copies=(1, 1), distractors=(0, 0))
    layout = SceneLayout(touching=0.0, distance_m=(0.7, 0.7), tilt_deg=(40.0, 40.0))
    frame = make_frame([scene_flange], [], np.random.default_rng(3), Intrinsics(), counts, layout=layout)
    search, _, _ = open_frame(frame.points().astype(np.float64), {"flange": served}, "m", None, 0)
    truth = frame.instances[0]
    round_axis, order = search._round_axes("flange")[0]  # the axis of its six symmetries
    assert order == 6

    def about_axis(degrees: float) -> np.ndarray:
        return axis_rotation(round_axis, np.radians(degrees)) @ truth.rotation

    answer = ambiguous_answer(served, truth, [about_axis(8), about_axis(38)])  # neither is right
    settled = search._settle("flange", answer)
    assert settled.found and not settled.ambiguous
    assert served.symmetry.error_deg(settled.object_rotation, truth.rotation) < 3.0
    assert any("a turn near two of them" in warning for warning in settled.warnings)
