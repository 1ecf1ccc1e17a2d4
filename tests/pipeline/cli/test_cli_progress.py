"""Progress of long commands: lines without a terminal, a count per cloud in the bench, and the
bench's timing plot with its legend clear of the bars."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.data.benchsets import make_set
from pipeline.data.mesh import load_mesh
from pipeline.evaluation.bench import run_bench, timing_figure
from pipeline.training.progress import ProgressReport, format_duration


def identity(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.eye(3), np.zeros(3)


def test_without_a_terminal_a_line_at_every_tenth_and_an_estimate() -> None:
    lines: list[str] = []
    options = {"interactive": False, "write": lines.append, "min_interval_s": 0.0, "estimate_after": 5}
    with ProgressReport("bench", 50, unit="clouds", **options) as report:
        for done in range(1, 51):
            report.update(done, status=f"case {done}")
    assert [line.split(":")[1].split("(")[0].strip() for line in lines if "%" in line] == [
        f"{count}/50 clouds" for count in range(5, 51, 5)
    ]
    assert lines[0].startswith("bench: about ") and lines[0].endswith(
        " in all at the pace of the first 5 clouds"
    )
    assert lines[1].startswith("bench: 5/50 clouds (10%), ") and "to go; case 5" in lines[1]
    assert lines[-1].startswith("bench: 50/50 clouds (100%)") and "to go" not in lines[-1]


def test_lines_are_spaced_and_the_end_is_always_reported() -> None:
    lines: list[str] = []
    with ProgressReport("train", 1000, unit="steps", interactive=False, write=lines.append) as report:
        for step in range(1, 1001):
            report.update(step)
    # A fast task: no line per tenth (at most one every 2 s), but the last one.
    assert len(lines) == 1 and lines[0].startswith("train: 1000/1000 steps (100%)")
    silent: list[str] = []
    with ProgressReport("x", 10, enabled=False, write=silent.append) as report:
        report.update(10)
    assert silent == []


def test_durations_read_naturally() -> None:
    assert [format_duration(value) for value in (12, 150, 4 * 3600)] == ["12 s", "2.5 min", "4.0 h"]


def test_the_bench_reports_every_cloud_across_sets() -> None:
    mesh = load_mesh()
    sets = {"small": make_set("small", mesh, 3, 0), "shuffled": make_set("shuffled", mesh, 2, 0)}
    done: list[int] = []
    results = run_bench({"identity": identity}, sets, mesh.diagonal, on_case=done.append, warmup=0)
    assert done == [1, 2, 3, 4, 5]
    figure = timing_figure(results)
    figure.canvas.draw()
    (axis,) = figure.axes
    legend = axis.get_legend().get_window_extent()
    plot = axis.get_window_extent()
    assert legend.x0 >= plot.x1  # beside the axes, so no bar is under it
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["identity"]


def test_bench_says_how_much_work_is_ahead(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["bench", "--count", "2", "--sets", "small", "--methods", "network", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("2 clouds (2 per set: small) for network (the classical baselines")
    assert "bench: 2/2 clouds (100%)" in result.stderr
