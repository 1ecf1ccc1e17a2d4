"""``cloudpose train`` killed with SIGKILL resumes from its last checkpoint."""

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline.files import sha256_file
from pipeline.training.export import export_model
from pipeline.training.train import load_checkpoint

REPO = Path(__file__).resolve().parents[3]
# The exam setting on N = 64 points, with a checkpoint every 20 steps.
CONFIG = {"n_points": 64, "steps": 600, "val_every": 20, "val_size": 500}


def cloudpose() -> list[str]:
    script = Path(sys.executable).with_name("cloudpose")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


def kill_when(command: list[str], ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()`` holds."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.poll() is None, f"training ended before it was killed: {process.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.001)
    process.kill()
    process.wait()


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    config = tmp_path / "exam.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    checkpoint = run / "checkpoint.pt"
    command = [*cloudpose(), "train", "--config", str(config), "--out-dir", str(run)]

    kill_when(command, checkpoint.exists)
    first = load_checkpoint(checkpoint)["step"]
    assert 0 < first < CONFIG["steps"] and first % CONFIG["val_every"] == 0
    assert not (run / "summary.json").exists()

    # Kill the resumed run while it writes its next checkpoint (its temporary file exists, or
    # the checkpoint changes): the file on disk must still load, never half-written.
    written = checkpoint.stat().st_mtime_ns
    kill_when(
        command,
        lambda: any(run.glob(".checkpoint.pt.*.tmp")) or checkpoint.stat().st_mtime_ns != written,
    )
    second = load_checkpoint(checkpoint)["step"]
    assert first <= second < CONFIG["steps"]

    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    summary = json.loads((run / "summary.json").read_text())
    print(
        f"\nkilled at checkpoints of steps {first} and {second}; the last run resumed at step "
        f"{summary['resumed_from_step']}, ended at step {summary['steps']} ({summary['stopped_because']}) "
        f"in {time.perf_counter() - started:.1f} s wall, median "
        f"{summary['validation']['rotation_median_deg']:.2e} deg"
    )
    assert summary["resumed_from_step"] == second
    assert summary["reached_target"] and summary["stopped_because"] == "target reached"
    assert not any(run.glob(".checkpoint.pt.*.tmp"))  # what a kill mid-write left is gone

    exported = export_model(checkpoint, tmp_path / "model")
    assert exported.sidecar["training"]["checkpoint_sha256"] == sha256_file(checkpoint)
    assert exported.sidecar["training"]["steps"] == summary["steps"]
