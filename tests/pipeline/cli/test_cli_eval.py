"""``cloudpose eval`` on both model kinds, and what its picture shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import DEFAULT_MODEL, app
from pipeline.evaluation.evaluate import evaluate_model, report_figure

runner = CliRunner()


def test_eval_scores_the_shipped_order_free_model_by_default(tmp_path: Path, monkeypatch) -> None:
    sidecar_before = DEFAULT_MODEL.with_suffix(".json").read_bytes()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", "--count", "6"])
    assert result.exit_code == 0, result.output
    assert "6 held-out poses (seed 0)" in result.stdout
    report = json.loads((tmp_path / "artifacts" / "eval" / "bunny" / "eval.json").read_text())
    assert report["count"] == 6 and report["refined"] is True
    assert report["rotation_median_deg"] < 1.0  # refined answers; the network alone is ~10 deg off
    assert (tmp_path / "artifacts" / "eval" / "bunny" / "eval.png").read_bytes()[:4] == b"\x89PNG"
    # A package of the store changes only as a whole: eval leaves it alone.
    assert DEFAULT_MODEL.with_suffix(".json").read_bytes() == sidecar_before
    assert "eval: 6/6 clouds (100%)" in result.stderr


def test_eval_of_an_order_free_model_without_refinement_is_the_network_alone(order_free_model) -> None:
    refined = evaluate_model(order_free_model.model_path, count=4, seed=1)
    network = evaluate_model(order_free_model.model_path, count=4, seed=1, refine=False)
    assert refined.metrics["refined"] and not network.metrics["refined"]
    assert refined.rotation_errors_deg.shape == network.rotation_errors_deg.shape == (4,)
    # The briefly trained network is far off; refinement and hypotheses carry the pose.
    assert np.median(refined.rotation_errors_deg) < np.median(network.rotation_errors_deg)


def test_eval_figure_shows_rotation_and_translation_with_the_success_lines(exported_model) -> None:
    evaluation = evaluate_model(exported_model.model_path, count=50, seed=2)
    assert evaluation.translation_errors_pct.shape == (50,)
    assert np.median(evaluation.translation_errors_pct) == pytest.approx(
        evaluation.metrics["translation_median_pct"], rel=0.05
    )
    figure = report_figure(evaluation)
    rotation, translation = figure.axes
    assert rotation.get_xlabel() == "rotation error (deg)"
    assert translation.get_xlabel() == "translation error (% of diagonal)"
    lines = {line.get_label(): line.get_xdata()[0] for line in rotation.get_lines()}
    assert lines["1°"] == 1.0 and lines["5°"] == 5.0
    low, high = rotation.get_xlim()
    assert low < 1.0 and high > 5.0  # both lines in view, however small the errors
    assert sum(patch.get_height() for patch in translation.patches) == 50
