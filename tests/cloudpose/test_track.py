"""Tracking: poses of one frame followed into the next of a moving camera's sequence, in process
and through /v1/track on a real server; a pose far from anything is lost; bad previous poses are
refused with their detail."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from cloudpose.detection.detect import detect
from cloudpose.detection.track import PreviousPose, track
from cloudpose.estimation.served import ObjectPose
from cloudpose.geometry.rotations import geodesic_deg
from pipeline.data.scenes import CameraMotion, Frame, Intrinsics, SceneCounts, SceneLayout, frame_sequence
from tests.service import test_detect

ROTATION_DEG, TRANSLATION_M = test_detect.ROTATION_DEG, test_detect.TRANSLATION_M
npy_bytes = test_detect.npy_bytes  # frames' points are float32 already
# The detection tests' fixtures: the served bunny, its scene mesh, distractors, a real server.
bunny, scene_bunny, distractors, server = (
    test_detect.bunny,
    test_detect.scene_bunny,
    test_detect.distractors,
    test_detect.server,
)


@pytest.fixture(scope="module")
def frames(scene_bunny, distractors) -> list[Frame]:
    """Three frames of one scene, the camera turning 2 degrees a frame about the bunnies."""
    counts = SceneCounts(target_copies=(2, 2), distractors=(2, 2))
    rng = np.random.default_rng(5)
    return list(
        frame_sequence(
            [scene_bunny], distractors, rng, 3, Intrinsics(), counts, layout=SceneLayout(touching=0.0)
        )
    )


def previous_of(detections) -> list[PreviousPose]:
    return [PreviousPose(item.object, item.pose.rotation, item.pose.translation) for item in detections]


def close_to_truth(frame: Frame, rotation: np.ndarray, translation: np.ndarray) -> bool:
    """Whether an object pose (row vectors, sensor frame) is one of the frame's instances."""
    return any(
        geodesic_deg(rotation, instance.rotation) < ROTATION_DEG
        and np.linalg.norm(translation - instance.translation) < TRANSLATION_M
        for instance in frame.instances
    )


def test_the_sequence_moves_the_camera_and_keeps_the_ground_truth(frames: list[Frame]) -> None:
    first, second = frames[0].instances, frames[1].instances
    assert len(first) == len(second) == 2
    for before, after in zip(first, second, strict=True):
        turned = geodesic_deg(before.rotation, after.rotation)
        assert 0.5 < turned < 5.0  # the camera turned, about 2 degrees
    # The table's points lie on each frame's own plane.
    for frame in frames:
        table = frame.points()[frame.point_labels() == -1]
        distance = np.abs(table @ frame.plane[:3] + frame.plane[3])
        assert np.median(distance) < 0.003


def test_poses_of_one_frame_are_followed_into_the_next(bunny, frames: list[Frame]) -> None:
    objects = {"bunny": bunny}
    found = [item for item in detect(frames[0].points(), objects, "m").detections if item.pose.found]
    assert len(found) == 2
    previous = previous_of(found)
    for frame in frames[1:]:
        report = track(frame.points(), objects, previous, "m")
        assert report.lost == 0
        for item in report.tracks:
            assert item.pose.found
            assert close_to_truth(frame, item.pose.object_rotation, item.pose.object_translation)
        previous = previous_of(report.tracks)


def test_a_pose_where_nothing_is_is_lost(bunny, frames: list[Frame]) -> None:
    away = PreviousPose("bunny", np.eye(3), np.array([0.0, 0.0, -5.0]))  # 5 m behind the camera
    report = track(frames[1].points(), {"bunny": bunny}, [away], "m")
    assert report.tracks == [None] and report.lost == 1


def test_track_route_follows_the_detections_of_the_frame_before(server: str, frames: list[Frame]) -> None:
    first = httpx.post(
        f"{server}/v1/detect", files={"file": ("frame.npy", npy_bytes(frames[0].points()))}, timeout=60
    )
    assert first.status_code == 200, first.text
    previous = [
        {key: item[key] for key in ("object", "rotation", "translation")}
        for item in first.json()["detections"]
        if item["confident"]
    ]
    assert len(previous) == 2
    answer = httpx.post(
        f"{server}/v1/track",
        files={"file": ("frame.npy", npy_bytes(frames[1].points()))},
        data={"previous": json.dumps(previous)},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["lost"] == 0 and len(reply["tracks"]) == 2
    for item in reply["tracks"]:
        matrix = np.asarray(item["pose_matrix"])
        assert item["object"] == "bunny" and item["confident"]
        assert close_to_truth(frames[1], matrix[:3, :3].T, matrix[:3, 3])


def test_track_route_takes_json_and_says_what_was_lost(server: str, frames: list[Frame]) -> None:
    points = frames[1].points()[::20]  # a thinned frame keeps the JSON small
    body = {
        "points": points.round(4).tolist(),
        "previous": [{"object": "bunny", "rotation": np.eye(3).tolist(), "translation": [0.0, 0.0, -5.0]}],
    }
    answer = httpx.post(f"{server}/v1/track", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["tracks"] == [{"lost": True, "object": "bunny"}]
    assert answer.json()["lost"] == 1


POINTS = [[0.0, 0.0, 1.0], [0.1, 0.0, 1.0], [0.0, 0.1, 1.0]] * 20
PREVIOUS = {"object": "bunny", "rotation": np.eye(3).tolist(), "translation": [0.0, 0.0, 0.0]}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"points": POINTS}, "previous must be a non-empty list of {object, rotation, translation}"),
        ({"points": POINTS, "previous": [{**PREVIOUS, "object": "teapot"}]}, "previous[0].object 'teapot'"),
        (
            {"points": POINTS, "previous": [{**PREVIOUS, "rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]}]},
            "previous[0].rotation is not a rotation matrix",
        ),
        (
            {"points": POINTS, "previous": [{**PREVIOUS, "translation": [0, 0]}]},
            "previous[0]: rotation must be 3x3 numbers and translation 3 numbers",
        ),
    ],
)
def test_bad_previous_poses_are_refused(server: str, body: dict, detail: str) -> None:
    answer = httpx.post(f"{server}/v1/track", json=body, timeout=30)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(detail)


def test_a_multipart_track_request_needs_its_previous_poses(server: str, frames: list[Frame]) -> None:
    files = {"file": ("frame.npy", npy_bytes(frames[1].points()[::20]))}
    missing = httpx.post(f"{server}/v1/track", files=files, timeout=30)
    assert missing.status_code == 422
    assert missing.json()["detail"] == "a multipart track request needs the field 'previous' (a JSON list)"
    broken = httpx.post(f"{server}/v1/track", files=files, data={"previous": "[{"}, timeout=30)
    assert broken.status_code == 422
    assert broken.json()["detail"] == "the field 'previous' is not valid JSON"


def test_camera_motion_is_seeded(scene_bunny, distractors) -> None:
    counts = SceneCounts(target_copies=(1, 1), distractors=(1, 1))
    runs = [
        [
            frame.depth
            for frame in frame_sequence(
                [scene_bunny],
                distractors,
                np.random.default_rng(9),
                2,
                Intrinsics().scaled(0.25),
                counts,
                motion=CameraMotion(turn_deg=5.0),
            )
        ]  # fmt: skip
        for _ in range(2)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
    assert not np.array_equal(runs[0][0], runs[0][1])


def test_an_ambiguous_answer_is_settled_on_the_candidate_near_the_previous_pose(bunny, frames) -> None:
    from scipy.spatial.transform import Rotation

    from cloudpose.detection.detect import open_frame

    points = frames[1].points().astype(np.float64)
    search, _, _ = open_frame(points, {"bunny": bunny}, "m", None, 0)
    truth = frames[1].instances[0]
    turned = Rotation.from_euler("z", 90, degrees=True).as_matrix() @ truth.rotation

    def candidate(rotation: np.ndarray) -> dict:
        back = rotation.T  # an answer's back transform
        return {
            "rotation": back.tolist(),
            "translation": (-truth.translation @ back).tolist(),
            "fitness": 0.95,
            "inlier_rmse": 0.001,
            "confidence": 0.8,
        }

    ambiguous = ObjectPose(
        truth.rotation.T, -truth.translation @ truth.rotation.T, truth.rotation, truth.translation, False,
        scale=bunny.scale_for("m"), confidence={"confidence": 0.8},
        candidates=[candidate(turned), candidate(truth.rotation)], ambiguous=True,
        reason="1 other pose(s) fit the cloud about as well",
    )  # fmt: skip
    near = Rotation.from_euler("x", 3, degrees=True).as_matrix() @ truth.rotation
    settled = search._settle_by_prior("bunny", ambiguous, near)
    assert settled.found and not settled.ambiguous
    np.testing.assert_allclose(settled.object_rotation, truth.rotation, atol=1e-9)
    assert any(warning.startswith("settled by the previous pose") for warning in settled.warnings)
    halfway = Rotation.from_euler("z", 45, degrees=True).as_matrix() @ truth.rotation
    assert search._settle_by_prior("bunny", ambiguous, halfway) is ambiguous
