import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from pipeline.cli.app import app

runner = CliRunner()


def test_help_lists_every_verb_without_importing_torch() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("train", "export", "eval", "synth", "serve", "predict"):
        assert verb in result.output
    probe = "import sys, pipeline.cli.app; sys.exit('torch' in sys.modules or 'onnxruntime' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_train_export_eval_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("n_points: 64\nsteps: 600\nval_size: 300\nval_every: 50\n")
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--config", str(config), "--out-dir", str(run), "--seed", "3"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout[trained.stdout.index("{") :])
    assert summary["stopped_because"] in ("target reached", "step budget") and summary["device"].startswith(
        "cpu"
    )
    assert json.loads((run / "summary.json").read_text())["config"]["seed"] == 3  # the flag reached the run

    exported = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "model")])
    assert exported.exit_code == 0, exported.output
    assert "parity max |diff|" in exported.output

    model = tmp_path / "model" / "model.onnx"
    evaluated = runner.invoke(app, ["eval", str(model), "--count", "300"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "rotation error, median (deg)" in evaluated.output
    report = json.loads((tmp_path / "model" / "eval.json").read_text())
    assert report["count"] == 300 and report["rotation_median_deg"] < 0.05
    assert json.loads((tmp_path / "model" / "model.json").read_text())["evaluation"]["count"] == 300


def test_synth_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "set.npz"
    result = runner.invoke(
        app, ["synth", "--out", str(out), "--count", "5", "--n-points", "30", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    data = np.load(out)
    assert data["points"].shape == (5, 30, 3) and data["template"].shape == (30, 3)


def test_expected_failures_are_one_line_and_exit_1(tmp_path: Path) -> None:
    bad_config = runner.invoke(app, ["train", "--n-points", "0", "--out-dir", str(tmp_path)])
    assert bad_config.exit_code == 1
    assert bad_config.stderr.strip() == "error: invalid config: n_points must be a positive integer, got 0"

    missing_model = runner.invoke(app, ["eval", str(tmp_path / "none.onnx")])
    assert missing_model.exit_code == 1
    assert missing_model.stderr.strip() == f"error: model file not found: {tmp_path / 'none.onnx'}"

    missing_checkpoint = runner.invoke(app, ["export", str(tmp_path / "nothing.pt")])
    assert missing_checkpoint.exit_code == 1 and "checkpoint not found" in missing_checkpoint.stderr

    bad_hidden = runner.invoke(app, ["train", "--hidden", "wide"])
    assert bad_hidden.exit_code == 1 and "--hidden takes comma-separated widths" in bad_hidden.stderr
