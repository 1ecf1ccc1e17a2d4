"""Training: synthesize posed clouds on the training device, regress the object pose, checkpoint.

``train(cfg)`` runs until the validation set reaches the target errors, the step budget or the
time budget, whichever comes first. The learning rate warms up and decays along ``steps``, or
(``schedule_by: time``) along whichever of the two budgets runs out first, so a time-budgeted
run ends with a decayed rate where its budget ends. A run's folder holds ``checkpoint.pt``
(model, optimizer, schedule, step, config, template), ``metrics.csv`` (one row per validation)
and ``summary.json``. Calling ``train`` again on the same folder resumes from the checkpoint,
with the same configuration only.

Under ``torchrun`` (see :mod:`pipeline.training.distributed`) every process trains a data-parallel copy
on its own batches of ``batch_size`` clouds (a step sees world size × ``batch_size``); rank 0
validates, decides when to stop and writes the run folder, and every rank resumes from it.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.geometry import nearest_equivalent, orthogonality_penalty, project_to_so3
from models.pose import build_pose_model
from pipeline.data.mesh import Mesh, load_mesh
from pipeline.data.synth import (
    VALIDATION_OFFSET,
    PoseBatch,
    SensorSampler,
    exam_batch,
    generator_for,
    held_out_batch,
    make_template,
)
from pipeline.files import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_bytes
from pipeline.training import distributed
from pipeline.training.accuracy import pose_metrics
from pipeline.training.config import ConfigError, TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
# The only fields a resumed run may change: they move the run, not what it computes.
RESUMABLE_CHANGES = ("device", "out_dir")


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when available; an explicit ``cuda`` without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def model_arguments(cfg: TrainConfig, mesh: Mesh) -> dict[str, Any]:
    """Keyword arguments of :func:`models.pose.build_pose_model`, stored with every checkpoint."""
    if cfg.model_kind == "pointnet":
        return {
            "kind": "pointnet",
            "n_points": cfg.input_points,
            "widths": list(cfg.widths),
            "head": list(cfg.head),
            "activation": cfg.activation,
            "scale": mesh.diagonal,
        }
    return {
        "kind": cfg.model_kind,
        "n_points": cfg.n_points,
        "hidden": list(cfg.hidden),
        "activation": cfg.activation,
        "scale": mesh.diagonal,
    }


class ExamData:
    """Posed copies of one template (the exam setting)."""

    def __init__(self, cfg: TrainConfig, mesh: Mesh, device: torch.device, out_dir: Path) -> None:
        self.cfg = cfg
        self.template = make_template(mesh, cfg.n_points, cfg.template_seed)
        self.half_range = cfg.translation_range * mesh.diagonal
        self.template_device = torch.as_tensor(self.template, device=device)
        validation = held_out_batch(
            self.template, cfg.val_size, self.half_range, cfg.seed + VALIDATION_OFFSET
        )
        self.validation = _to_device(validation, device)

    def batch(self, generator: torch.Generator) -> PoseBatch:
        return exam_batch(self.template_device, self.cfg.batch_size, self.half_range, generator)


class SensorData:
    """Sensor-like clouds (fresh samples, partial views, noise, outliers) for order-free models.

    The view bank is rendered once on the CPU and kept in the run folder, so a resumed run
    trains on the same views.
    """

    def __init__(self, cfg: TrainConfig, mesh: Mesh, device: torch.device, out_dir: Path) -> None:
        from pipeline.data.views import load_view_bank, make_view_bank, save_view_bank

        self.cfg = cfg
        self.template = np.zeros((0, 3), dtype=np.float32)
        bank_path = out_dir / "views.npz"
        if bank_path.exists():
            views = load_view_bank(bank_path)
        else:
            views = make_view_bank(
                mesh, cfg.view_bank_size, np.random.default_rng(cfg.seed + VALIDATION_OFFSET)
            )
            save_view_bank(bank_path, views, {"seed": cfg.seed + VALIDATION_OFFSET, "mesh": mesh.sha256})
        self.sampler = SensorSampler.build(mesh, views, device, seed=cfg.seed)
        self.options = {
            "translation_half_range": cfg.translation_range * mesh.diagonal,
            "partial_fraction": cfg.partial_fraction,
            "noise_max": cfg.noise_max,
            "outlier_max": cfg.outlier_max,
        }
        validation_generator = generator_for(cfg.seed + VALIDATION_OFFSET, device)
        self.validation = self.sampler.batch(
            cfg.val_size, cfg.input_points, validation_generator, **self.options
        )

    def batch(self, generator: torch.Generator) -> PoseBatch:
        # Log-uniform N per step: small clouds are as common as large ones in log terms.
        low, high = math.log(self.cfg.points_min), math.log(self.cfg.points_max)
        draw = torch.rand((), generator=generator, device=generator.device).item()
        n_points = int(round(math.exp(low + (high - low) * draw)))
        return self.sampler.batch(self.cfg.batch_size, n_points, generator, **self.options)


def training_data(cfg: TrainConfig, mesh: Mesh, device: torch.device, out_dir: Path) -> ExamData | SensorData:
    """The data source a model kind trains on: template copies, or sensor-like clouds."""
    kind = SensorData if cfg.model_kind == "pointnet" else ExamData
    return kind(cfg, mesh, device, out_dir)


def _to_device(batch: PoseBatch, device: torch.device) -> PoseBatch:
    return PoseBatch(batch.points.to(device), batch.rotation.to(device), batch.translation.to(device))


def train_step(
    model: torch.nn.Module,
    batch: PoseBatch,
    cfg: TrainConfig,
    scale: float,
    symmetries: torch.Tensor | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """One forward pass and its losses (no backward).

    Returns:
        ``((rotation_raw (B, 3, 3), translation (B, 3)), losses)``; ``losses["total"]`` is the
        objective, the others are its parts and the mean orthogonality error of raw outputs.
    """
    rotation_raw, translation = model(batch.points)
    # Order-free models learn through the SVD projection (Levinson et al. 2020); the exam's
    # linear model regresses the raw matrix, which it can match exactly.
    rotation = project_to_so3(rotation_raw) if cfg.model_kind == "pointnet" else rotation_raw
    target = batch.rotation
    if symmetries is not None:
        # A symmetric object's poses S @ R look alike: the loss is to the nearest of them.
        target = nearest_equivalent(rotation.detach(), batch.rotation, symmetries)
    rotation_mse = ((rotation - target) ** 2).mean()
    translation_mse = (((translation - batch.translation) / scale) ** 2).mean()
    orthogonality = orthogonality_penalty(rotation_raw).mean()
    total = rotation_mse + cfg.translation_weight * translation_mse + cfg.lambda_orth * orthogonality
    losses = {
        "rotation_mse": rotation_mse,
        "translation_mse": translation_mse,
        "orthogonality": orthogonality,
    }
    if cfg.l1_lambda > 0:
        l1 = sum(p.abs().sum() for name, p in model.named_parameters() if name.endswith("weight"))
        losses["l1"] = l1
        total = total + cfg.l1_lambda * l1
    losses["total"] = total
    return (rotation_raw, translation), losses


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    data: PoseBatch,
    diagonal: float,
    chunk: int = 4096,
    symmetries: torch.Tensor | None = None,
) -> dict[str, float]:
    """Pose metrics of the model on a fixed batch, with rotations projected onto SO(3) (to the
    nearest equivalent pose under ``symmetries`` (K, 3, 3) when given)."""
    model.eval()
    rotations, translations, raw_orthogonality = [], [], []
    for start in range(0, len(data.points), chunk):
        rotation_raw, translation = model(data.points[start : start + chunk])
        raw_orthogonality.append(orthogonality_penalty(rotation_raw))
        rotations.append(project_to_so3(rotation_raw))
        translations.append(translation)
    model.train()
    predicted = torch.cat(rotations)
    truth = data.rotation if symmetries is None else nearest_equivalent(predicted, data.rotation, symmetries)
    metrics = pose_metrics(
        predicted.cpu(),
        torch.cat(translations).cpu(),
        truth.cpu(),
        data.translation.cpu(),
        diagonal,
    )
    metrics["orthogonality_raw"] = float(torch.cat(raw_orthogonality).mean())
    return metrics


def warmup_cosine(
    total_steps: int, warmup_fraction: float = 0.05, floor: float = 1e-4
) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to ``floor`` at ``total_steps``.

    The decay matters: the exam-setting problem has an exact solution, and a constant Adam step
    would keep the weights circling it instead of settling.
    """
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.04 + 0.96 * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def warmup_cosine_at(fraction: float, warmup_fraction: float = 0.05, floor: float = 1e-4) -> float:
    """The same multiplier at a fraction of the budget (time-scheduled runs)."""
    fraction = min(1.0, max(0.0, fraction))
    if fraction < warmup_fraction:
        return 0.04 + 0.96 * fraction / warmup_fraction
    progress = (fraction - warmup_fraction) / (1.0 - warmup_fraction)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# The foundation's acceptance bar; runs report when validation first met it.
BAR = {"rotation_median_deg": 0.05, "rotation_p99_deg": 0.5, "translation_median_pct": 0.1}


def time_to_bar(history: list[dict[str, Any]]) -> dict[str, float] | None:
    """Step and seconds of the first validation at or under :data:`BAR`, or None."""
    for row in history:
        if all(row[key] <= limit for key, limit in BAR.items()):
            return {"step": row["step"], "elapsed_s": row["elapsed_s"]}
    return None


def reached_target(metrics: dict[str, float], cfg: TrainConfig) -> bool:
    return (
        metrics["rotation_median_deg"] <= cfg.target_median_deg
        and metrics["rotation_p99_deg"] <= cfg.target_p99_deg
        and metrics["translation_median_pct"] <= cfg.target_translation_pct
    )


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    checkpoint: Path
    device: str
    steps: int
    elapsed_s: float
    samples_per_s: float
    stopped_because: str
    reached_target: bool
    validation: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int = 0
    world_size: int = 1


ProgressCallback = Callable[[int, int, dict[str, float]], None]


def schedule_fraction(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    """How far a time-scheduled run is through its schedule: the larger of the shares of the
    step budget and of the time budget used, so the rate has decayed whichever ends first."""
    return max(step / cfg.steps, elapsed_s / cfg.time_budget_s)


def config_changes(previous: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``name previous -> now`` for each field that differs between a checkpoint's config and
    ``cfg``, but for :data:`RESUMABLE_CHANGES`."""
    # A field the checkpoint lacks is newer than it: the run had that field's default.
    defaults = TrainConfig().to_dict()
    before = {name: previous.get(name, default) for name, default in defaults.items()}
    return [
        f"{name} {before[name]!r} -> {value!r}"
        for name, value in cfg.to_dict().items()
        if name not in RESUMABLE_CHANGES and before[name] != value
    ]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`train`."""
    return read_checkpoint(path, map_location)[0]


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], str]:
    """A checkpoint and the sha256 of the very bytes it was read from (a running training may
    replace the file at any moment)."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError) as error:
        raise ConfigError(f"checkpoint not found: {path}") from error
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for a corrupt or foreign file
        raise ConfigError(f"not a cloudpose checkpoint: {path} ({error})") from error
    if not isinstance(state, dict) or "model_arguments" not in state or "config" not in state:
        raise ConfigError(f"not a cloudpose checkpoint: {path}")
    return state, sha256_bytes(data)


def model_from_checkpoint(state: dict[str, Any]) -> torch.nn.Module:
    arguments = dict(state["model_arguments"])
    model = build_pose_model(arguments.pop("kind"), arguments.pop("n_points"), **arguments)
    model.load_state_dict(state["model"])
    return model.eval()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a temporary file beside it, fsync, then a rename, so a
    process killed at any moment leaves the previous checkpoint or the new one, never a part."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def batch_seed(seed: int, step: int, rank: int = 0, world_size: int = 1) -> int:
    """Seed of the batch a rank draws at a step.

    The ranks of a step take consecutive batches of the run's stream, so no two ranks (and no
    two steps) ever draw the same batch, and a single process draws exactly the stream of
    ``seed * 1_000_003 + step``. Seeding by step makes a resumed run draw the same batches as an
    uninterrupted one.
    """
    return seed * 1_000_003 + step * world_size + rank


@dataclass
class _Run:
    """The state of a run that its steps share: what a checkpoint holds, and the clock."""

    cfg: TrainConfig
    ranks: distributed.Ranks
    device: torch.device
    mesh: Mesh
    arguments: dict[str, Any]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    elapsed_before: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    data: ExamData | SensorData | None = None

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.cfg.out_dir) / CHECKPOINT_NAME

    def elapsed(self) -> float:
        """Seconds trained, over every session of the run."""
        return self.elapsed_before + (time.perf_counter() - self.started)

    def snapshot(self, last_metrics: dict[str, float], reason: str) -> None:
        """Write the checkpoint and metrics (rank 0 alone)."""
        if not self.ranks.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
            "elapsed_s": self.elapsed(),
            "history": self.history,
            "config": self.cfg.to_dict(),
            "model_arguments": self.arguments,
            "template": self.data.template,
            "mesh": {"name": self.mesh.name, "sha256": self.mesh.sha256, "diagonal": self.mesh.diagonal},
            "validation": last_metrics,
            "stopped_because": reason,
            "device": describe_device(self.device),
            "world_size": self.ranks.world_size,
        }
        save_checkpoint(self.checkpoint_path, state)
        _write_metrics_csv(Path(self.cfg.out_dir) / "metrics.csv", self.history)


def _start_run(cfg: TrainConfig) -> _Run:
    """Join the group, read the mesh, build the seeded model, its optimizer and schedule."""
    ranks, device = distributed.setup(resolve_device(cfg.device))
    mesh = load_mesh(cfg.mesh or None)
    arguments = model_arguments(cfg, mesh)
    with torch.random.fork_rng(devices=[]):
        # Seeded initial weights without touching the caller's global RNG.
        torch.manual_seed(cfg.seed)
        model = build_pose_model(**arguments).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.steps))
    return _Run(cfg, ranks, device, mesh, arguments, model, optimizer, schedule)


def _resume(run: _Run, fresh: bool, log: Callable[[str], None] | None) -> None:
    """Load the run folder's checkpoint into ``run`` (unless ``fresh``), after checking that it was
    trained with the same configuration; every rank must find the same step."""
    cfg, checkpoint_path = run.cfg, run.checkpoint_path
    if run.ranks.is_main:
        for leftover in Path(cfg.out_dir).glob(f".{CHECKPOINT_NAME}.*.tmp"):  # a process killed mid-write
            leftover.unlink(missing_ok=True)
    if checkpoint_path.exists() and not fresh:
        state = load_checkpoint(checkpoint_path, map_location=run.device)
        changed = config_changes(state["config"], cfg)
        if changed:
            names = ", ".join(change.split(" ", 1)[0] for change in changed)
            raise ConfigError(
                f"{checkpoint_path} was trained with other {names} ({'; '.join(changed)}): resume with "
                "the same settings, or start over with --fresh (object add: --retrain) or another --out-dir"
            )
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.schedule.load_state_dict(state["schedule"])
        run.step, run.elapsed_before, run.history = state["step"], state["elapsed_s"], state["history"]
        if log is not None and run.ranks.is_main:
            log(_resume_line(run, state))
    if not run.ranks.all_equal(run.step):
        raise ConfigError(
            f"the ranks found different checkpoints in {cfg.out_dir}: every rank must see one folder"
        )


def _resume_line(run: _Run, state: dict[str, Any]) -> str:
    """What a resumed run says about the checkpoint it continues."""
    history = run.history
    median = (history[-1] if history else state.get("validation") or {}).get("rotation_median_deg")
    finished = state.get("stopped_because") or ""
    return (
        f"resuming {run.checkpoint_path} at step {run.step} of {run.cfg.steps} "
        f"({run.elapsed_before:.1f} s trained"
        + (f", validation median {median:.4g} deg" if median is not None else "")
        + (
            f"; it had stopped: {finished}, so there is nothing left to train (--fresh starts over)"
            if finished and finished != "interrupted"
            else ""
        )
        + ")"
    )


def _train_steps(
    run: _Run,
    trained: torch.nn.Module,
    symmetries: torch.Tensor | None,
    progress: ProgressCallback | None,
) -> tuple[str, dict[str, float]]:
    """Step until rank 0's clock or validation says stop.

    Returns:
        Why the run stopped, and the latest validation metrics (on rank 0; empty elsewhere).
    """
    cfg, ranks, mesh, optimizer = run.cfg, run.ranks, run.mesh, run.optimizer
    validation_set = run.data.validation
    generator = generator_for(cfg.seed, run.device)
    metrics: dict[str, float] = {}
    if ranks.is_main:
        metrics = (
            run.history[-1]
            if run.history
            else validate(run.model, validation_set, mesh.diagonal, symmetries=symmetries)
        )
    reason = "target reached" if (run.history and reached_target(run.history[-1], cfg)) else ""
    try:
        while True:
            elapsed = run.elapsed()
            if not reason and run.step >= cfg.steps:
                reason = "step budget"
            elif not reason and elapsed >= cfg.time_budget_s:
                reason = "time budget"
            # DDP needs every rank to take the same steps at the same learning rate: rank 0's
            # clock and validation decide for all.
            reason, elapsed = ranks.broadcast((reason, elapsed))
            if reason:
                return reason, metrics
            generator.manual_seed(batch_seed(cfg.seed, run.step, ranks.rank, ranks.world_size))
            batch = run.data.batch(generator)
            _, losses = train_step(trained, batch, cfg, mesh.diagonal, symmetries)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            if cfg.schedule_by == "time":
                # The schedule spans whichever budget runs out first (rank 0's clock, broadcast).
                fraction = schedule_fraction(run.step, elapsed, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * warmup_cosine_at(fraction)
            step_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            run.schedule.step()
            run.step += 1
            values = {name: float(value.detach()) for name, value in losses.items()}
            if ranks.is_main and (run.step % cfg.val_every == 0 or run.step == cfg.steps):
                metrics = validate(run.model, validation_set, mesh.diagonal, symmetries=symmetries)
                row = {
                    "step": run.step,
                    "elapsed_s": round(run.elapsed(), 3),
                    "lr": step_lr,
                    **values,
                    **metrics,
                }
                run.history.append(row)
                run.snapshot(metrics, "")
                if reached_target(metrics, cfg):
                    reason = "target reached"
            if progress is not None and ranks.is_main:
                shown = {
                    **values,
                    "val_median_deg": metrics["rotation_median_deg"],
                    "elapsed_s": run.elapsed(),
                }
                progress(run.step, cfg.steps, shown)
    except KeyboardInterrupt:
        run.snapshot(metrics, "interrupted")
        raise


def _write_summary(run: _Run, result: TrainResult) -> None:
    """The run folder's ``summary.json`` (rank 0 alone)."""
    if not run.ranks.is_main:
        return
    atomic_write_json(
        Path(run.cfg.out_dir) / "summary.json",
        {
            "device": result.device,
            "world_size": result.world_size,
            "global_batch_size": run.cfg.batch_size * result.world_size,
            "steps": result.steps,
            "resumed_from_step": result.resumed_from_step,
            "elapsed_s": round(result.elapsed_s, 3),
            "samples_per_s": round(result.samples_per_s, 1),
            "stopped_because": result.stopped_because,
            "reached_target": result.reached_target,
            "time_to_bar": time_to_bar(result.history),
            "validation": result.validation,
            "config": run.cfg.to_dict(),
        },
    )


def train(
    cfg: TrainConfig,
    progress: ProgressCallback | None = None,
    fresh: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a pose regressor as ``cfg`` says, resuming from ``cfg.out_dir`` unless ``fresh``.

    Under torchrun, every rank calls this with the same ``cfg``; see the module docstring.

    Args:
        cfg: validated configuration.
        progress: called after every step with ``(step, total_steps, latest_values)`` (on rank
            0); the values hold the losses, ``val_median_deg`` and ``elapsed_s``.
        fresh: ignore an existing checkpoint and start over.
        log: called (on rank 0) with a line when the run resumes from a checkpoint.

    Raises:
        ConfigError: the run folder's checkpoint was trained with another configuration (any
            field but :data:`RESUMABLE_CHANGES`: resuming with another budget or schedule would
            make a run that no single command reproduces).
    """
    cfg.validate()
    run = _start_run(cfg)
    ranks, device, mesh = run.ranks, run.device, run.mesh
    out_dir = Path(cfg.out_dir)
    _resume(run, fresh, log)
    resumed_from_step = run.step
    trained = run.model
    if ranks.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    with ranks.main_first():  # rank 0 renders and writes the order-free view bank, once
        run.data = training_data(cfg, mesh, device, out_dir)
    symmetries = None
    if cfg.symmetry_file:
        group = np.load(cfg.symmetry_file, allow_pickle=False).astype(np.float32).reshape(-1, 3, 3)
        symmetries = torch.as_tensor(group, device=device)
    run.started = time.perf_counter()
    reason, metrics = _train_steps(run, trained, symmetries, progress)
    elapsed_now = time.perf_counter() - run.started
    if ranks.is_main and (not run.history or run.history[-1]["step"] != run.step):
        metrics = validate(run.model, run.data.validation, mesh.diagonal, symmetries=symmetries)
    run.snapshot(metrics, reason)
    metrics, history = ranks.broadcast((metrics, run.history))
    steps_taken = run.step - resumed_from_step
    result = TrainResult(
        out_dir=out_dir,
        checkpoint=run.checkpoint_path,
        device=describe_device(device),
        steps=run.step,
        elapsed_s=run.elapsed_before + elapsed_now,
        samples_per_s=steps_taken * cfg.batch_size * ranks.world_size / max(elapsed_now, 1e-9),
        stopped_because=reason,
        reached_target=reached_target(metrics, cfg),
        validation=metrics,
        history=history,
        resumed_from_step=resumed_from_step,
        world_size=ranks.world_size,
    )
    _write_summary(run, result)
    ranks.barrier()  # the run folder is complete wherever train returns
    return result


def _write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def template_of(state: dict[str, Any]) -> np.ndarray:
    """The (N, 3) float32 template stored in a checkpoint."""
    return np.asarray(state["template"], dtype=np.float32)
