import json

import numpy as np
from typer.testing import CliRunner

from cloudpose.estimation.inference import PoseEstimator
from pipeline.cli.app import app
from pipeline.exam.prune import format_prune_table, prune_model


def test_pruning_levels_reach_their_sparsity_and_export_servable_models(exported_model, tmp_path) -> None:
    checkpoint = exported_model.run_dir / "checkpoint.pt"
    rows = prune_model(checkpoint, [0.5, 0.9], tmp_path, finetune_steps=30, eval_count=200)
    assert [round(row.sparsity, 3) for row in rows] == [0.5, 0.9]
    assert rows[1].csr_bytes < rows[0].csr_bytes < rows[0].dense_bytes * 1.01
    assert rows[0].dense_bytes == rows[1].dense_bytes == 3 * exported_model.n_points * 12 * 4
    for row in rows:
        estimator = PoseEstimator(row.model_path)  # the service loads a pruned model unchanged
        cloud = np.load(exported_model.model_path.parent / "template.npy")
        (pose,) = estimator.estimate([cloud])
        assert np.isfinite(pose.rotation).all()
    assert "| 90.0% |" in format_prune_table(rows)
    assert len(json.loads((tmp_path / "prune.json").read_text())) == 2


def test_prune_command_rejects_bad_levels(exported_model, tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["prune", str(exported_model.run_dir), "--sparsity", "1.5", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1 and "--sparsity values must be in [0, 1)" in result.stderr
