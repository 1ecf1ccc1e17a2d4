"""The in-process API: ``Estimator`` answers as the HTTP routes do for the same cloud (against a real
uvicorn), and it and ``PoseEstimator.pose`` refuse bad clouds with the routes' status and detail."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from cloudpose import Client, CloudError, Estimator, InvalidCloud, NotFound, PoseEstimator
from cloudpose.estimation.inference import DEFAULT_MAX_POINTS, MIN_POINTS
from cloudpose.estimator import SHIPPED_STORE, ArgumentSettings
from cloudpose.settings import Settings
from cloudpose.store.package import ObjectStore
from pipeline.data.scenes import Frame
from tests.service.test_client import (  # noqa: F401  (fixtures)
    API_KEY,
    BUNNY,
    assert_pose,
    assert_same_answer,
    diagonal,
    example,
    frame,
    posed_copy,
    server,
)

FEW = "points has 10 points; send at least 32 points of the object"


@pytest.fixture(scope="module")
def estimator(shipped_store: Path) -> Estimator:
    return Estimator.from_store(shipped_store)


@pytest.fixture
def raw(server: str):  # noqa: F811
    with httpx.Client(
        base_url=server, headers={"authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as raw_client:
        yield raw_client


def test_the_same_cloud_gets_the_same_answer_as_over_http(
    estimator: Estimator,
    server: str,  # noqa: F811
    raw: httpx.Client,
    example: dict,  # noqa: F811
    diagonal: float,  # noqa: F811
) -> None:
    points, rotation, translation = posed_copy(example, seed=11)
    local = estimator.pose(points)
    assert_pose(local, rotation, translation, diagonal)
    assert local.object == "bunny" and local.model_id == estimator.object("bunny").model_id
    answer = raw.post("/v1/pose", json={"points": points.tolist()})
    assert answer.status_code == 200, answer.text
    assert_same_answer(local, answer.json())
    with Client(server, api_key=API_KEY, timeout=120) as client:
        remote = client.pose(points * 1000 * estimator.object("bunny").metres_per_unit, units="mm")
        assert estimator.objects().names() == client.objects().names()
    in_millimetres = estimator.pose(
        points * 1000 * estimator.object("bunny").metres_per_unit, object="bunny", units="mm"
    )
    assert_same_answer(in_millimetres, remote.raw, same_file=False)  # the client uploads points.npy
    assert in_millimetres.units == "mm"


def test_a_file_and_a_batch_are_named_as_over_http(
    estimator: Estimator,
    raw: httpx.Client,
    example: dict,  # noqa: F811
) -> None:
    points, _, _ = posed_copy(example, seed=12)
    batch = estimator.pose_batch([BUNNY / "example.xyz", points])
    assert [pose.file for pose in batch] == ["example.xyz", None]
    answer = raw.post(
        "/v1/pose/batch", files=[("files", ("example.xyz", (BUNNY / "example.xyz").read_bytes()))]
    ).json()
    assert_same_answer(batch[0], answer["poses"][0])


def test_a_frame_gets_the_same_detections_as_over_http(
    estimator: Estimator,
    server: str,  # noqa: F811
    frame: Frame,  # noqa: F811
) -> None:
    local = estimator.detect(frame.points(), objects="bunny")
    with Client(server, api_key=API_KEY, timeout=120) as client:
        remote = client.detect(frame.points(), objects="bunny")
    assert local.n_points == remote.n_points and local.segments == remote.segments
    assert len(local.detections) == len(remote.detections) == 1
    assert_same_answer(local.detections[0], remote.detections[0].raw)
    assert local.detections[0].visible_fraction == remote.detections[0].visible_fraction

    from_depth = estimator.detect(depth=frame.depth_units(), intrinsics=frame.intrinsics.pinhole())
    assert from_depth.n_points == local.n_points
    with pytest.raises(InvalidCloud) as refused:
        estimator.detect(depth=frame.depth_units(), intrinsics={"fx": 100.0})
    assert refused.value.status == 422 and "cy" in refused.value.detail


def test_a_frame_is_tracked_as_over_http(
    estimator: Estimator,
    server: str,  # noqa: F811
    frame: Frame,  # noqa: F811
) -> None:
    found = estimator.detect(frame.points(), objects="bunny").detections
    local = estimator.track(frame.points(), previous=found)
    with Client(server, api_key=API_KEY, timeout=120) as client:
        remote = client.track(frame.points(), previous=found)
    assert local.lost == remote.lost == 0 and len(local.tracks) == len(remote.tracks) == 1
    assert_same_answer(local.tracks[0].detection, remote.tracks[0].detection.raw)
    np.testing.assert_allclose(local.tracks[0].detection.rotation, found[0].rotation, atol=0.02)
    away = {"object": "bunny", "rotation": np.eye(3), "translation": [0.0, 0.0, -5.0]}
    assert estimator.track(frame.points(), previous=[away]).tracks[0].lost
    with pytest.raises(InvalidCloud) as refused:
        estimator.track(frame.points(), previous=[{**away, "rotation": 2 * np.eye(3)}])
    assert refused.value.detail == "previous[0].rotation is not a rotation matrix (R R^T = I, det R = +1)"


def test_ten_points_are_refused_as_over_http(
    estimator: Estimator,
    raw: httpx.Client,
    example: dict,  # noqa: F811
) -> None:
    few = example["points"][:10]
    answer = raw.post("/v1/pose", json={"points": few.tolist()})
    assert answer.status_code == 422
    assert answer.json()["detail"] == FEW

    with pytest.raises(InvalidCloud) as refused:
        estimator.pose(few)
    assert (refused.value.status, refused.value.detail) == (422, FEW)
    assert isinstance(refused.value.__cause__, CloudError)

    network = PoseEstimator(BUNNY / "model.onnx")
    with pytest.raises(CloudError) as refused_here:
        network.pose(few)
    assert (refused_here.value.status, refused_here.value.detail) == (422, FEW)
    with pytest.raises(CloudError) as refused_here:
        network.pose(few.tolist())
    assert refused_here.value.detail == FEW
    # The trusted fast path still answers whatever it is given.
    assert len(network.estimate([few], refine=False)) == 1

    batch = {"clouds": [{"points": example["points"].tolist()}, {"points": few.tolist()}]}
    answer = raw.post("/v1/pose/batch", json=batch)
    assert answer.status_code == 422
    with pytest.raises(InvalidCloud) as refused:
        estimator.pose_batch([example["points"], few])
    assert refused.value.detail == answer.json()["detail"] == FEW.replace("points has", "clouds[1] has")
    with pytest.raises(CloudError) as refused_here:
        network.poses([example["points"], few])
    assert refused_here.value.detail == answer.json()["detail"]
    broken = example["points"].copy()
    broken[3, 0] = np.nan
    with pytest.raises(CloudError) as refused_here:
        network.poses([example["points"], broken])
    assert refused_here.value.detail == "clouds[1].points contains NaN or Inf (first at point 3)"
    with pytest.raises(InvalidCloud) as refused:
        estimator.pose_batch([example["points"], broken])
    assert refused.value.detail == refused_here.value.detail


@pytest.mark.parametrize(
    ("bad", "as_array"),
    [
        ([[1.0, 2.0]] * 40, True),
        ([[0.0, 0.0, 0.0]] * 39 + [[0.0, 0.0, 1e12]], True),
        ([[0.0, 0.0, "1"]] * 40, False),
        ([], False),
    ],
    ids=["two columns", "absurd coordinate", "strings", "empty"],
)
def test_bad_clouds_get_the_routes_detail(
    estimator: Estimator, raw: httpx.Client, bad: list, as_array: bool
) -> None:
    answer = raw.post("/v1/pose", json={"points": bad})
    assert answer.status_code == 422
    with pytest.raises(InvalidCloud) as refused:
        estimator.pose(bad)
    assert (refused.value.status, refused.value.detail) == (422, answer.json()["detail"])
    if as_array:
        with pytest.raises(InvalidCloud) as refused:
            estimator.pose(np.asarray(bad, dtype=np.float64))
        assert refused.value.detail == answer.json()["detail"]


def test_nan_and_degenerate_clouds(estimator: Estimator, example: dict) -> None:  # noqa: F811
    broken = example["points"].copy()
    broken[7, 2] = np.inf
    with pytest.raises(InvalidCloud) as refused:
        estimator.pose(broken)
    assert refused.value.detail == "points contains NaN or Inf (first at point 7)"
    with pytest.raises(CloudError) as refused_here:
        PoseEstimator(BUNNY / "model.onnx").pose(broken)
    assert refused_here.value.detail == refused.value.detail

    # A line: the route answers it, not found, with the reason; the bare network refuses it.
    line = np.linspace(0.0, 1.0, 100)[:, None] * [[30.0, -10.0, 5.0]]
    answer = estimator.pose(line)
    assert not answer.found and answer.reason == "the points lie on one line: a line cannot fix a pose"
    with pytest.raises(CloudError) as refused_here:
        PoseEstimator(BUNNY / "model.onnx").pose(line)
    assert refused_here.value.detail == f"points cannot fix a pose: {answer.reason}"


def test_limits_unknown_objects_and_settings(estimator: Estimator, example: dict) -> None:  # noqa: F811
    assert DEFAULT_MAX_POINTS == Settings.model_fields["max_points"].default
    small = Estimator(estimator.registry, ArgumentSettings(max_points=100))
    with pytest.raises(InvalidCloud) as refused:
        small.pose(example["points"][:200])
    assert (refused.value.status, refused.value.detail) == (
        413,
        "points has 200 points; this service accepts at most 100",
    )
    assert small.pose(example["points"][: MIN_POINTS * 3]).n_points == MIN_POINTS * 3

    with pytest.raises(NotFound) as missing:
        estimator.pose(example["points"], object="teapot")
    assert missing.value.detail == "unknown object 'teapot'; known objects: bunny"
    with pytest.raises(InvalidCloud) as unreadable:
        estimator.pose(Path("no/such/cloud.xyz"))
    assert unreadable.value.detail.startswith("cannot read 'no/such/cloud.xyz'")


def test_settings_come_from_arguments_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDPOSE_MAX_POINTS", "5")
    monkeypatch.setenv("CLOUDPOSE_STORE", "/nowhere")
    assert Settings().max_points == 5  # the server reads it
    # CLOUDPOSE_STORE names the user's store, served beside the shipped objects, not alone.
    assert Settings().user_store == Path("/nowhere") and Settings().store is None
    settings = ArgumentSettings(store=SHIPPED_STORE)
    assert settings.max_points == DEFAULT_MAX_POINTS and settings.store == SHIPPED_STORE
    assert settings.user_store is None


def test_by_default_the_shipped_objects_and_the_users_are_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy_package
) -> None:
    user = tmp_path / "mine"
    copy_package(BUNNY, user, "rabbit")
    monkeypatch.setenv("CLOUDPOSE_STORE", str(user))
    both = Estimator.from_store()
    shipped = ObjectStore(SHIPPED_STORE).names()  # the bunny, and whatever else data/objects holds
    assert [item.name for item in both.objects().objects] == sorted({*shipped, "rabbit"})
    assert both.default == "bunny"
    assert [item.name for item in Estimator.from_store(user).objects().objects] == ["rabbit"]
