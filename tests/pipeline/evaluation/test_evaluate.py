import json

from pipeline.evaluation.evaluate import evaluate_model, format_table, write_report


def test_evaluation_through_the_service_code_path(exported_model, tmp_path) -> None:
    evaluation = evaluate_model(exported_model.model_path, count=600, seed=3)
    metrics = evaluation.metrics
    assert metrics["count"] == 600 and evaluation.rotation_errors_deg.shape == (600,)
    assert metrics["rotation_median_deg"] < 0.05
    assert metrics["rotation_p99_deg"] < 0.5
    assert metrics["translation_median_pct"] < 0.1
    assert metrics["success_1deg"] == 1.0
    assert metrics["rotation_median_deg"] <= metrics["rotation_p90_deg"] <= metrics["rotation_p99_deg"]

    table = format_table(metrics)
    assert "rotation error, median (deg)" in table and "success rate < 5 deg" in table
    json_path, png_path = write_report(evaluation, tmp_path)
    assert json.loads(json_path.read_text())["count"] == 600
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluation_is_reproducible_and_seeded(exported_model) -> None:
    first = evaluate_model(exported_model.model_path, count=50, seed=1).rotation_errors_deg
    again = evaluate_model(exported_model.model_path, count=50, seed=1).rotation_errors_deg
    other = evaluate_model(exported_model.model_path, count=50, seed=2).rotation_errors_deg
    assert (first == again).all() and not (first == other).all()
