"""Shared fixtures: one small model trained and exported for real, reused by the whole session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

SMALL_N = 64


@dataclass
class ExportedModel:
    """A model trained with the real pipeline and exported to ONNX.

    Attributes:
        run_dir: training run folder (checkpoint.pt, metrics.csv, summary.json).
        model_path: exported model.onnx (model.json and template.npy beside it).
        n_points: N of its template.
    """

    run_dir: Path
    model_path: Path
    n_points: int


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """Train the exam-setting linear model on N = 64 points until it is exact, then export it."""
    from pipeline.config import load_config
    from pipeline.export import export_model
    from pipeline.train import train

    root = tmp_path_factory.mktemp("model")
    cfg = load_config(
        None,
        {"n_points": SMALL_N, "steps": 600, "val_every": 100, "val_size": 500, "out_dir": str(root / "run")},
    )
    result = train(cfg)
    assert result.reached_target, result.validation
    exported = export_model(result.checkpoint, root / "export")
    return ExportedModel(run_dir=root / "run", model_path=exported.model_path, n_points=SMALL_N)
