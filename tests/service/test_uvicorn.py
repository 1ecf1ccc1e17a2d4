"""End to end: a real uvicorn server in a subprocess, the ``cloudpose serve`` and ``predict`` commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
# Recovered clouds must match the template to this fraction of the mesh's bounding-box diagonal.
TOLERANCE = 1e-3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cloudpose_command() -> list[str]:
    """The installed console script, or the module when the script is not beside this interpreter."""
    script = Path(sys.executable).parent / "cloudpose"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


@contextmanager
def running_server(command: list[str], port: int, log_path: Path) -> Iterator[str]:
    """Start ``command``, wait until ``GET /health`` answers, yield the base URL; stop it afterwards."""
    base_url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def serving_store(store: Path, folder: Path) -> Iterator[str]:
    """``cloudpose serve --store STORE`` on a free loopback port (its log in ``folder``): the base URL."""
    port = free_port()
    command = [*cloudpose_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--store", str(store)]
    with running_server(command, port, folder / "server.log") as url:
        yield url


def posed_cloud(template: np.ndarray, diagonal: float, seed: int) -> np.ndarray:
    """``template @ R + t`` for a uniform random rotation R and a translation within half a diagonal."""
    rng = np.random.default_rng(seed)
    quaternion = rng.normal(size=4)
    x, y, z, w = quaternion / np.linalg.norm(quaternion)
    column = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    return template.astype(np.float64) @ column.T + rng.uniform(-0.5, 0.5, size=3) * diagonal


def assert_recovers(pose: dict, points: np.ndarray, template: np.ndarray, diagonal: float) -> None:
    rotation = np.asarray(pose["rotation"])
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-9)
    error = np.abs(points @ rotation + np.asarray(pose["translation"]) - template).max()
    assert error < TOLERANCE * diagonal, f"max |canonical - template| = {error:.3g}"


@pytest.fixture(scope="module")
def template(exported_model) -> np.ndarray:
    return np.load(exported_model.model_path.parent / "template.npy")


@pytest.fixture(scope="module")
def sidecar(exported_model) -> dict:
    return json.loads(exported_model.model_path.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def diagonal(sidecar: dict) -> float:
    return float(sidecar["mesh"]["diagonal"])


def check_server(base_url: str, template: np.ndarray, diagonal: float, sidecar: dict) -> None:
    """A good request, a bad one, and a good one again, over one keep-alive connection."""
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        assert client.get("/health").json() == {
            "status": "ok",
            "model_id": sidecar["model_id"],
            "objects": ["bunny"],
        }
        points = posed_cloud(template, diagonal, seed=1)
        response = client.post("/v1/pose", json={"points": points.tolist()})
        assert response.status_code == 200, response.text
        assert response.json()["model_id"] == sidecar["model_id"]
        assert_recovers(response.json(), points, template, diagonal)

        bad = client.post(
            "/v1/pose", content=b'{"points": [[1, 2', headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
        assert bad.json()["detail"].startswith("malformed JSON: ")
        short = client.post("/v1/pose", json={"points": points[:-1].tolist()})
        assert short.status_code == 422
        assert f"takes exactly {len(template)}" in short.json()["detail"]

        points = posed_cloud(template, diagonal, seed=2)
        response = client.post("/v1/pose", json={"points": points.tolist()})
        assert response.status_code == 200, response.text
        assert_recovers(response.json(), points, template, diagonal)


def test_uvicorn_server(exported_model, template, diagonal, sidecar, tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import uvicorn\n"
        "from service.app import create_app\n"
        "from cloudpose.settings import Settings\n"
        f"uvicorn.run(create_app(Settings(model_path={str(exported_model.model_path)!r})), "
        f"host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    with running_server([sys.executable, "-c", code], port, tmp_path / "server.log") as base_url:
        check_server(base_url, template, diagonal, sidecar)
        # Multipart over a real socket, too.
        points = posed_cloud(template, diagonal, seed=3)
        text = "\n".join(" ".join(f"{value:.10g}" for value in row) for row in points).encode()
        response = httpx.post(f"{base_url}/v1/pose", files={"file": ("cloud.xyz", text)}, timeout=10.0)
        assert response.status_code == 200, response.text
        assert_recovers(response.json(), points, template, diagonal)


def test_cli_serve(exported_model, template, diagonal, sidecar, tmp_path: Path) -> None:
    port = free_port()
    command = cloudpose_command() + ["serve", "--port", str(port), "--model", str(exported_model.model_path)]
    with running_server(command, port, tmp_path / "serve.log") as base_url:
        check_server(base_url, template, diagonal, sidecar)


def test_cli_serve_with_missing_model_fails_in_one_line(tmp_path: Path) -> None:
    command = cloudpose_command() + [
        "serve",
        "--port",
        str(free_port()),
        "--model",
        str(tmp_path / "none.onnx"),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: model file not found: {tmp_path / 'none.onnx'}"]


def write_xyz(path: Path, points: np.ndarray) -> Path:
    path.write_text("\n".join(" ".join(f"{value:.10g}" for value in row) for row in points) + "\n")
    return path


def run_predict(cloud: Path, model: Path) -> subprocess.CompletedProcess:
    command = cloudpose_command() + ["predict", str(cloud), "--model", str(model)]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)


def test_cli_predict(exported_model, template, diagonal, sidecar, tmp_path: Path) -> None:
    points = posed_cloud(template, diagonal, seed=4)
    result = run_predict(write_xyz(tmp_path / "posed.xyz", points), exported_model.model_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model_id"] == sidecar["model_id"]
    assert answer["n_points"] == len(template)
    assert_recovers(answer, points, template, diagonal)


def test_cli_predict_wrong_size_fails_in_one_line(exported_model, template, diagonal, tmp_path: Path) -> None:
    points = posed_cloud(template, diagonal, seed=5)[:-3]
    result = run_predict(write_xyz(tmp_path / "short.xyz", points), exported_model.model_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"error: short.xyz has {len(points)} points, but this exam-setting model takes exactly"
    )
