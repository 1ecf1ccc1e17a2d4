"""Magnitude pruning of a trained pose model (exam 7.4): sparsity -> accuracy -> storage.

Each sparsity level starts from the trained checkpoint, removes the smallest weights (global or
per layer), optionally fine-tunes with the masks held, then is exported to ONNX and scored
through the service's code path, exactly like an unpruned model. The ONNX graph stays dense
(onnxruntime's CPU kernels multiply dense matrices), so the service serves it unchanged; the
storage columns say what CSR storage of the surviving weights would cost.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.exam.sparsity import hold_masks, prune_magnitude, sparsity_of, storage_report
from pipeline.data.mesh import load_mesh
from pipeline.data.synth import generator_for
from pipeline.evaluation.evaluate import evaluate_model
from pipeline.files import atomic_write_json
from pipeline.training.config import TrainConfig
from pipeline.training.export import export_model
from pipeline.training.train import (
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    train_step,
    training_data,
    warmup_cosine,
)


@dataclass
class PruneRow:
    target_sparsity: float
    sparsity: float
    rotation_median_deg: float
    rotation_p99_deg: float
    translation_median_pct: float
    dense_bytes: int
    csr_bytes: int
    onnx_bytes: int
    model_path: str


def finetune(model: torch.nn.Module, masks: dict, cfg: TrainConfig, data, steps: int, seed: int) -> None:
    """A short run of the training loss with the pruning masks held after every step."""
    mesh_diagonal = float(model.scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr * 0.3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    handle = hold_masks(optimizer, model, masks)
    generator = generator_for(seed, "cpu")
    model.train()
    try:
        for _ in range(steps):
            _, losses = train_step(model, data.batch(generator), cfg, mesh_diagonal)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            schedule.step()
    finally:
        handle.remove()
    model.eval()


def prune_model(
    checkpoint: str | Path,
    sparsities: list[float],
    out_dir: str | Path,
    *,
    scope: str = "global",
    finetune_steps: int = 300,
    eval_count: int = 2000,
    seed: int = 0,
) -> list[PruneRow]:
    """Prune, fine-tune, export and evaluate one model per sparsity level.

    Writes ``<out_dir>/s<percent>/model.onnx`` (with sidecar) per level and ``prune.json``.
    """
    out_dir = Path(out_dir)
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(state["config"])
    rows = []
    data = None
    for target in sparsities:
        model = model_from_checkpoint(state)
        masks = prune_magnitude(model, target, scope=scope)
        if finetune_steps > 0:
            if data is None:
                data = training_data(
                    cfg, load_mesh(cfg.mesh or None), torch.device("cpu"), Path(checkpoint).parent
                )
            finetune(model, masks, cfg, data, finetune_steps, seed)
        level_dir = out_dir / f"s{round(target * 100):02d}"
        pruned_state = copy.copy(state)
        pruned_state["model"] = model.state_dict()
        pruned_state["stopped_because"] = (
            f"pruned to {target:.0%} ({scope}), fine-tuned {finetune_steps} steps"
        )
        save_checkpoint(level_dir / "checkpoint.pt", pruned_state)
        exported = export_model(level_dir / "checkpoint.pt", level_dir)
        evaluation = evaluate_model(exported.model_path, count=eval_count, seed=seed)
        storage = storage_report(model)
        rows.append(
            PruneRow(
                target_sparsity=target,
                sparsity=sparsity_of(model),
                rotation_median_deg=evaluation.metrics["rotation_median_deg"],
                rotation_p99_deg=evaluation.metrics["rotation_p99_deg"],
                translation_median_pct=evaluation.metrics["translation_median_pct"],
                dense_bytes=sum(row.dense_bytes for row in storage),
                csr_bytes=sum(row.csr_bytes for row in storage),
                onnx_bytes=exported.model_path.stat().st_size,
                model_path=str(exported.model_path),
            )
        )
    atomic_write_json(out_dir / "prune.json", [asdict(row) for row in rows])
    return rows


def format_prune_table(rows: list[PruneRow]) -> str:
    header = (
        "| sparsity | rot. median (deg) | rot. p99 (deg) | trans. median (% diag) | dense bytes | CSR bytes |"
    )
    lines = [header, "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row.sparsity:.1%} | {row.rotation_median_deg:.4f} | {row.rotation_p99_deg:.4f} | "
            f"{row.translation_median_pct:.4f} | {row.dense_bytes:,} | {row.csr_bytes:,} |"
        )
    return "\n".join(lines)
