import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.geometry import random_rotation
from pipeline.data.synth import exam_batch, generator_for
from pipeline.training.config import ConfigError, load_config
from pipeline.training.train import load_checkpoint, train, train_step


def tiny_config(out_dir: Path, **overrides):
    # Targets no run can reach, so runs end on the step budget and two runs are comparable.
    values = {
        "n_points": 32,
        "batch_size": 32,
        "steps": 60,
        "val_every": 20,
        "val_size": 64,
        "target_median_deg": 1e-12,
        "target_p99_deg": 1e-12,
        "target_translation_pct": 1e-12,
        "out_dir": str(out_dir),
    }
    values.update(overrides)
    return load_config(None, values)


def test_train_step_returns_outputs_and_every_loss_term() -> None:
    from models.pose import FlatPoseRegressor

    cfg = load_config(None, {"n_points": 16, "l1_lambda": 1e-3})
    model = FlatPoseRegressor(16, scale=10.0)
    batch = exam_batch(torch.randn(16, 3), 4, 5.0, generator_for(0, "cpu"))
    (rotation_raw, translation), losses = train_step(model, batch, cfg, 10.0)
    assert rotation_raw.shape == (4, 3, 3) and translation.shape == (4, 3)
    assert set(losses) == {"rotation_mse", "translation_mse", "orthogonality", "l1", "total"}
    expected = (
        losses["rotation_mse"]
        + losses["translation_mse"]
        + cfg.lambda_orth * losses["orthogonality"]
        + cfg.l1_lambda * losses["l1"]
    )
    torch.testing.assert_close(losses["total"], expected)


def test_the_exported_fixture_run_left_metrics_and_a_summary(exported_model) -> None:
    rows = list(csv.DictReader((exported_model.run_dir / "metrics.csv").open()))
    assert rows and {"step", "rotation_median_deg", "orthogonality_raw", "total"} <= set(rows[0])
    summary = json.loads((exported_model.run_dir / "summary.json").read_text())
    assert summary["stopped_because"] == "target reached"
    assert summary["validation"]["rotation_median_deg"] <= summary["config"]["target_median_deg"]
    state = load_checkpoint(exported_model.run_dir / "checkpoint.pt")
    assert state["config"]["n_points"] == exported_model.n_points
    assert state["template"].shape == (exported_model.n_points, 3)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    straight = train(tiny_config(tmp_path / "straight"))
    assert straight.steps == 60 and straight.stopped_because == "step budget"

    def interrupt_at_30(step: int, total: int, values: dict) -> None:
        if step == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path / "resumed"), progress=interrupt_at_30)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["step"] == 30
    resumed = train(tiny_config(tmp_path / "resumed"))
    assert resumed.steps == 60
    first = load_checkpoint(straight.checkpoint)["model"]
    second = load_checkpoint(resumed.checkpoint)["model"]
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-7)


def test_resuming_with_another_model_config_is_refused(tmp_path: Path) -> None:
    train(tiny_config(tmp_path, steps=20))
    with pytest.raises(ConfigError, match="trained with other n_points"):
        train(tiny_config(tmp_path, steps=20, n_points=48))
    fresh = train(tiny_config(tmp_path, steps=20, n_points=48), fresh=True)
    assert fresh.steps == 20


def test_time_budget_stops_training(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path, steps=100_000, time_budget_s=0.5))
    assert result.stopped_because == "time budget"
    assert 0 < result.steps < 100_000


def test_cuda_request_without_a_gpu_is_an_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA device"):
        train(tiny_config(tmp_path, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_runs_on_the_gpu(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path, device="cuda"))
    assert result.device.startswith("cuda")


def test_the_rotation_loss_of_a_symmetric_object_is_to_the_nearest_equivalent_pose() -> None:
    from pipeline.data.synth import PoseBatch
    from pipeline.training.config import TrainConfig
    from pipeline.training.train import train_step

    group = torch.stack([torch.eye(3), torch.diag(torch.tensor([-1.0, -1.0, 1.0]))])
    rotation = random_rotation(4, torch.Generator().manual_seed(1))
    batch = PoseBatch(torch.zeros(4, 8, 3), rotation, torch.zeros(4, 3))

    class Turned(torch.nn.Module):  # answers the half-turned, equally valid pose
        def forward(self, points):
            return group[1] @ rotation, torch.zeros(4, 3)

    cfg = TrainConfig(model_kind="pointnet")
    _, plain = train_step(Turned(), batch, cfg, 1.0)
    _, symmetric = train_step(Turned(), batch, cfg, 1.0, symmetries=group)
    assert float(plain["rotation_mse"]) > 0.1
    assert float(symmetric["rotation_mse"]) < 1e-10


def test_training_symmetries_close_the_group() -> None:
    from cloudpose.geometry.symmetry import Symmetry
    from pipeline.objects.adding import training_symmetries

    box = Symmetry(
        np.stack([np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])])
    )
    assert training_symmetries(box, []).shape == (4, 3, 3)
    # Two near half-turns generate the third: four rotations.
    near = [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1])]
    group = training_symmetries(Symmetry.identity(), near)
    assert group.shape == (4, 3, 3)
    np.testing.assert_allclose(group[0], np.eye(3))
    cylinder = Symmetry(np.stack([np.eye(3), np.diag([1.0, -1, -1])]), axis=np.array([0.0, 0.0, 1.0]))
    assert training_symmetries(cylinder, []).shape == (72, 3, 3)
