"""Latency of cloudpose: onnxruntime alone, the server's stages, and HTTP round trips.

Runs ``cloudpose serve`` (uvicorn; uvloop and httptools when installed) on a free loopback port,
sends pre-serialized bodies of a posed cloud (a template copy for an exam-setting model; for an
order-free one, ``--points`` points of the object chosen by ``--cloud``) through one keep-alive
``httpx.Client``, and prints p50/p90/p99 tables. The server is stopped at the end, also on errors and Ctrl-C.

Order-free clouds (``--cloud``):

* ``fresh`` (default): a new uniform sample of the mesh's surface, as a sensor would see all of it;
* ``noisy``: the same with Gaussian noise of 1% of the diagonal and 5% uniform outliers (the
  benchmark's noisy set);
* ``surface``: points of the model's own surface sample (refinement then converges exactly).

The pose error is reported on the clean points: ``max |clean @ rotation + translation - canonical|``.

Usage::

    .venv/bin/python benchmarks/latency.py [--model data/objects/bunny/model.onnx]
        [--points 2048] [--cloud fresh|noisy|surface] [--requests 1000] [--json-out latency.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cloudpose.estimation.inference import PoseEstimator  # noqa: E402
from cloudpose.geometry.rotations import random_rotations  # noqa: E402
from cloudpose.io.clouds import as_cloud, read_cloud_file  # noqa: E402
from cloudpose.settings import Settings  # noqa: E402

DEFAULT_MODEL = Path("data/objects/bunny/model.onnx")
READY_TIMEOUT_S = 60.0


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max in milliseconds."""
    ms = np.asarray(samples_s) * 1000.0
    return {
        "count": int(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


def measure(call: Callable[[], Any], count: int, warmup: int, max_seconds: float) -> dict[str, float]:
    """Time ``call`` ``count`` times after ``warmup`` calls, stopping early after ``max_seconds``."""
    for _ in range(warmup):
        call()
    samples = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
        if started > deadline:
            break
    return percentiles(samples)


def posed_cloud(template: np.ndarray, seed: int = 0) -> np.ndarray:
    """``template @ R + t`` for a uniform random rotation and a translation of about the object's size."""
    rng = np.random.default_rng(seed)
    # The transpose of a uniform rotation is as uniform; taking it keeps the clouds of earlier runs.
    rotation = random_rotations(rng).T
    extent = float(np.ptp(template, axis=0).max())
    return template.astype(np.float64) @ rotation + rng.uniform(-0.5, 0.5, size=3) * extent


CLOUD_KINDS = ("fresh", "noisy", "surface")
NOISE_SIGMA = 0.01  # of the diagonal
OUTLIER_FRACTION = 0.05


def object_cloud(estimator: PoseEstimator, model: Path, kind: str, count: int) -> np.ndarray:
    """``count`` canonical points of an order-free model's object, shuffled (see ``--cloud``)."""
    rng = np.random.default_rng(1)
    if kind == "surface":
        surface = np.load(model.parent / estimator.metadata["surface"]["file"])[:, :3].astype(np.float64)
        return surface[rng.choice(len(surface), count, replace=False)]
    from pipeline.data.mesh import load_mesh, sample_surface

    mesh = load_mesh(REPO_ROOT / "data" / estimator.metadata["mesh"]["name"])
    return sample_surface(mesh, count, rng).astype(np.float64)


def with_noise(points: np.ndarray, estimator: PoseEstimator, seed: int) -> np.ndarray:
    """Gaussian noise (1% of the diagonal) on 95% of the points; the rest uniform outliers."""
    rng = np.random.default_rng(seed)
    diagonal = float(estimator.metadata["mesh"]["diagonal"])
    noisy = points + rng.normal(0.0, NOISE_SIGMA * diagonal, points.shape)
    outliers = rng.choice(len(points), round(OUTLIER_FRACTION * len(points)), replace=False)
    low, high = points.min(axis=0), points.max(axis=0)
    noisy[outliers] = rng.uniform(low - 0.1 * (high - low), high + 0.1 * (high - low), (len(outliers), 3))
    return noisy


def npy_bytes(points: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, points)
    return buffer.getvalue()


def multipart_body(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A pre-built multipart/form-data body with one file, and its content type."""
    boundary = "cloudposebenchmarkboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, log_path: Path) -> subprocess.Popen:
    """``cloudpose serve`` as users run it; returns once ``GET /health`` answers."""
    import httpx

    command = [sys.executable, "-m", "pipeline.cli", "serve", "--port", str(port), "--model", str(model)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.1)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def check_pose(answer: dict[str, Any], points: np.ndarray, template: np.ndarray) -> float:
    """Largest |points @ rotation + translation - template| (``points``: the posed template)."""
    recovered = points @ np.asarray(answer["rotation"]) + np.asarray(answer["translation"])
    return float(np.abs(recovered - template).max())


def in_process(
    estimator: PoseEstimator, points: np.ndarray, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """onnxruntime alone, then each stage the server runs for a JSON request."""
    settings = Settings()
    body = orjson.dumps({"points": points.tolist()})
    payload_points = orjson.loads(body)["points"]
    cloud = as_cloud(payload_points, settings.max_points)
    (pose,) = estimator.estimate([cloud])
    answer = {**pose.to_dict(), "model_id": estimator.model_id, "n_points": len(cloud), "server_time_ms": 0.0}
    npy = npy_bytes(points)
    count, warmup, limit = args.estimate_calls, args.warmup, args.max_seconds
    return {
        "estimate (network, and refinement for order-free models)": measure(
            lambda: estimator.estimate([cloud]), count, warmup, limit
        ),
        "stage: orjson.loads(body)": measure(lambda: orjson.loads(body), count, warmup, limit),
        "stage: as_cloud(list) -> ndarray": measure(
            lambda: as_cloud(payload_points, settings.max_points), count, warmup, limit
        ),
        "stage: read_cloud_file(.npy)": measure(
            lambda: read_cloud_file("cloud.npy", npy, settings.max_points), count, warmup, limit
        ),
        "stage: to_dict + orjson.dumps": measure(
            lambda: orjson.dumps({**pose.to_dict(), **answer}), count, warmup, limit
        ),
    }


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on a plain socket, to tell the client library's cost apart."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += self._recv()
        header, rest = buffer.split(b"\r\n\r\n", 1)
        lines = header.decode("latin-1").split("\r\n")
        fields = dict(line.split(":", 1) for line in lines[1:])
        length = int(next(value for key, value in fields.items() if key.lower() == "content-length"))
        while len(rest) < length:
            rest += self._recv()
        return int(lines[0].split()[1]), rest

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def over_http(
    model: Path, points: np.ndarray, clean: np.ndarray, template: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """Round trips against a real server over one keep-alive connection."""
    import httpx

    port = free_port()
    json_body = orjson.dumps({"points": points.tolist()})
    npy_body, npy_type = multipart_body("file", "cloud.npy", npy_bytes(points))
    with tempfile.TemporaryDirectory() as folder:
        process = start_server(model, port, Path(folder) / "server.log")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
                requests = {
                    "GET /health": lambda: client.get("/health"),
                    "POST /v1/pose JSON": lambda: client.post(
                        "/v1/pose", content=json_body, headers={"content-type": "application/json"}
                    ),
                    "POST /v1/pose multipart .npy": lambda: client.post(
                        "/v1/pose", content=npy_body, headers={"content-type": npy_type}
                    ),
                }
                errors, server_ms = {}, {}
                for name, call in requests.items():
                    response = call()
                    response.raise_for_status()
                    if name != "GET /health":
                        errors[name] = check_pose(response.json(), clean, template)
                rows = {}
                for name, call in requests.items():
                    responses: list[httpx.Response] = []

                    def timed(call=call, responses=responses) -> None:
                        responses.append(call())

                    rows[name] = measure(timed, args.requests, args.http_warmup, args.max_seconds)
                    failed = [response for response in responses if response.status_code != 200]
                    if failed:
                        raise RuntimeError(
                            f"{name}: {len(failed)} failed, e.g. {failed[0].status_code} {failed[0].text}"
                        )
                    if name != "GET /health":  # read after timing, so client-side parsing is not counted
                        timed_responses = responses[args.http_warmup :]
                        server_times = [
                            orjson.loads(r.content)["server_time_ms"] / 1000.0 for r in timed_responses
                        ]
                        server_ms[name] = percentiles(server_times)
            raw = RawClient(port)
            try:
                raw_requests = {
                    "GET /health": lambda: raw.request("GET", "/health"),
                    "POST /v1/pose JSON": lambda: raw.request(
                        "POST", "/v1/pose", json_body, "application/json"
                    ),
                    "POST /v1/pose multipart .npy": lambda: raw.request(
                        "POST", "/v1/pose", npy_body, npy_type
                    ),
                }
                raw_rows = {}
                for name, call in raw_requests.items():
                    statuses: list[int] = []
                    raw_rows[name] = measure(
                        lambda call=call, statuses=statuses: statuses.append(call()[0]),
                        args.requests,
                        args.http_warmup,
                        args.max_seconds,
                    )
                    if set(statuses) != {200}:
                        raise RuntimeError(f"raw {name}: statuses {sorted(set(statuses))}")
            finally:
                raw.close()
        finally:
            stop_server(process)
    return {
        "round_trip": rows,
        "round_trip_raw_socket": raw_rows,
        "server_time": server_ms,
        "max_abs_error": errors,
    }


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    width = max(len(name) for name in rows) + 2
    print(f"\n{title}")
    print(f"{'':{width}}{'count':>7}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'max ms':>10}")
    for name, row in rows.items():
        print(
            f"{name:{width}}{row['count']:>7}{row['p50_ms']:>10.3f}{row['p90_ms']:>10.3f}"
            f"{row['p99_ms']:>10.3f}{row['mean_ms']:>10.3f}{row['max_ms']:>10.3f}"
        )


def environment() -> dict[str, Any]:
    import onnxruntime

    def version(name: str) -> str:
        try:
            return __import__(name).__version__
        except ImportError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "uvicorn": version("uvicorn"),
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
        "httpx": version("httpx"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="exported model.onnx (sidecar beside it)"
    )
    parser.add_argument("--requests", type=int, default=1000, help="timed HTTP requests per route")
    parser.add_argument("--http-warmup", type=int, default=50, help="untimed HTTP requests per route first")
    parser.add_argument("--estimate-calls", type=int, default=2000, help="timed in-process calls per stage")
    parser.add_argument("--warmup", type=int, default=100, help="untimed in-process calls per stage first")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop a measurement after this long")
    parser.add_argument("--json-out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--points", type=int, default=2048, help="cloud size for an order-free model")
    parser.add_argument(
        "--cloud",
        choices=CLOUD_KINDS,
        default="fresh",
        help="which cloud of the object an order-free model gets",
    )
    args = parser.parse_args(argv)

    model = args.model if args.model.is_absolute() else REPO_ROOT / args.model
    estimator = PoseEstimator(model, threads=Settings().threads)
    if estimator.order_free:
        template = object_cloud(estimator, model, args.cloud, args.points)
    else:
        template = estimator.template.astype(np.float64)
    clean = posed_cloud(template)
    points = with_noise(clean, estimator, seed=2) if estimator.order_free and args.cloud == "noisy" else clean
    env = environment()
    kind = f"order-free, refined, {args.cloud} cloud" if estimator.order_free else "exam setting"
    print(f"cloudpose latency: model {estimator.model_id} ({kind}), cloud of {len(points)} points")
    print(", ".join(f"{key} {value}" for key, value in env.items()))

    local = in_process(estimator, points, args)
    print_table("in process (one cloud)", local)
    http = over_http(model, points, clean, template, args)
    print_table("HTTP round trip, keep-alive httpx.Client, loopback (one cloud)", http["round_trip"])
    print_table(
        "HTTP round trip, minimal keep-alive socket client (no client library)", http["round_trip_raw_socket"]
    )
    print_table("server_time_ms reported by the service (parse -> respond)", http["server_time"])
    for name, error in http["max_abs_error"].items():
        print(f"{name}: max |clean @ rotation + translation - canonical| = {error:.2e}")

    if args.json_out:
        result = {
            "model_id": estimator.model_id,
            "n_points": len(points),
            "cloud": args.cloud if estimator.order_free else "template",
            "environment": env,
            "in_process": local,
            **http,
        }
        args.json_out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
