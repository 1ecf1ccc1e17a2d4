"""Evaluation of an exported model through the service's own code path (onnxruntime).

Poses are drawn from a seeded held-out stream (disjoint from training and validation seeds);
each cloud goes through the same validation and inference as an HTTP request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import ConfigError
from pipeline.files import atomic_write_bytes, atomic_write_json, figure_png
from pipeline.metrics import pose_metrics
from pipeline.synth import HELD_OUT_OFFSET, held_out_batch
from service.clouds import as_cloud
from service.inference import PoseEstimator

METRIC_LABELS = {
    "rotation_median_deg": "rotation error, median (deg)",
    "rotation_p90_deg": "rotation error, 90th pct (deg)",
    "rotation_p99_deg": "rotation error, 99th pct (deg)",
    "translation_median_pct": "translation error, median (% of diagonal)",
    "success_1deg": "success rate < 1 deg",
    "success_5deg": "success rate < 5 deg",
}


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    rotation_errors_deg: np.ndarray


def evaluate_model(
    model_path: str | Path, count: int = 10_000, seed: int = 0, chunk: int = 500
) -> Evaluation:
    """Score an exported model on ``count`` held-out poses of its own template.

    Args:
        model_path: ``model.onnx`` with its sidecar.
        count: number of poses.
        seed: held-out stream seed (offset away from training seeds).
        chunk: clouds per onnxruntime call.
    """
    from models.geometry import rotation_error_deg

    estimator = PoseEstimator(model_path, threads=torch.get_num_threads())
    if estimator.order_free:
        raise ConfigError(f"{model_path} is an order-free model: score it with `cloudpose bench`")
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
    pred_rotation = torch.as_tensor(np.stack(rotations))
    pred_translation = torch.as_tensor(np.stack(translations))
    metrics = pose_metrics(pred_rotation, pred_translation, data.rotation, data.translation, diagonal)
    metrics.update({"model_id": estimator.model_id, "n_points": estimator.n_points, "seed": seed})
    errors = rotation_error_deg(pred_rotation, data.rotation).numpy()
    return Evaluation(metrics=metrics, rotation_errors_deg=errors)


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
    """Write ``<stem>.json`` and a histogram ``<stem>.png`` of rotation errors."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    json_path = atomic_write_json(out_dir / f"{stem}.json", evaluation.metrics)
    errors = np.maximum(evaluation.rotation_errors_deg, 1e-6)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(np.log10(errors), bins=60, color="#3b6ea5")
    axis.set_xlabel("log10 rotation error (deg)")
    axis.set_ylabel("clouds")
    axis.set_title(
        f"{evaluation.metrics['model_id']}: median {evaluation.metrics['rotation_median_deg']:.4f} deg, "
        f"n = {len(errors)}",
        fontsize=9,
    )
    png_path = atomic_write_bytes(out_dir / f"{stem}.png", figure_png(figure, dpi=110))
    return json_path, png_path
