"""Evaluation of an exported model through the service's own code path (onnxruntime).

Poses are drawn from a seeded held-out stream (disjoint from training and validation seeds);
each cloud goes through the same validation and inference as an HTTP request. An exam-setting
model sees posed copies of its template; an order-free model sees fresh surface samples of its
mesh (the bench's ``shuffled`` set: 1024 points, shuffled), answered with refinement unless
told otherwise, as the service answers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloudpose.estimation.inference import PoseEstimator
from cloudpose.io.clouds import as_cloud
from pipeline.data.synth import HELD_OUT_OFFSET, held_out_batch
from pipeline.files import atomic_write_bytes, atomic_write_json, figure_png
from pipeline.training.accuracy import pose_metrics
from pipeline.training.config import ConfigError

METRIC_LABELS = {
    "rotation_median_deg": "rotation error, median (deg)",
    "rotation_p90_deg": "rotation error, 90th pct (deg)",
    "rotation_p99_deg": "rotation error, 99th pct (deg)",
    "translation_median_pct": "translation error, median (% of diagonal)",
    "success_1deg": "success rate < 1 deg",
    "success_5deg": "success rate < 5 deg",
}


# Held-out poses by default: the exam-setting model answers 10 000 in seconds; an order-free
# model's refined answers take tens of milliseconds each.
DEFAULT_COUNT = {"exam": 10_000, "order_free": 500}


@dataclass
class Evaluation:
    """Metrics and per-cloud errors of one evaluation.

    Attributes:
        rotation_errors_deg: (C,) geodesic rotation errors.
        translation_errors_pct: (C,) back-translation errors, % of the diagonal (None in
            evaluations made before they were kept).
    """

    metrics: dict[str, Any]
    rotation_errors_deg: np.ndarray
    translation_errors_pct: np.ndarray | None = None


def evaluate_model(
    model_path: str | Path,
    count: int | None = None,
    seed: int = 0,
    chunk: int = 500,
    refine: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Score an exported model of either kind on ``count`` held-out poses (see the module docstring).

    Args:
        model_path: ``model.onnx`` with its sidecar.
        count: number of poses; :data:`DEFAULT_COUNT` of the model's kind when None.
        seed: held-out stream seed (offset away from training seeds).
        chunk: clouds per onnxruntime call (exam-setting models).
        refine: order-free models: refine as the service does (False: the network alone).
        progress: called with the number of clouds answered so far.
    """
    estimator = PoseEstimator(model_path, threads=torch.get_num_threads())
    if estimator.order_free:
        return _evaluate_order_free(estimator, count or DEFAULT_COUNT["order_free"], seed, refine, progress)
    count = count or DEFAULT_COUNT["exam"]
    meta = estimator.metadata
    diagonal = float(meta["mesh"]["diagonal"])
    half_range = float(meta["training"]["config"]["translation_range"]) * diagonal
    data = held_out_batch(estimator.template, count, half_range, seed + HELD_OUT_OFFSET)
    clouds = data.points.numpy()
    rotations, translations = [], []
    for start in range(0, count, chunk):
        batch = [as_cloud(cloud, max_points=clouds.shape[1]) for cloud in clouds[start : start + chunk]]
        for points in batch:
            estimator.check_cloud(points)
        for pose in estimator.estimate(batch):
            rotations.append(pose.object_rotation)
            translations.append(pose.object_translation)
        if progress is not None:
            progress(len(rotations))
    return _score(
        estimator, np.stack(rotations), np.stack(translations), data.rotation, data.translation, seed
    )


def _evaluate_order_free(
    estimator: PoseEstimator, count: int, seed: int, refine: bool, progress: Callable[[int], None] | None
) -> Evaluation:
    from pipeline.data.benchsets import make_set

    if estimator.session is None and not refine:
        raise ConfigError("this model has no network: without refinement it gives no answer")
    mesh = _model_mesh(estimator)
    cases = make_set("shuffled", mesh, count=count, seed=seed + HELD_OUT_OFFSET)
    rotations, translations = [], []
    for done, case in enumerate(cases, start=1):
        points = as_cloud(case.observed.astype(np.float32), max_points=len(case.observed))
        estimator.check_cloud(points)
        (pose,) = estimator.estimate([points], refine=refine)
        rotations.append(pose.object_rotation)
        translations.append(pose.object_translation)
        if progress is not None:
            progress(done)
    evaluation = _score(
        estimator,
        np.stack(rotations),
        np.stack(translations),
        torch.as_tensor(np.stack([case.object_rotation for case in cases])),
        torch.as_tensor(np.stack([case.object_translation for case in cases])),
        seed,
    )
    evaluation.metrics.update({"clouds": "fresh 1024-point surface samples, shuffled", "refined": refine})
    return evaluation


def _model_mesh(estimator: PoseEstimator) -> Any:
    """The mesh an order-free model was trained on: its training config's (the bundled bunny when
    empty), checked against the sidecar's hash."""
    from pipeline.data.mesh import load_mesh

    meta = estimator.metadata
    path = meta.get("training", {}).get("config", {}).get("mesh") or None
    mesh = load_mesh(path)
    if mesh.sha256 != meta["mesh"]["sha256"]:
        raise ConfigError(
            f"mesh {path or 'bunny'} is not the one {estimator.model_id} was trained on (sha256 differs)"
        )
    return mesh


def _score(
    estimator: PoseEstimator,
    pred_rotation: np.ndarray,
    pred_translation: np.ndarray,
    gt_rotation: torch.Tensor,
    gt_translation: torch.Tensor,
    seed: int,
) -> Evaluation:
    """Metrics of predicted object poses (C, 3, 3) and (C, 3) against the truth."""
    from models.geometry import invert_pose, rotation_error_deg

    diagonal = float(estimator.metadata["mesh"]["diagonal"])
    pred_rotation_t = torch.as_tensor(pred_rotation, dtype=torch.float64)
    pred_translation_t = torch.as_tensor(pred_translation, dtype=torch.float64)
    gt_rotation, gt_translation = gt_rotation.double(), gt_translation.double()
    metrics = pose_metrics(pred_rotation_t, pred_translation_t, gt_rotation, gt_translation, diagonal)
    metrics.update({"model_id": estimator.model_id, "n_points": estimator.n_points, "seed": seed})
    rotation_errors = rotation_error_deg(pred_rotation_t, gt_rotation).numpy()
    _, pred_back = invert_pose(pred_rotation_t, pred_translation_t)
    _, gt_back = invert_pose(gt_rotation, gt_translation)
    translation_errors = ((pred_back - gt_back).norm(dim=-1) / diagonal * 100).numpy()
    return Evaluation(metrics, rotation_errors, translation_errors)


def format_table(metrics: dict[str, Any]) -> str:
    """A plain two-column table of the headline metrics."""
    rows = [(label, _format_value(key, metrics[key])) for key, label in METRIC_LABELS.items()]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _format_value(key: str, value: float) -> str:
    if key.startswith("success"):
        return f"{value * 100:.2f} %"
    return f"{value:.4f}"


def write_report(evaluation: Evaluation, out_dir: str | Path, stem: str = "eval") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.png`` (:func:`report_figure`)."""
    out_dir = Path(out_dir)
    json_path = atomic_write_json(out_dir / f"{stem}.json", evaluation.metrics)
    png_path = atomic_write_bytes(out_dir / f"{stem}.png", figure_png(report_figure(evaluation), dpi=110))
    return json_path, png_path


def report_figure(evaluation: Evaluation):
    """Histograms of the rotation errors (with the 1° and 5° success thresholds) and of the
    translation errors, log axes, each with its median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = evaluation.metrics
    panels = [("rotation error (deg)", evaluation.rotation_errors_deg, metrics["rotation_median_deg"], "deg")]
    if evaluation.translation_errors_pct is not None:
        panels.append(
            (
                "translation error (% of diagonal)",
                evaluation.translation_errors_pct,
                metrics["translation_median_pct"],
                "%",
            )
        )
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for axis, (label, values, median, unit) in zip(axes[0], panels, strict=True):
        values = np.maximum(np.asarray(values, dtype=np.float64), 1e-6)
        finite = values[np.isfinite(values)]
        if not finite.size:  # every answer failed
            finite = np.array([1e-6])
        low, high = float(finite.min()), float(finite.max())
        title = f"median {median:.4g} {unit}"
        if unit == "deg":
            high = max(high, 10.0)  # the 1° and 5° lines stay in view
        top = max(high, low * 1.01)
        bins = np.logspace(np.log10(low), np.log10(top), 60)
        bins[0], bins[-1] = low, top  # 10 ** log10(x) can round below x and drop the extremes
        axis.hist(finite, bins=bins, color="#3b6ea5")
        axis.set_xscale("log")
        axis.axvline(median, color="black", linewidth=0.8, label="median")
        if unit == "deg":
            for threshold, style in ((1.0, "--"), (5.0, ":")):
                axis.axvline(
                    threshold, color="#c0392b", linestyle=style, linewidth=1.0, label=f"{threshold:g}°"
                )
            title += (
                f"; under 1°: {np.mean(evaluation.rotation_errors_deg < 1.0):.1%}, "
                f"under 5°: {np.mean(evaluation.rotation_errors_deg < 5.0):.1%}"
            )
        axis.legend(fontsize=8, loc="best")
        axis.set_xlabel(label)
        axis.set_ylabel("clouds")
        axis.set_title(title, fontsize=9)
    figure.suptitle(
        f"{metrics['model_id']}: {len(evaluation.rotation_errors_deg)} held-out poses", fontsize=10
    )
    figure.tight_layout()
    return figure
