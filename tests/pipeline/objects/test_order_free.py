"""The order-free path end to end: sensor-like training data, export, inference with refinement, bench."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from cloudpose.estimation.inference import MIN_POINTS, PoseEstimator
from cloudpose.geometry.rotations import geodesic_deg as rotation_error_deg
from cloudpose.io.clouds import CloudError
from pipeline.cli.app import app
from pipeline.data.mesh import load_mesh, sample_surface
from pipeline.data.synth import SensorSampler, generator_for
from pipeline.data.views import make_view_bank

PRETRAINED = Path(__file__).resolve().parents[3] / "data" / "objects" / "bunny" / "model.onnx"


def posed_bunny(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mesh = load_mesh()
    rng = np.random.default_rng(seed)
    rotation = Rotation.random(random_state=rng).as_matrix()
    translation = rng.uniform(-0.5, 0.5, 3) * mesh.diagonal
    return sample_surface(mesh, count, rng) @ rotation + translation, rotation, translation


def test_sensor_batches_mix_full_and_partial_clouds_with_noise_and_outliers() -> None:
    mesh = load_mesh()
    views = make_view_bank(mesh, 4, np.random.default_rng(0))
    sampler = SensorSampler.build(mesh, views, "cpu", seed=0, surface_points=20_000)
    options = {"translation_half_range": 0.5 * mesh.diagonal, "noise_max": 0.0, "outlier_max": 0.0}
    batch = sampler.batch(64, 100, generator_for(0, "cpu"), partial_fraction=0.5, **options)
    assert batch.points.shape == (64, 100, 3)
    canonical = (batch.points - batch.translation[:, None]) @ batch.rotation.transpose(1, 2)
    # Clouds lie on the surface in the canonical frame, full and partial alike (views carry the
    # camera's depth noise, which grows with distance).
    surface = torch.as_tensor(sample_surface(mesh, 100_000, np.random.default_rng(1)), dtype=torch.float32)
    nearest = torch.cdist(canonical.reshape(-1, 3), surface).min(dim=1).values
    assert nearest.median() < 0.005 * mesh.diagonal and nearest.quantile(0.99) < 0.05 * mesh.diagonal
    # Partial clouds do not cover the object: their centroid is off the object's origin.
    offset = canonical.mean(dim=1).norm(dim=1) / mesh.diagonal
    assert (offset > 0.05).float().mean() > 0.2 and (offset < 0.02).float().mean() > 0.2

    noisy = sampler.batch(
        16, 200, generator_for(1, "cpu"), partial_fraction=0.0, **{**options, "outlier_max": 0.5}
    )
    canonical = (noisy.points - noisy.translation[:, None]) @ noisy.rotation.transpose(1, 2)
    far = torch.cdist(canonical.reshape(-1, 3), surface).min(dim=1).values > 0.02 * mesh.diagonal
    assert 0.05 < far.float().mean() < 0.4  # outliers: uniform share in [0, 0.5], some inside the object


def test_export_of_an_order_free_model(order_free_model) -> None:
    folder = order_free_model.model_path.parent
    sidecar = json.loads((folder / "model.json").read_text())
    assert sidecar["order_free"] is True and sidecar["kind"] == "pointnet"
    assert sidecar["input"]["shape"] == ["batch", "points", 3]
    assert sidecar["template"] is None and (folder / "surface.npy").exists()
    assert np.load(folder / "surface.npy").shape == (20_000, 6)


def test_the_network_ignores_point_order_through_onnx(order_free_model) -> None:
    estimator = PoseEstimator(order_free_model.model_path)
    cloud, _, _ = posed_bunny(200, seed=0)  # fewer points than the network's input: no subsampling
    permuted = cloud[np.random.default_rng(1).permutation(len(cloud))]
    (first,) = estimator.estimate([cloud], refine=False)
    (second,) = estimator.estimate([permuted], refine=False)
    np.testing.assert_allclose(first.object_rotation, second.object_rotation, atol=1e-5)
    np.testing.assert_allclose(first.object_translation, second.object_translation, atol=1e-4)
    assert first.refinement is None


def test_refinement_runs_and_reports_its_confidence(order_free_model) -> None:
    estimator = PoseEstimator(order_free_model.model_path)
    cloud, _, _ = posed_bunny(800, seed=3)
    (pose,) = estimator.estimate([cloud])
    answer = pose.to_dict()
    assert answer["refined"] is True
    confidence = answer["confidence"]
    assert 0 <= confidence["fitness"] <= 1 and confidence["hypotheses"] >= 1
    np.testing.assert_allclose(pose.rotation @ pose.rotation.T, np.eye(3), atol=1e-9)


@pytest.mark.parametrize("count", [40, 1500, 200_000])
def test_the_shipped_model_answers_clouds_of_any_size(count: int) -> None:
    estimator = PoseEstimator(PRETRAINED)
    cloud, rotation, translation = posed_bunny(count, seed=count)
    cloud = cloud[np.random.default_rng(0).permutation(count)]
    (pose,) = estimator.estimate([cloud])
    assert pose.refinement.refined
    assert rotation_error_deg(pose.object_rotation[None], rotation[None])[0] < 1.0
    assert np.linalg.norm(pose.object_translation - translation) < 0.01 * load_mesh().diagonal
    assert pose.to_dict()["confidence"]["confident"] is True


def test_another_object_gets_low_confidence() -> None:
    estimator = PoseEstimator(PRETRAINED)
    diagonal = load_mesh().diagonal
    rng = np.random.default_rng(0)
    sphere = rng.normal(size=(1500, 3))
    sphere = sphere / np.linalg.norm(sphere, axis=1, keepdims=True) * diagonal * 0.3
    box = (rng.uniform(-0.5, 0.5, size=(1500, 3)) * [0.6, 0.4, 0.3]) * diagonal
    box[np.arange(1500), rng.integers(0, 3, 1500)] = np.sign(box[np.arange(1500), 0]) * 0.15 * diagonal
    bunny, _, _ = posed_bunny(1500, seed=5)
    (bunny_pose, sphere_pose, box_pose) = estimator.estimate([bunny, sphere, box])
    bunny_confidence = bunny_pose.to_dict()["confidence"]
    for other in (sphere_pose, box_pose):
        confidence = other.to_dict()["confidence"]
        assert confidence["confident"] is False
        assert confidence["confidence"] < bunny_confidence["confidence"] - 0.3


def test_clouds_in_other_units_get_a_warning() -> None:
    estimator = PoseEstimator(PRETRAINED)
    bunny, _, _ = posed_bunny(1500, seed=6)
    in_metres = bunny * 0.0159  # the npm bunny's unit is about 16 mm
    in_millimetres = bunny * 15.9
    answers = [pose.to_dict() for pose in estimator.estimate([bunny, in_metres, in_millimetres])]
    assert answers[0]["confidence"]["confident"] and "warnings" not in answers[0]
    for answer in answers[1:]:
        assert not answer["confidence"]["confident"]
        (warning,) = answer["warnings"]
        assert "other units" in warning and "15.76" in warning


def test_order_free_models_need_a_minimum_of_points(order_free_model) -> None:
    estimator = PoseEstimator(order_free_model.model_path)
    with pytest.raises(CloudError) as raised:
        estimator.check_cloud(np.zeros((MIN_POINTS - 1, 3)))
    assert raised.value.status == 422 and f"at least {MIN_POINTS} points" in raised.value.detail
    estimator.check_cloud(np.zeros((MIN_POINTS, 3)))


def test_bench_command_on_a_tiny_set(order_free_model, tmp_path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(order_free_model.model_path),
            "--count",
            "2",
            "--sets",
            "small,partial",
            "--methods",
            "network+refine,fpfh_ransac_icp,pca_icp",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "network+refine" in result.stdout and "fpfh_ransac_icp" in result.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report  # rows for every method x set
    bad = CliRunner().invoke(app, ["bench", str(order_free_model.model_path), "--sets", "tiny"])
    assert bad.exit_code == 1 and "unknown sets tiny" in bad.stderr


def test_the_service_answers_any_order_and_size_over_http() -> None:
    from fastapi.testclient import TestClient

    from cloudpose.settings import Settings
    from service.app import create_app

    with TestClient(create_app(Settings(model_path=PRETRAINED))) as client:
        described = client.get("/v1/model").json()
        assert described["order_free"] is True and "template" not in described
        assert f"from {MIN_POINTS} points" in described["input_requirement"]
        for count in (MIN_POINTS, 2048):
            cloud, rotation, _ = posed_bunny(count, seed=count)
            answer = client.post("/v1/pose", json={"points": cloud.tolist()})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["refined"] is True and body["confidence"]["hypotheses"] >= 1
            error = rotation_error_deg(np.asarray(body["rotation"]).T[None], rotation[None])[0]
            assert error < (5.0 if count == MIN_POINTS else 1.0)
        unrefined = client.post("/v1/pose?refine=false", json={"points": cloud.tolist()}).json()
        assert unrefined["refined"] is False and unrefined["confidence"] is None
        few = client.post("/v1/pose", json={"points": cloud[: MIN_POINTS - 1].tolist()})
        assert few.status_code == 422
        assert (
            few.json()["detail"]
            == f"points has {MIN_POINTS - 1} points; send at least {MIN_POINTS} points of the object"
        )
        batch = client.post(
            "/v1/pose/batch", json={"clouds": [{"points": cloud[:500].tolist()}, {"points": cloud.tolist()}]}
        )
        assert batch.status_code == 200 and [pose["n_points"] for pose in batch.json()["poses"]] == [
            500,
            2048,
        ]
