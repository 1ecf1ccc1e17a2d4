"""The wire format is defined once: the service's OpenAPI document, its route models and the result
types of the client and the in-process API all come from :mod:`cloudpose.wire`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydantic
import pytest

from cloudpose import results, wire

IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
POSE_MATRIX = [[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
FIT = {
    "confidence": 0.9,
    "confident": True,
    "fitness": 0.95,
    "inlier_rmse": 0.001,
    "inlier_rmse_percent": 0.5,
    "hypotheses": 12,
    "refined": True,
    "explained": True,
    "surface_noise": None,
}


def pose_answer(**extra: object) -> dict:
    """A pose answer as ``/v1/pose`` gives it (keys in the service's order)."""
    return {
        "found": True,
        "rotation": IDENTITY,
        "translation": [-0.5, 0.0, 0.0],
        "pose_matrix": POSE_MATRIX,
        "quaternion_xyzw": [0.0, 0.0, 0.0, 1.0],
        "refined": True,
        "confidence": FIT,
        "units": "m",
        "scale": 1.0,
        "symmetry": {
            "kind": "discrete",
            "order": 2,
            "equivalent_poses": [{"rotation": IDENTITY, "translation": [-0.5, 0.0, 0.0]}],
        },
        "n_points": 500,
        **extra,
    }


def test_the_service_names_the_wire_models() -> None:
    from service import schemas

    for name in ("PoseResponse", "BatchResponse", "DetectResponse", "TrackResponse", "ModelDescription"):
        assert getattr(schemas, name) is getattr(wire, name)
    assert schemas.error_responses(404)[404]["model"] is wire.ErrorBody


def test_a_fit_has_the_fields_of_the_answers_confidence() -> None:
    assert [item.name for item in dataclasses.fields(results.Fit)] == list(wire.Confidence.model_fields)
    assert results.Fit.from_json(FIT) == results.Fit(**FIT)


def test_every_field_of_a_pose_answer_is_a_result_attribute() -> None:
    pose_fields = {item.name for item in dataclasses.fields(results.PoseResult)}
    assert set(wire.PoseResponse.model_fields) <= pose_fields
    assert set(wire.DetectionAnswer.model_fields) <= {
        item.name for item in dataclasses.fields(results.Detection)
    }


def test_a_pose_answer_reads_into_its_result() -> None:
    answer = pose_answer(object="bunny", model_id="abc", server_time_ms=3.5, request_id="r1")
    result = results.PoseResult.from_json(answer)
    assert result.found and result.confident and result.confidence == 0.9
    np.testing.assert_array_equal(result.pose_matrix, np.asarray(POSE_MATRIX))
    assert result.symmetry is not None and result.symmetry.order == 2
    np.testing.assert_array_equal(result.symmetry.equivalent_poses[0][1], [-0.5, 0.0, 0.0])
    assert (result.object, result.model_id, result.server_time_ms, result.request_id) == (
        "bunny",
        "abc",
        3.5,
        "r1",
    )
    assert result.raw == answer and result.candidates == () and result.warnings == ()


def test_a_batch_gives_each_pose_its_object() -> None:
    batch = results.BatchResult.from_json(
        {
            "poses": [pose_answer(), pose_answer(found=False, reason="no")],
            "object": "bunny",
            "model_id": "abc",
            "server_time_ms": 1.0,
        }
    )
    assert [pose.found for pose in batch] == [True, False]
    assert {pose.object for pose in batch} == {"bunny"} and batch[1].reason == "no"


def test_a_detection_says_itself_whether_it_is_confident() -> None:
    detection = results.Detection.from_json(
        {"object": "bunny", **pose_answer(), "confident": False, "visible_fraction": 0.4}
    )
    assert not detection.confident and detection.fit is not None and detection.fit.confident
    assert detection.visible_fraction == 0.4 and detection.object == "bunny"


def test_a_lost_track_has_no_detection() -> None:
    track = results.TrackResult.from_json(
        {"tracks": [{"lost": True, "object": "bunny"}], "lost": 1, "n_points": 10, "server_time_ms": 1.0}
    )
    assert track.lost == 1 and track.tracks[0].lost and track.tracks[0].detection is None


@pytest.mark.parametrize("missing", ["found", "rotation", "n_points"])
def test_an_answer_without_a_required_field_is_refused(missing: str) -> None:
    answer = pose_answer()
    del answer[missing]
    with pytest.raises(pydantic.ValidationError, match=missing):
        results.PoseResult.from_json(answer)


def test_a_rotation_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        results.PoseResult.from_json(pose_answer(rotation=[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
