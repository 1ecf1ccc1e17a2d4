"""``cloudpose predict`` from outside the repository: the shipped store, ``--no-refine``, the aligned
cloud (``--out``) and the picture of the fit (``--render``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from plyfile import PlyData

from pipeline.cli.fit_files import MODEL_COLOUR, OBSERVED_COLOUR, VIEW_PIXELS, VIEWS
from tests.service.test_uvicorn import cloudpose_command

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = REPO_ROOT / "data" / "objects" / "bunny" / "example.json"


def predict(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cloudpose_command(), "predict", *arguments], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def example_cloud(tmp_path: Path) -> tuple[Path, dict]:
    example = json.loads(EXAMPLE.read_text())
    path = tmp_path / "cloud.npy"
    np.save(path, np.asarray(example["points"], dtype=np.float64))
    return path, example


def test_predict_from_anywhere_writes_the_aligned_cloud_and_the_picture(tmp_path: Path) -> None:
    cloud, example = example_cloud(tmp_path)
    result = predict([str(cloud), "--out", "aligned.ply", "--render", "fit.png"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["object"] == "bunny" and answer["found"] and answer["refined"]

    # The cloud in the mesh file's frame is where the example's true pose puts it.
    points = np.asarray(example["points"])
    expected = points @ np.asarray(example["true_rotation"]) + np.asarray(example["true_translation"])
    vertex = PlyData.read(str(tmp_path / "aligned.ply"))["vertex"]
    aligned = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)
    diagonal = np.linalg.norm(points.max(axis=0) - points.min(axis=0))
    assert aligned.shape == points.shape
    assert np.abs(aligned - expected).max() < 2e-3 * diagonal
    assert "wrote aligned.ply (2048 points in the object's frame)" in result.stderr
    assert not list(tmp_path.glob(".aligned.ply.*"))  # written through a temporary file and a rename

    picture = np.asarray(Image.open(tmp_path / "fit.png").convert("RGB")).astype(int)
    assert picture.shape[1] == VIEW_PIXELS * len(VIEWS)
    boxes = {}
    for colour in (OBSERVED_COLOUR, MODEL_COLOUR):
        # The dots are drawn half transparent over white: that blend, in every view.
        blend = np.array(colour[:3]) * colour[3] / 255 + 255 * (1 - colour[3] / 255)
        near = np.abs(picture - blend).sum(axis=2) < 30
        for view in range(len(VIEWS)):
            rows, columns = np.nonzero(near[:, view * VIEW_PIXELS : (view + 1) * VIEW_PIXELS])
            assert len(rows) > 200, (colour, view)
            boxes[colour, view] = np.array([rows.min(), rows.max(), columns.min(), columns.max()])
    for view in range(len(VIEWS)):  # the model at the found pose covers the cloud
        assert np.abs(boxes[OBSERVED_COLOUR, view] - boxes[MODEL_COLOUR, view]).max() < 0.05 * VIEW_PIXELS


def test_predict_without_refinement(tmp_path: Path) -> None:
    cloud, _ = example_cloud(tmp_path)
    result = predict([str(cloud), "--no-refine"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["refined"] is False


def test_predict_refuses_other_file_kinds_in_one_line(tmp_path: Path) -> None:
    cloud, _ = example_cloud(tmp_path)
    result = predict([str(cloud), "--out", "aligned.xyz"], cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "error: --out writes a .ply file, got 'aligned.xyz'"
    result = predict([str(cloud), "--render", "fit.jpg"], cwd=tmp_path)
    assert (
        result.returncode == 1
        and result.stderr.strip() == "error: --render writes a .png file, got 'fit.jpg'"
    )
