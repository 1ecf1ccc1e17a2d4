import json

import numpy as np
import onnx
import onnxruntime
import torch

from pipeline.data.synth import held_out_batch
from pipeline.files import sha256_file
from pipeline.training.export import PARITY_TOLERANCE
from pipeline.training.train import load_checkpoint, model_from_checkpoint


def test_export_folder_and_sidecar(exported_model) -> None:
    folder = exported_model.model_path.parent
    assert {"model.onnx", "model.json", "template.npy", "example.xyz", "example.json"} <= {
        p.name for p in folder.iterdir()
    }
    sidecar = json.loads((folder / "model.json").read_text())
    assert sidecar["n_points"] == exported_model.n_points
    assert sidecar["onnx_sha256"] == sha256_file(exported_model.model_path)
    assert sidecar["template"]["sha256"] == sha256_file(folder / "template.npy")
    assert sidecar["kind"] == "flat_fc" and sidecar["order_free"] is False
    assert "observed = canonical @ R + t" in sidecar["convention"]
    assert sidecar["parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert {"torch", "onnx", "onnxruntime", "numpy"} <= set(sidecar["versions"])
    assert sidecar["training"]["validation"]["rotation_median_deg"] < 0.05


def test_onnx_checker_names_and_dynamic_batch(exported_model) -> None:
    graph = onnx.load(exported_model.model_path)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["points"]
    assert [o.name for o in graph.graph.output] == ["rotation_raw", "translation"]
    session = onnxruntime.InferenceSession(str(exported_model.model_path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        rotation, translation = session.run(
            None, {"points": np.zeros((batch, exported_model.n_points, 3), np.float32)}
        )
        assert rotation.shape == (batch, 3, 3) and translation.shape == (batch, 3)


def test_onnxruntime_matches_torch(exported_model) -> None:
    state = load_checkpoint(exported_model.run_dir / "checkpoint.pt")
    model = model_from_checkpoint(state)
    template = np.load(exported_model.model_path.parent / "template.npy")
    points = held_out_batch(template, 100, 5.0, seed=12345).points
    session = onnxruntime.InferenceSession(str(exported_model.model_path), providers=["CPUExecutionProvider"])
    ort_rotation, ort_translation = session.run(None, {"points": points.numpy()})
    with torch.no_grad():
        torch_rotation, torch_translation = model(points)
    assert np.abs(ort_rotation - torch_rotation.numpy()).max() <= PARITY_TOLERANCE
    assert np.abs(ort_translation - torch_translation.numpy()).max() <= PARITY_TOLERANCE


def test_example_files_hold_a_posed_cloud_and_its_answer(exported_model) -> None:
    folder = exported_model.model_path.parent
    example = json.loads((folder / "example.json").read_text())
    points = np.asarray(example["points"])
    np.testing.assert_allclose(points, np.loadtxt(folder / "example.xyz"), atol=1e-5)
    recovered = points @ np.asarray(example["true_rotation"]) + np.asarray(example["true_translation"])
    np.testing.assert_allclose(recovered, np.load(folder / "template.npy"), atol=1e-4)
