"""Benchmark runner: accuracy and speed of pose methods on the seeded sets of :mod:`pipeline.data.benchsets`.

A method is any callable ``observed (N, 3) -> (object_rotation (3, 3), object_translation (3,))``.
Each call is timed on its own (``time.perf_counter``). A method that raises, or returns
something that is not a finite pose of the right shape, fails that case: its rotation error is
180° and its translation error infinite, and the failures are counted.

Metrics per method × set follow :mod:`pipeline.training.accuracy`: geodesic rotation error (median, 90th
and 99th percentile, degrees), the error of the back-transform translation ``-t @ R.T`` as a
percentage of the diagonal (median; the lower middle value for even counts, as
:func:`pipeline.training.accuracy.pose_metrics`), success rates (rotation error < 5° and < 1°), and the
median time per cloud with its ratio to the reference method (``fpfh_ransac_icp``) on the same set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cloudpose.geometry.rotations import geodesic_deg
from pipeline.data.benchsets import Case
from pipeline.files import atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png

Method = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
REFERENCE_METHOD = "fpfh_ransac_icp"
FAILED_ROTATION_DEG = 180.0


def back_translation_error_pct(
    pred_rotation: np.ndarray,
    pred_translation: np.ndarray,
    gt_rotation: np.ndarray,
    gt_translation: np.ndarray,
    diagonal: float,
) -> float:
    """``‖(-t_pred @ R_predᵀ) - (-t_gt @ R_gtᵀ)‖`` as a percentage of the diagonal."""
    pred_back = -np.asarray(pred_translation, np.float64) @ np.asarray(pred_rotation, np.float64).T
    gt_back = -np.asarray(gt_translation, np.float64) @ np.asarray(gt_rotation, np.float64).T
    return float(np.linalg.norm(pred_back - gt_back) / diagonal * 100.0)


@dataclass
class CellResult:
    """One method on one set: per-case errors and times, and their summary.

    Attributes:
        rotation_error_deg: (C,) per case; 180 for failures.
        translation_error_pct: (C,) per case; inf for failures.
        ms: (C,) wall time of each call.
        failures: cases where the method raised or returned no valid pose.
        first_error: message of the first failure, if any.
        metrics: the summary (see :func:`summarize`), filled in by :func:`run_bench`.
    """

    method: str
    set_name: str
    rotation_error_deg: np.ndarray
    translation_error_pct: np.ndarray
    ms: np.ndarray
    failures: int = 0
    first_error: str | None = None
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    found: np.ndarray | None = None
    add_s_pct: np.ndarray | None = None


@dataclass
class BenchResults:
    """Everything :func:`run_bench` measured, cells keyed by ``(method, set name)``."""

    diagonal: float
    methods: list[str]
    sets: list[str]
    cells: dict[tuple[str, str], CellResult]
    reference: str = REFERENCE_METHOD

    def rows(self) -> list[dict]:
        """One summary dict per method × set, methods outermost."""
        return [
            {"method": method, "set": name, **self.cells[method, name].metrics}
            for method in self.methods
            for name in self.sets
        ]


def summarize(cell: CellResult) -> dict[str, float | int | None]:
    """Summary metrics of one cell (``time_ratio`` is filled in by :func:`run_bench`)."""
    rotation = cell.rotation_error_deg
    count = len(rotation)
    if count == 0:
        return {"count": 0, "failures": 0}
    p50, p90, p99 = np.quantile(rotation, [0.5, 0.9, 0.99])
    return {
        "count": count,
        "failures": cell.failures,
        "rotation_median_deg": float(p50),
        "rotation_p90_deg": float(p90),
        "rotation_p99_deg": float(p99),
        # The lower middle value for even counts, as torch's median in pipeline.training.accuracy.
        "translation_median_pct": float(np.quantile(cell.translation_error_pct, 0.5, method="lower")),
        "success_5deg": float(np.mean(rotation < 5.0)),
        "success_1deg": float(np.mean(rotation < 1.0)),
        "median_ms": float(np.median(cell.ms)),
        "time_ratio": None,
        # Answers marked found, and wrong answers (>= 5°) marked found, as fractions of all.
        "found_rate": None if cell.found is None else float(np.mean(cell.found)),
        "found_wrong": None if cell.found is None else float(np.mean(cell.found & (rotation >= 5.0))),
        "add_s_median_pct": (
            None
            if cell.add_s_pct is None or not np.isfinite(cell.add_s_pct).any()
            else float(np.nanmedian(np.where(np.isfinite(cell.add_s_pct), cell.add_s_pct, np.inf)))
        ),
    }


def _valid_pose(result: object) -> tuple[np.ndarray, np.ndarray]:
    rotation, translation = result  # type: ignore[misc]
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64).reshape(-1)
    if rotation.shape != (3, 3) or translation.shape != (3,):
        raise ValueError(f"pose of shapes {rotation.shape} and {translation.shape}, not (3, 3) and (3,)")
    if not (np.isfinite(rotation).all() and np.isfinite(translation).all()):
        raise ValueError("pose is not finite")
    return rotation, translation


class _Outcome(NamedTuple):
    """One timed call of a method on one case."""

    rotation_error_deg: float
    translation_error_pct: float
    ms: float
    error: str | None
    found: bool | None = None
    add_s_pct: float = math.nan


@dataclass
class Scoring:
    """How answers are scored for one object.

    Attributes:
        diagonal: translation errors are in % of it.
        symmetry: the object's symmetries (:class:`cloudpose.geometry.symmetry.Symmetry`); errors are to the
            nearest equivalent pose. None scores against the one true pose.
        model_points: (M, 3) canonical points for ADD-S; None skips it.
        diameter: the object's diameter, the unit of ADD-S.
    """

    diagonal: float
    symmetry: object | None = None
    model_points: np.ndarray | None = None
    diameter: float | None = None


def _run_case(method: Method, case: Case, scoring: Scoring | float) -> _Outcome:
    """Time one call and score its answer; a failure scores 180° and an infinite translation.

    A method may return ``(rotation, translation)`` or ``(rotation, translation, found)``.
    """
    if not isinstance(scoring, Scoring):
        scoring = Scoring(float(scoring))
    observed, gt_rotation, gt_translation = case
    start = time.perf_counter()
    try:
        result = method(observed)
        elapsed = time.perf_counter() - start
        found = None
        if isinstance(result, tuple) and len(result) == 3:
            found = bool(result[2])
            result = result[:2]
        rotation, translation = _valid_pose(result)
    except Exception as error:  # any failure of the method counts against it, never the bench
        elapsed = time.perf_counter() - start
        return _Outcome(FAILED_ROTATION_DEG, math.inf, elapsed * 1e3, f"{type(error).__name__}: {error}")
    if scoring.symmetry is not None:
        gt_rotation = scoring.symmetry.nearest_equivalent(rotation, gt_rotation)
    rotation_error = float(geodesic_deg(rotation, gt_rotation))
    translation_error = back_translation_error_pct(
        rotation, translation, gt_rotation, gt_translation, scoring.diagonal
    )
    add_s = math.nan
    if scoring.model_points is not None and scoring.diameter:
        from pipeline.data.symmetry_search import add_s_percent

        add_s = add_s_percent(
            scoring.model_points, rotation, translation, gt_rotation, gt_translation, scoring.diameter
        )
    return _Outcome(rotation_error, translation_error, elapsed * 1e3, None, found, add_s)


def _cell(name: str, set_name: str, outcomes: Sequence[_Outcome]) -> CellResult:
    errors = [outcome.error for outcome in outcomes if outcome.error is not None]
    cell = CellResult(
        name,
        set_name,
        np.array([outcome.rotation_error_deg for outcome in outcomes], dtype=np.float64),
        np.array([outcome.translation_error_pct for outcome in outcomes], dtype=np.float64),
        np.array([outcome.ms for outcome in outcomes], dtype=np.float64),
        len(errors),
        errors[0] if errors else None,
    )
    if any(outcome.found is not None for outcome in outcomes):
        cell.found = np.array([bool(outcome.found) for outcome in outcomes])
    cell.add_s_pct = np.array([outcome.add_s_pct for outcome in outcomes], dtype=np.float64)
    cell.metrics = summarize(cell)
    return cell


def run_method(
    method: Method, cases: Sequence[Case], scoring: Scoring | float, name: str = "", set_name: str = ""
) -> CellResult:
    """Run one method over one set; returns its :class:`CellResult` (metrics included)."""
    return _cell(name, set_name, [_run_case(method, case, scoring) for case in cases])


def run_bench(
    methods: Mapping[str, Method],
    sets: Mapping[str, Sequence[Case]],
    diagonal: float | Scoring,
    *,
    reference: str = REFERENCE_METHOD,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
    on_case: Callable[[int], None] | None = None,
) -> BenchResults:
    """Run every method on every set.

    The methods take turns case by case (case 1 with every method, then case 2, ...), so a
    machine that slows down or speeds up during the run affects all of them alike and the time
    ratios compare like with like.

    Args:
        methods: name -> callable ``observed (N, 3) -> (object_rotation (3, 3), object_translation (3,))``.
        sets: name -> cases from :func:`pipeline.data.benchsets.make_set`.
        diagonal: the object's bounding-box diagonal (translation errors are in % of it), or a
            :class:`Scoring` with the object's symmetries and points for ADD-S.
        reference: method whose median time the others' is divided by, per set (``time_ratio``);
            absent from ``methods`` -> no ratios.
        warmup: untimed calls of each method on the first case of the first set before timing
            (loads lazily built state such as inference sessions); their failures are ignored.
        progress: called with a line per method after each set.
        on_case: called with the number of cases done so far (all sets), after each case.
    """
    scoring = diagonal if isinstance(diagonal, Scoring) else Scoring(float(diagonal))
    first_case = next((cases[0] for cases in sets.values() if len(cases)), None)
    for method in methods.values():
        for _ in range(warmup if first_case is not None else 0):
            try:
                method(first_case.observed)
            except Exception:  # counted when timed
                pass
    cells: dict[tuple[str, str], CellResult] = {}
    done = 0
    for set_name, cases in sets.items():
        outcomes: dict[str, list[_Outcome]] = {name: [] for name in methods}
        for case in cases:
            for method_name, method in methods.items():
                outcomes[method_name].append(_run_case(method, case, scoring))
            done += 1
            if on_case is not None:
                on_case(done)
        for method_name in methods:
            cell = _cell(method_name, set_name, outcomes[method_name])
            cells[method_name, set_name] = cell
            if progress is not None:
                progress(_progress_line(cell))
    for (_, set_name), cell in cells.items():
        base = cells.get((reference, set_name))
        if base is not None and cell.metrics.get("median_ms") and base.metrics.get("median_ms"):
            cell.metrics["time_ratio"] = cell.metrics["median_ms"] / base.metrics["median_ms"]
    return BenchResults(scoring.diagonal, list(methods), list(sets), cells, reference)


def _progress_line(cell: CellResult) -> str:
    m = cell.metrics
    if not m.get("count"):
        return f"{cell.method} on {cell.set_name}: no cases"
    return (
        f"{cell.method} on {cell.set_name}: median {m['rotation_median_deg']:.3f} deg, "
        f"{m['success_5deg'] * 100:.1f} % < 5 deg, {m['median_ms']:.2f} ms, {cell.failures} failed"
    )


COLUMNS = (
    ("method", "method", "{}"),
    ("set", "set", "{}"),
    ("count", "n", "{}"),
    ("failures", "fail", "{}"),
    ("rotation_median_deg", "rot med °", "{:.3f}"),
    ("rotation_p90_deg", "rot p90 °", "{:.3f}"),
    ("rotation_p99_deg", "rot p99 °", "{:.3f}"),
    ("translation_median_pct", "trans med %", "{:.3f}"),
    ("success_5deg", "<5° %", "{:.1%}"),
    ("success_1deg", "<1° %", "{:.1%}"),
    ("found_rate", "found %", "{:.1%}"),
    ("found_wrong", "wrong+found %", "{:.1%}"),
    ("add_s_median_pct", "ADD-S med %", "{:.3f}"),
    ("median_ms", "ms med", "{:.2f}"),
    ("time_ratio", "× ref", "{:.2f}"),
)


def cell_text(value, fmt: str) -> str:
    """A table cell: ``-`` for no value, ``inf`` for an infinite one, else ``fmt`` (without the
    % sign of a percentage: the column's header carries it)."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    text = fmt.format(value)
    return text[:-1] if fmt.endswith("%}") else text


def format_table(results: BenchResults) -> str:
    """A plain-text method × set table of the summary metrics.

    ``× ref`` is the median time relative to the reference method on the same set.
    """

    header = [title for _, title, _ in COLUMNS]
    body = [[cell_text(row.get(key), fmt) for key, _, fmt in COLUMNS] for row in results.rows()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            text.ljust(width) if i < 2 else text.rjust(width)
            for i, (text, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * width for width in widths)
    note = f"× ref: median time relative to {results.reference} on the same set"
    return "\n".join([line(header), rule, *(line(cells) for cells in body), "", note])


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def results_json(results: BenchResults) -> dict:
    """A JSON-ready dict: summary rows and per-case errors and times (inf -> null)."""
    return {
        "diagonal": results.diagonal,
        "reference": results.reference,
        "methods": results.methods,
        "sets": results.sets,
        "summary": [
            {key: _json_number(v) if isinstance(v, float) else v for key, v in row.items()}
            for row in results.rows()
        ],
        "cases": {
            method: {
                name: {
                    "rotation_error_deg": [_json_number(v) for v in cell.rotation_error_deg],
                    "translation_error_pct": [_json_number(v) for v in cell.translation_error_pct],
                    "ms": [_json_number(v) for v in cell.ms],
                    "failures": cell.failures,
                    "first_error": cell.first_error,
                }
                for (m, name), cell in results.cells.items()
                if m == method
            }
            for method in results.methods
        },
    }


def write_results(results: BenchResults, out_dir: str | Path, stem: str = "bench") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.txt`` (the table), ``<stem>_cdf.png`` (per set, the
    cumulative distribution of the rotation error of each method, log x axis) and
    ``<stem>_time.png`` (median ms per cloud, log y axis), atomically.

    Returns:
        Paths by kind: ``json``, ``table``, ``cdf``, ``time`` (no plots without matplotlib, one
        of the training extras: the serving install benches too).
    """
    out_dir = Path(out_dir)
    paths = {
        "json": atomic_write_json(out_dir / f"{stem}.json", results_json(results)),
        "table": atomic_write_text(out_dir / f"{stem}.txt", format_table(results) + "\n"),
    }
    try:
        import matplotlib
    except ModuleNotFoundError:
        return paths
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, max(1, len(results.sets)))
    rows = max(1, math.ceil(len(results.sets) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns + 1.6, 3.3 * rows), squeeze=False)
    floor = 1e-4
    for axis, name in zip(axes.ravel(), results.sets, strict=False):
        for method in results.methods:
            errors = np.sort(np.clip(results.cells[method, name].rotation_error_deg, floor, 180.0))
            if len(errors):
                axis.step(errors, np.arange(1, len(errors) + 1) / len(errors), where="post", label=method)
        for threshold in (1.0, 5.0):
            axis.axvline(threshold, color="0.7", linewidth=0.8, linestyle=":")
        axis.set_xscale("log")
        axis.set_xlim(floor, 180.0)
        axis.set_ylim(0.0, 1.0)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("rotation error (deg)")
        axis.set_ylabel("fraction of clouds")
        axis.grid(True, which="major", alpha=0.3)
    for axis in axes.ravel()[len(results.sets) :]:
        axis.set_axis_off()
    if results.methods and results.sets:
        # Beside the top row, where no curve runs.
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        axes[0, -1].legend(
            handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0
        )
    paths["cdf"] = atomic_write_bytes(out_dir / f"{stem}_cdf.png", figure_png(figure))

    figure = timing_figure(results)
    paths["time"] = atomic_write_bytes(out_dir / f"{stem}_time.png", figure_png(figure))
    return paths


def timing_figure(results: BenchResults):
    """Median ms per cloud, a bar per method and set (log axis), the legend beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(5.0, 1.2 * len(results.sets) + 2) + 2.0, 3.5))
    width = 0.8 / max(1, len(results.methods))
    positions = np.arange(len(results.sets))
    for index, method in enumerate(results.methods):
        times = [results.cells[method, name].metrics.get("median_ms") or np.nan for name in results.sets]
        axis.bar(positions + index * width, times, width, label=method)
    axis.set_xticks(positions + width * (len(results.methods) - 1) / 2, results.sets)
    axis.set_yscale("log")
    axis.set_ylabel("median ms per cloud")
    # Beside the axes: inside, the legend would cover the tallest bars.
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    axis.grid(True, axis="y", which="major", alpha=0.3)
    return figure
