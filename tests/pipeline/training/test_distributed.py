"""Data-parallel training on two CPU processes (gloo), launched for real."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from models.pose import build_pose_model
from pipeline.data.mesh import load_mesh
from pipeline.data.synth import exam_batch, generator_for
from pipeline.training.config import load_config
from pipeline.training.train import (
    ExamData,
    batch_seed,
    load_checkpoint,
    model_arguments,
    train,
    train_step,
    warmup_cosine,
)

REPO = Path(__file__).resolve().parents[3]
# The exam setting of the shared fixture ``exported_model``: N = 64, 600 steps.
EXAM = {"n_points": 64, "steps": 600, "val_every": 100, "val_size": 500}


def cloudpose() -> list[str]:
    script = Path(sys.executable).with_name("cloudpose")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def run_launcher(command: list[str], timeout_s: float = 150) -> subprocess.CompletedProcess:
    """Run a command that starts worker processes; on timeout (a hang), kill all of them."""
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ranks_draw_different_batches_and_one_process_keeps_its_stream() -> None:
    assert [batch_seed(7, step) for step in range(5)] == [7 * 1_000_003 + step for step in range(5)]
    seeds = [batch_seed(7, step, rank, 2) for step in range(600) for rank in range(2)]
    assert len(set(seeds)) == len(seeds)  # no batch repeats, across ranks or steps
    template = torch.randn(32, 3)
    rank_0, rank_1 = (
        exam_batch(template, 8, 1.0, generator_for(batch_seed(7, 3, rank, 2), "cpu")) for rank in range(2)
    )
    assert not torch.allclose(rank_0.rotation, rank_1.rotation)


def test_two_gloo_processes_reach_the_single_process_bar(tmp_path: Path, exported_model) -> None:
    config = write_config(tmp_path / "exam.yaml", EXAM)
    run = tmp_path / "run"
    started = time.perf_counter()
    launched = run_launcher(
        [*cloudpose(), "train", "--config", str(config), "--out-dir", str(run), "--nproc-per-node", "2"]
    )
    wall_s = time.perf_counter() - started
    assert launched.returncode == 0, launched.stderr
    printed = json.loads(launched.stdout[launched.stdout.index("{") :])
    assert launched.stdout.count('"world_size"') == 1  # rank 0 alone reports

    single = json.loads((exported_model.run_dir / "summary.json").read_text())
    ddp = json.loads((run / "summary.json").read_text())
    print(
        f"\nsingle process: {single['steps']} steps, {single['elapsed_s']} s, "
        f"median {single['validation']['rotation_median_deg']:.2e} deg | "
        f"2 x gloo: {ddp['steps']} steps, {ddp['elapsed_s']} s training, {wall_s:.1f} s wall, "
        f"median {ddp['validation']['rotation_median_deg']:.2e} deg"
    )
    assert ddp["world_size"] == 2 and ddp["global_batch_size"] == 2 * ddp["config"]["batch_size"]
    assert printed["world_size"] == 2 and printed["steps"] == ddp["steps"]
    assert single["reached_target"] and ddp["reached_target"]
    assert ddp["stopped_because"] == "target reached"
    for key, target in (
        ("rotation_median_deg", "target_median_deg"),
        ("rotation_p99_deg", "target_p99_deg"),
        ("translation_median_pct", "target_translation_pct"),
    ):
        assert ddp["validation"][key] <= ddp["config"][target]
    assert sorted(path.name for path in run.iterdir()) == ["checkpoint.pt", "metrics.csv", "summary.json"]
    assert load_checkpoint(run / "checkpoint.pt")["world_size"] == 2


# Targets no run can reach, so runs end on the step budget and can be replayed step by step.
TINY = {
    "n_points": 32,
    "batch_size": 32,
    "steps": 8,
    "val_every": 4,
    "val_size": 64,
    "target_median_deg": 1e-12,
    "target_p99_deg": 1e-12,
    "target_translation_pct": 1e-12,
}


def launch_two_ranks(config: Path, out_dirs: list[Path]) -> list[tuple[str, str]]:
    """Run ``cloudpose train`` as ranks 0 and 1, joined through torchrun's variables."""
    port = str(free_port())
    workers = []
    for rank, out_dir in enumerate(out_dirs):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "OMP_NUM_THREADS": "1",
        }
        command = [*cloudpose(), "train", "--config", str(config), "--out-dir", str(out_dir)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        workers.append(subprocess.Popen(command, env=env, cwd=REPO, text=True, **pipes))
    try:
        outputs = [worker.communicate(timeout=150) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()  # only ever needed when a rank hangs
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    return outputs


def replay(draws: Callable[[int], list[tuple[int, int]]], tmp_path: Path) -> dict[str, torch.Tensor]:
    """The weights of :data:`TINY` trained in this process, step ``s`` averaging the gradients of
    the batches of the ``(rank, world_size)`` pairs ``draws(s)`` (what DDP computes)."""
    cfg = load_config(None, {**TINY, "out_dir": str(tmp_path / "replay")})
    mesh = load_mesh(None)
    data = ExamData(cfg, mesh, torch.device("cpu"), tmp_path)
    torch.manual_seed(cfg.seed)
    model = build_pose_model(**model_arguments(cfg, mesh))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.steps))
    for step in range(cfg.steps):
        losses = []
        for rank, world_size in draws(step):
            batch = data.batch(generator_for(batch_seed(cfg.seed, step, rank, world_size), "cpu"))
            losses.append(train_step(model, batch, cfg, mesh.diagonal)[1]["total"])
        optimizer.zero_grad()
        (sum(losses) / len(losses)).backward()
        optimizer.step()
        schedule.step()
    return model.state_dict()


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-6)


def test_only_rank_0_writes_and_a_step_averages_both_ranks_batches(tmp_path: Path) -> None:
    """Each rank is told its own run folder: rank 1's must stay unwritten, and rank 0's weights
    must be those of gradients averaged over the batches of ranks 0 and 1 (not one batch twice)."""
    config = write_config(tmp_path / "tiny.yaml", TINY)
    outputs = launch_two_ranks(config, [tmp_path / "run0", tmp_path / "run1"])
    assert '"world_size": 2' in outputs[0][0] and outputs[1][0] == ""  # rank 0 alone reports
    assert not (tmp_path / "run1").exists()
    state = load_checkpoint(tmp_path / "run0" / "checkpoint.pt")
    assert state["step"] == TINY["steps"]

    assert_same_weights(state["model"], replay(lambda step: [(0, 2), (1, 2)], tmp_path))
    rank_0_twice = replay(lambda step: [(0, 2), (0, 2)], tmp_path)
    assert any(not torch.allclose(state["model"][name], rank_0_twice[name]) for name in rank_0_twice)


def test_two_ranks_resume_a_single_process_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config(None, {**TINY, "out_dir": str(run)})

    def interrupt_at_4(step: int, total: int, values: dict) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=interrupt_at_4)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4

    launch_two_ranks(write_config(tmp_path / "tiny.yaml", TINY), [run, run])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8 and summary["world_size"] == 2
    state = load_checkpoint(run / "checkpoint.pt")
    assert_same_weights(
        state["model"], replay(lambda step: [(0, 1)] if step < 4 else [(0, 2), (1, 2)], tmp_path)
    )


def test_a_time_budget_stops_every_rank_under_plain_torchrun(tmp_path: Path) -> None:
    # Ranks that stopped one step apart would wait for each other forever (the timeout fails it).
    values = {"n_points": 64, "steps": 1_000_000, "val_every": 50, "val_size": 200, "time_budget_s": 2.0}
    config = write_config(tmp_path / "budget.yaml", values)
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    launched = run_launcher(
        [*torchrun, "-m", "pipeline.cli", "train", "--config", str(config), "--out-dir", str(run)]
    )
    assert launched.returncode == 0, launched.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_because"] == "time budget" and summary["world_size"] == 2
    assert 0 < summary["steps"] < 1_000_000
    assert load_checkpoint(run / "checkpoint.pt")["step"] == summary["steps"]


def test_a_rank_ends_at_once_with_its_output_flushed() -> None:
    # exit_now skips the interpreter's finalization (which gloo's leftover threads can abort)
    # but not what the rank printed, nor its status.
    code = (
        "import sys\n"
        "from pipeline.training import distributed\n"
        "print('summary', flush=False)\n"
        "sys.stderr.write('progress')\n"
        "distributed.exit_now(3)\n"
        "print('never')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "summary\n", "progress")
