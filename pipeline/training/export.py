"""ONNX export: the model file, its sidecar JSON and template, checked and parity-tested.

An export folder holds ``model.onnx``, ``model.json`` (everything the service needs to know:
N, convention, units, template file and hash, training metrics and the checkpoint's hash,
versions, the ONNX file's hash) and ``template.npy``, plus ``example.xyz`` /
``example.json``: one posed cloud and its true pose, for trying the service by hand.
"""

from __future__ import annotations

import io
import json
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloudpose.registration.refine import sample_surface_with_normals
from cloudpose.store.package import MODEL_FORMAT
from models.geometry import invert_pose
from pipeline.data.mesh import load_mesh
from pipeline.data.synth import HELD_OUT_OFFSET, held_out_batch, make_template
from pipeline.files import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_bytes
from pipeline.training.config import ConfigError
from pipeline.training.train import model_from_checkpoint, read_checkpoint, template_of

OPSET = 17
PARITY_TOLERANCE = 1e-4
SURFACE_POINTS = 20_000
CONVENTION = (
    "Row vectors. The network outputs the object pose (rotation_raw, translation): "
    "observed = canonical @ R + t, with R = rotation_raw projected onto SO(3). "
    "The API returns the back transform: canonical = observed @ R.T + (-t @ R.T)."
)


@dataclass
class ExportResult:
    model_path: Path
    sidecar_path: Path
    parity_max_abs_diff: float
    sidecar: dict[str, Any]


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor, dynamic_points: bool = False) -> bytes:
    """Trace ``model`` on ``example`` (B, N, 3) into ONNX with a dynamic batch (and point) axis."""
    points_axes = {0: "batch", 1: "points"} if dynamic_points else {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, but it handles these
        # plain feed-forward graphs in a fraction of the time and on every supported torch.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=["points"],
            output_names=["rotation_raw", "translation"],
            dynamic_axes={"points": points_axes, "rotation_raw": {0: "batch"}, "translation": {0: "batch"}},
            opset_version=OPSET,
        )
    return buffer.getvalue()


def parity_check(model: torch.nn.Module, model_bytes: bytes, points: torch.Tensor) -> float:
    """Largest absolute difference between torch and onnxruntime outputs on ``points`` (B, N, 3)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    ort_rotation, ort_translation = session.run(None, {"points": points.numpy()})
    with torch.no_grad():
        torch_rotation, torch_translation = model(points)
    return float(
        max(
            np.abs(ort_rotation - torch_rotation.numpy()).max(),
            np.abs(ort_translation - torch_translation.numpy()).max(),
        )
    )


def export_model(checkpoint: str | Path, out_dir: str | Path) -> ExportResult:
    """Export a checkpoint to ``out_dir`` and verify it (onnx.checker, onnxruntime parity).

    Raises:
        RuntimeError: when the parity check exceeds :data:`PARITY_TOLERANCE`.
    """
    import onnx

    out_dir = Path(out_dir)
    state, checkpoint_sha = read_checkpoint(checkpoint)
    model = model_from_checkpoint(state)
    template = template_of(state)
    cfg = state["config"]
    diagonal = state["mesh"]["diagonal"]
    half_range = cfg["translation_range"] * diagonal
    arguments = state["model_arguments"]
    order_free = arguments["kind"] == "pointnet"
    mesh = load_mesh(cfg["mesh"] or None)
    if mesh.sha256 != state["mesh"]["sha256"]:
        raise ConfigError(f"mesh {mesh.name} differs from the one the checkpoint was trained on")
    if order_free:
        # Any order-free cloud works for tracing and parity: a fresh surface sample of N points.
        template = make_template(mesh, arguments["n_points"], seed=cfg["seed"] + HELD_OUT_OFFSET)

    example = held_out_batch(template, 4, half_range, seed=7).points
    model_bytes = onnx_bytes(model, example, dynamic_points=order_free)
    onnx.checker.check_model(onnx.load_from_string(model_bytes))
    parity_points = held_out_batch(template, 256, half_range, seed=cfg["seed"] + HELD_OUT_OFFSET + 1).points
    parity = parity_check(model, model_bytes, parity_points)
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"onnxruntime differs from torch by {parity:.2e} (> {PARITY_TOLERANCE})")

    template_bytes = _npy_bytes(template)
    surface_bytes = _npy_bytes(
        sample_surface_with_normals(mesh.vertices, mesh.faces, SURFACE_POINTS, np.random.default_rng(0))
    )
    sidecar = _sidecar(state, checkpoint_sha, model_bytes, template_bytes, surface_bytes, template, parity)
    model_path = atomic_write_bytes(out_dir / "model.onnx", model_bytes)
    if not order_free:
        atomic_write_bytes(out_dir / "template.npy", template_bytes)
    atomic_write_bytes(out_dir / "surface.npy", surface_bytes)
    sidecar_path = atomic_write_json(out_dir / "model.json", sidecar)
    if order_free:
        # A realistic request: a fresh, shuffled surface sample of another size than the template.
        template = make_template(mesh, 2048, seed=20261126)
    _write_example(out_dir, template, half_range, diagonal)
    return ExportResult(
        model_path=model_path, sidecar_path=sidecar_path, parity_max_abs_diff=parity, sidecar=sidecar
    )


def _sidecar(
    state: dict[str, Any],
    checkpoint_sha: str,
    model_bytes: bytes,
    template_bytes: bytes,
    surface_bytes: bytes,
    template: np.ndarray,
    parity: float,
) -> dict[str, Any]:
    """The ``model.json`` beside an exported model: what it takes and returns, the config that
    rebuilds it, where it came from and the versions that made it."""
    import onnx
    import onnxruntime

    cfg = state["config"]
    diagonal = state["mesh"]["diagonal"]
    arguments = state["model_arguments"]
    order_free = arguments["kind"] == "pointnet"
    model_sha = sha256_bytes(model_bytes)
    return {
        "format": MODEL_FORMAT,
        "model_id": "-".join(
            (Path(state["mesh"]["name"]).stem, arguments["kind"], f"n{arguments['n_points']}", model_sha[:8])
        ),
        "kind": arguments["kind"],
        "order_free": order_free,
        "n_points": arguments["n_points"],
        "input": {
            "name": "points",
            "shape": ["batch", "points" if order_free else arguments["n_points"], 3],
            "dtype": "float32",
        },
        "outputs": {
            "rotation_raw": {
                "shape": ["batch", 3, 3],
                "meaning": "object rotation before projection onto SO(3)",
            },
            "translation": {"shape": ["batch", 3], "meaning": "object translation"},
        },
        "convention": CONVENTION,
        "units": f"the mesh's own units; bounding-box diagonal {diagonal:.6f}",
        "mesh": state["mesh"],
        "template": None
        if order_free
        else {
            "file": "template.npy",
            "sha256": sha256_bytes(template_bytes),
            "seed": cfg["template_seed"],
            "n_points": int(template.shape[0]),
            "note": "exam setting: clouds must be this template's points, in this order, posed rigidly",
        },
        "surface": {
            "file": "surface.npy",
            "sha256": sha256_bytes(surface_bytes),
            "count": SURFACE_POINTS,
            "note": "surface points and outward normals of the canonical mesh, for refinement",
        },
        "model_arguments": arguments,
        "training": {
            "config": cfg,
            "steps": state["step"],
            "elapsed_s": round(state["elapsed_s"], 3),
            "stopped_because": state.get("stopped_because", ""),
            "device": state.get("device", ""),
            "validation": state["validation"],
            "checkpoint_sha256": checkpoint_sha,
        },
        "parity_max_abs_diff": parity,
        "onnx_sha256": model_sha,
        "opset": OPSET,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
    }


def _write_example(out_dir: Path, template: np.ndarray, half_range: float, diagonal: float) -> None:
    """One posed copy of the template with its true pose, to try the service by hand."""
    example = held_out_batch(template, 1, half_range, seed=20261126)
    inverse_rotation, inverse_translation = invert_pose(
        example.rotation.double(), example.translation.double()
    )
    lines = [" ".join(f"{value:.7g}" for value in point) for point in example.points[0].tolist()]
    atomic_write_text(out_dir / "example.xyz", "\n".join(lines) + "\n")
    atomic_write_text(
        out_dir / "example.json",
        json.dumps(
            {
                "points": example.points[0].tolist(),
                "true_rotation": inverse_rotation[0].tolist(),
                "true_translation": inverse_translation[0].tolist(),
                "note": "true_rotation / true_translation: template = points @ rotation + translation",
            }
        ),
    )
