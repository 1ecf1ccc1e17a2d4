"""Training configuration: dataclass defaults are the truth, a YAML file overrides them, and
explicit command-line flags override the file. Validation collects every problem and raises once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """One or more invalid configuration values; the message lists them all."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Stored in checkpoints and export sidecars.

    Attributes:
        mesh: object mesh (PLY/OBJ/STL/OFF); the bundled bunny when empty.
        n_points: N, points per cloud (the exam uses 100; the default model 1024).
        template_seed: seed of the surface sample that forms the exam-setting template.
        model_kind: pose regressor kind (``flat_fc``: the exam's flattened fully connected net).
        hidden: hidden layer widths; empty means one linear layer.
        activation: ``relu``, ``elu`` or ``none`` between hidden layers.
        widths / head: order-free (``pointnet``) per-point MLP widths and pose-head widths.
        points_min / points_max: order-free training clouds have N log-uniform in this range
            (per step); the service resamples larger clouds to ``input_points`` first.
        input_points: points the order-free network sees at inference.
        partial_fraction: share of order-free training clouds that are single partial views.
        noise_max / outlier_max: per-cloud noise sigma (diagonals) and outlier share ranges.
        view_bank_size: partial views rendered on the CPU before training.
        translation_range: translations are uniform in ±range × bounding-box diagonal per axis.
        batch_size: clouds per step, synthesized on the training device.
        lr: peak learning rate (Adam; linear warm-up, then cosine decay over ``steps``).
        steps: step budget; the schedule spans it.
        time_budget_s: wall-clock budget; training stops when it runs out.
        schedule_by: ``steps`` (the LR schedule spans ``steps``; reproducible) or ``time`` (it
            spans ``time_budget_s``, so a budgeted run ends with a decayed rate wherever the
            budget ends; ``steps`` is then a cap).
        symmetry_file: ``.npy`` of (K, 3, 3) rotations under which the object looks (nearly) the
            same; the rotation loss is to the nearest equivalent pose (empty: none).
        lambda_orth: weight of the orthogonality penalty ||R^T R - I||^2 (exam 8.4).
        translation_weight: weight of the translation MSE (in diagonal units).
        l1_lambda: weight of an L1 penalty on the weights (0 disables it).
        grad_clip: max gradient norm (0 disables clipping).
        val_size: held-out poses scored at every validation.
        val_every: steps between validations.
        target_median_deg / target_p99_deg / target_translation_pct: stop early once the
            validation set is at or under all three.
        seed: seed of the pose stream (training batches and validation set).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        out_dir: where checkpoints and metrics go.
    """

    mesh: str = ""
    n_points: int = 1024
    template_seed: int = 0
    model_kind: str = "flat_fc"
    hidden: list[int] = field(default_factory=list)
    activation: str = "none"
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    head: list[int] = field(default_factory=lambda: [256, 128])
    points_min: int = 128
    points_max: int = 512
    input_points: int = 512
    partial_fraction: float = 0.5
    noise_max: float = 0.015
    outlier_max: float = 0.08
    view_bank_size: int = 1000
    translation_range: float = 0.5
    batch_size: int = 256
    lr: float = 3e-3
    steps: int = 1000
    time_budget_s: float = 300.0
    schedule_by: str = "steps"
    symmetry_file: str = ""
    lambda_orth: float = 0.1
    translation_weight: float = 1.0
    l1_lambda: float = 0.0
    grad_clip: float = 0.0
    val_size: int = 2000
    val_every: int = 100
    target_median_deg: float = 0.01
    target_p99_deg: float = 0.1
    target_translation_pct: float = 0.02
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/default"

    def validate(self) -> TrainConfig:
        """Check every field; raise one ConfigError naming all problems."""
        problems = []
        positive_ints = (
            "n_points",
            "batch_size",
            "steps",
            "val_size",
            "val_every",
            "points_min",
            "points_max",
            "input_points",
            "view_bank_size",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        non_negative = (
            "lambda_orth",
            "translation_weight",
            "l1_lambda",
            "grad_clip",
            "translation_range",
            "noise_max",
            "outlier_max",
            "partial_fraction",
        )
        for name in non_negative:
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                problems.append(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        positive = ("lr", "time_budget_s", "target_median_deg", "target_p99_deg", "target_translation_pct")
        for name in positive:
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                problems.append(f"{name} must be a number > 0, got {getattr(self, name)!r}")
        if self.model_kind not in ("flat_fc", "pointnet"):
            problems.append(f"model_kind must be 'flat_fc' or 'pointnet', got {self.model_kind!r}")
        if _is_number(self.partial_fraction) and self.partial_fraction > 1:
            problems.append(f"partial_fraction must be at most 1, got {self.partial_fraction!r}")
        if (
            isinstance(self.points_min, int)
            and isinstance(self.points_max, int)
            and self.points_min > self.points_max
        ):
            problems.append(f"points_min ({self.points_min}) must not exceed points_max ({self.points_max})")
        if self.activation not in ("relu", "elu", "none"):
            problems.append(f"activation must be one of relu, elu, none, got {self.activation!r}")
        for name in ("hidden", "widths", "head"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(
                isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value
            ):
                problems.append(f"{name} must be a list of positive integers, got {value!r}")
        if not self.widths:
            problems.append("widths must name at least one layer")
        if self.schedule_by not in ("steps", "time"):
            problems.append(f"schedule_by must be steps or time, got {self.schedule_by!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.symmetry_file and not Path(self.symmetry_file).is_file():
            problems.append(f"symmetry file not found: {self.symmetry_file}")
        if self.mesh and not Path(self.mesh).is_file():
            problems.append(f"mesh file not found: {self.mesh}")
        if problems:
            raise ConfigError("invalid config: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"invalid config: unknown keys {', '.join(unknown)}")
        return cls(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file (if any), then explicit overrides (None values are skipped)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as error:
            raise ConfigError(f"config file not found: {path}") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        values.update(loaded)
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return TrainConfig.from_dict(values).validate()
