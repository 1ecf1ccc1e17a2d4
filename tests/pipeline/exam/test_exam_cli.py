"""Tests for the ``lenet``, ``plot`` and ``exam`` commands, mounted as in pipeline.cli.app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipeline.exam.cli import exam, lenet_app, plot_app
from pipeline.exam.lenet_train import write_idx

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer()
    application.add_typer(lenet_app, name="lenet")
    application.add_typer(plot_app, name="plot")
    application.command("exam")(exam)
    return application


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_import_does_not_load_torch() -> None:
    code = "import sys, pipeline.exam.cli; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout.strip() == "False False"


def test_help(app: typer.Typer, runner: CliRunner) -> None:
    wide = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # no wrapped option names
    result = runner.invoke(app, ["lenet", "train", "--help"], env=wide)
    assert result.exit_code == 0
    for option in (
        "--mnist",
        "--epochs",
        "--seed",
        "--out",
        "--oversample-class",
        "--class-weight-class",
        "--device",
    ):
        assert option in result.output
    assert "artifacts/lenet" in result.output
    assert "Train LeNet-5" in result.output
    plot_help = runner.invoke(app, ["plot", "elu", "--help"], env=wide)
    assert plot_help.exit_code == 0
    assert "two advantages" in plot_help.output


def test_lenet_train_tiny_run(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "lenet"
    result = runner.invoke(
        app,
        ["lenet", "train", "--epochs", "1", "--limit", "64", "--out", str(out), "--oversample-class", "3"],
    )
    assert result.exit_code == 0, result.output
    assert "sklearn-digits: 64 training / 359 test images, 1 epochs" in result.output
    assert "test accuracy" in result.output
    assert "per class: 0: " in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_samples"] == 64
    assert metrics["oversample_class"] == 3
    assert len(metrics["per_class_accuracy"]) == 10
    assert (out / "confusion_matrix.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "lenet5.onnx").stat().st_size > 200_000  # 61706 float32 weights


def test_lenet_train_on_mnist_files(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    mnist = tmp_path / "mnist"
    for split, count in (("train", 30), ("t10k", 5)):
        write_idx(
            mnist / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        )
        write_idx(mnist / f"{split}-labels-idx1-ubyte.gz", (np.arange(count) % 10).astype(np.uint8))
    result = runner.invoke(app, ["lenet", "train", "--mnist", str(mnist), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "mnist: 30 training / 5 test images, 8 epochs" in result.output  # MNIST's default epochs
    assert "  5: n/a  " in result.output  # no test image of class 5
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())  # strict JSON: no NaN
    assert metrics["source"] == "mnist"
    assert metrics["per_class_accuracy"][5:] == [None] * 5
    assert len(metrics["epoch_losses"]) == 8


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--mnist", "/nonexistent/mnist"], "error: MNIST directory /nonexistent/mnist does not exist"),
        (["--oversample-class", "12"], "error: --oversample-class must be a digit 0-9, got 12"),
        (["--device", "tpu"], "error: --device must be one of auto, cpu, cuda, got 'tpu'"),
    ],
)
def test_lenet_train_expected_failures(
    app: typer.Typer, runner: CliRunner, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(app, ["lenet", "train", "--out", str(tmp_path), *arguments])
    assert result.exit_code == 1
    assert result.stderr.strip() == message
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not any(tmp_path.iterdir())


def test_lenet_train_cuda_unavailable(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = runner.invoke(
        app, ["lenet", "train", "--device", "cuda", "--limit", "8", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: CUDA was requested but is not available"


def test_plot_elu(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "plots" / "elu.png"
    result = runner.invoke(app, ["plot", "elu", "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {path}"
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_exam_report(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "exam.md"
    result = runner.invoke(app, ["exam", "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert "z = [6, 4, 3], m = [6, 4], y = 6, L = 16" in result.stdout
    assert path.read_text() == result.stdout
    assert result.stderr.strip() == f"wrote {path}"
