"""``cloudpose train``: a time budget schedules the learning rate, resuming says so and refuses
another configuration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.training.config import ConfigError, load_config
from pipeline.training.train import schedule_fraction, train, warmup_cosine_at
from tests.pipeline.training.test_train import tiny_config

runner = CliRunner()


def test_a_time_scheduled_run_follows_whichever_budget_ends_first() -> None:
    cfg = load_config(None, {"steps": 1000, "time_budget_s": 30.0, "schedule_by": "time"})
    assert schedule_fraction(100, 15.0, cfg) == 0.5  # the clock is further along
    assert schedule_fraction(800, 3.0, cfg) == 0.8  # the steps are
    assert warmup_cosine_at(1.0) == pytest.approx(1e-4)
    assert warmup_cosine_at(0.05) == pytest.approx(1.0)


def test_a_time_budgeted_run_ends_with_a_decayed_learning_rate(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, steps=1_000_000, time_budget_s=1.5, schedule_by="time", val_every=1)
    result = train(cfg)
    assert result.stopped_because == "time budget"
    rates = [row["lr"] for row in result.history]
    peak = max(rates)
    assert peak == pytest.approx(cfg.lr, rel=0.05)  # warmed up to the peak within the budget
    assert rates[-1] < 0.05 * cfg.lr  # and decayed by its end, whatever the pace of the machine
    assert rates.index(peak) < len(rates) - 1


def test_the_time_budget_flag_alone_schedules_by_time(tmp_path: Path) -> None:
    flags = ["train", "--config", str(_tiny_yaml(tmp_path)), "--n-points", "32", "--batch-size", "32"]
    budgeted = runner.invoke(app, [*flags, "--time-budget-s", "1", "--out-dir", str(tmp_path / "t")])
    assert budgeted.exit_code == 0, budgeted.output
    assert "the learning rate decays over 1 s" in budgeted.stderr
    config = json.loads((tmp_path / "t" / "summary.json").read_text())["config"]
    assert config["schedule_by"] == "time" and config["time_budget_s"] == 1.0
    stepped = runner.invoke(
        app, [*flags, "--steps", "5", "--time-budget-s", "60", "--out-dir", str(tmp_path / "s")]
    )
    assert stepped.exit_code == 0, stepped.output
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["config"]["schedule_by"] == "steps"


def _tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("val_size: 64\nval_every: 10\ntarget_median_deg: 1.0e-12\n")
    return path


def test_resuming_says_from_where_and_refuses_another_budget(tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = ["train", "--config", str(_tiny_yaml(tmp_path)), "--n-points", "32", "--out-dir", str(run)]
    first = runner.invoke(app, [*flags, "--steps", "20"])
    assert first.exit_code == 0, first.output
    assert "resuming" not in first.stderr

    again = runner.invoke(app, [*flags, "--steps", "20"])
    assert again.exit_code == 0, again.output
    assert f"resuming {run / 'checkpoint.pt'} at step 20 of 20" in again.stderr
    assert "nothing left to train (--fresh starts over)" in again.stderr

    other = runner.invoke(app, [*flags, "--steps", "40"])
    assert other.exit_code == 1
    *_, error = other.stderr.strip().splitlines()  # after "training on cpu ..."
    assert error.startswith(f"error: {run / 'checkpoint.pt'} was trained with other steps")
    assert other.stderr.count("error:") == 1 and "Traceback" not in other.output
    assert "(steps 20 -> 40)" in error and "--fresh" in error

    fresh = runner.invoke(app, [*flags, "--steps", "40", "--fresh"])
    assert fresh.exit_code == 0 and "resuming" not in fresh.stderr


def test_an_interrupted_run_resumes_and_says_so(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)

    def interrupt_at_20(step: int, total: int, values: dict) -> None:
        assert math.isfinite(values["elapsed_s"])
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=interrupt_at_20)
    lines: list[str] = []
    resumed = train(cfg, log=lines.append)
    assert resumed.resumed_from_step == 20 and resumed.steps == 60
    assert len(lines) == 1 and lines[0].startswith(f"resuming {tmp_path / 'checkpoint.pt'} at step 20 of 60")
    assert "nothing left" not in lines[0]  # an interrupted run has work left
    with pytest.raises(ConfigError, match=r"time_budget_s 300.0 -> 100.0"):
        train(tiny_config(tmp_path, time_budget_s=100.0))
    train(tiny_config(tmp_path, device="cpu"))  # where it runs is not what it computes
