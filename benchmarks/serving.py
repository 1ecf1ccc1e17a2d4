"""What the serving benchmarks (load.py, isolation.py, slow_clients.py) share.

* ``cloudpose serve`` in a subprocess of its own process group, ready once ``GET /ready`` (or,
  on a service without it, ``GET /health``) answers 200, and stopped at the end, also on errors;
  it serves the shipped objects alone (``data/objects``: the bunny) unless told ``--store``,
  so the objects a user has added never change the figures;
* nginx with a copy of ``deploy/nginx.conf`` whose upstream is local replicas;
* posed bunny clouds: fresh samples of the surface of ``data/objects/bunny/mesh.ply`` (its
  file frame and units), posed as ``observed = canonical @ rotation + translation`` (row
  vectors) with rotations uniform on SO(3), and the JSON and ``.npy`` multipart bodies that
  carry them;
* the resident memory, CPU time and open files of a process tree (from ``/proc``), and tables.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"
READY_TIMEOUT_S = 120.0
MULTIPART_BOUNDARY = "cloudposebenchmarkboundary"


# Processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cloudpose_command() -> list[str]:
    """The installed console script, or the module when the script is not beside this interpreter."""
    script = Path(sys.executable).parent / "cloudpose"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


@cache
def serve_help() -> str:
    """``cloudpose serve --help``, to tell which options this version of the service has."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    result = subprocess.run(
        [*cloudpose_command(), "serve", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, env=env
    )
    return result.stdout


@dataclass
class Server:
    """A process (and its children) started by a benchmark, and where it answers.

    Attributes:
        process: the process, leader of its own process group.
        url: its base URL.
        log_path: its stdout and stderr.
        command: how it was started.
        note: how it was started when that differs from what was asked, else "".
    """

    process: subprocess.Popen
    url: str
    log_path: Path
    command: list[str]
    note: str = ""
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL to the whole process group: uvicorn's workers die with their supervisor."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL after 15 s."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


def serve_command(port: int, workers: int, extra_args: Sequence[str] = ()) -> tuple[list[str], str]:
    """``cloudpose serve --port PORT [--workers K]``, and a note when it cannot be had.

    A service whose ``serve`` has no ``--workers`` yet runs K workers through uvicorn's own
    command line (``service.app:create_app`` as a factory; settings from the environment).
    """
    command = [*cloudpose_command(), "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    if workers == 1:
        return command, ""
    if "--workers" in serve_help():
        return [*command, "--workers", str(workers)], ""
    uvicorn = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory"]
    uvicorn += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    return uvicorn, f"`cloudpose serve` has no --workers: ran `uvicorn --factory --workers {workers}`"


def start_server(
    log_path: Path,
    workers: int = 1,
    port: int | None = None,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Server:
    """Start ``cloudpose serve`` on ``port`` (a free one by default) and wait until it is ready."""
    port = port or free_port()
    command, note = serve_command(port, workers, extra_args)
    if "--store" not in extra_args:  # the shipped objects alone, through uvicorn's workers too
        env = {"CLOUDPOSE_ONLY_STORE": str(BUNNY.parent), **(env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path, command, note)
    try:
        wait_ready(server.url, process, log_path)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(url: str, process: subprocess.Popen | None, log_path: Path | None) -> str:
    """Wait until ``GET /ready`` answers 200 (``GET /health`` where there is no /ready); returns
    the route that answered."""
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    route = "/ready"
    while True:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail}")
        try:
            status = httpx.get(f"{url}{route}", timeout=2.0).status_code
            if status == 404 and route == "/ready":
                route = "/health"
                continue
            if status == 200:
                return route
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


@contextmanager
def running_servers(
    folder: Path,
    count: int = 1,
    workers: int = 1,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[list[Server]]:
    """``count`` servers on free ports (logs ``server-I.log`` in ``folder``), stopped afterwards."""
    servers: list[Server] = []
    try:
        for index in range(count):
            servers.append(
                start_server(folder / f"server-{index}.log", workers=workers, env=env, extra_args=extra_args)
            )
        yield servers
    finally:
        for server in servers:
            server.stop()


def nginx_config(upstream_ports: Sequence[int], listen_port: int, folder: Path) -> Path:
    """A copy of ``deploy/nginx.conf`` for local replicas: the upstream names ``127.0.0.1:PORT``
    for each replica instead of the compose service, and logs and temporary files go to ``folder``."""
    text = NGINX_CONF.read_text()
    server_line = re.search(r"server api:8000 resolve ([^;]*);", text)
    if server_line is None:
        raise RuntimeError(f"{NGINX_CONF} has no `server api:8000 resolve ...;` line to rewrite")
    servers = "\n        ".join(f"server 127.0.0.1:{port} {server_line[1]};" for port in upstream_ports)
    text = text.replace(server_line[0], servers)
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{listen_port};")
    text = text.replace("/var/log/nginx/", f"{folder}/")
    temp_paths = "".join(
        f"    {kind}_temp_path {folder}/{kind.split('_')[0]};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp_paths, 1)
    path = folder / "nginx.conf"
    path.write_text(text)
    return path


@contextmanager
def running_nginx(upstream_ports: Sequence[int], folder: Path) -> Iterator[Server]:
    """nginx in front of local replicas on a free port; stopped afterwards."""
    nginx = shutil.which("nginx")
    if nginx is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    port = free_port()
    config = nginx_config(upstream_ports, port, folder)
    command = [nginx, "-e", "stderr", "-p", str(folder), "-c", str(config)]
    command += ["-g", f"daemon off; pid {folder}/nginx.pid;"]
    log_path = folder / "nginx.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", log_path, command)
    try:
        wait_ready(server.url, process, log_path)
        yield server
    finally:
        server.stop()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from the parent ids in ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB (shared pages counted in each)."""
    total_kib = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total_kib += int(match[1]) if match else 0
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants, seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def open_files(pid: int) -> int:
    """Open file descriptors of ``pid`` and its descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            total += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue
    return total


def open_files_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of ``pid``."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    return int(re.search(r"^Max open files\s+(\d+)", limits, re.MULTILINE)[1])


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def count_tracebacks(log_path: Path) -> int:
    """Lines of the log that start a Python traceback."""
    return sum("Traceback" in line for line in log_path.read_text(errors="replace").splitlines())


# Clouds and bodies -----------------------------------------------------------------------------


@cache
def bunny_mesh():
    """The bunny's mesh in its file frame and units (what the service answers in)."""
    import trimesh

    return trimesh.load(BUNNY / "mesh.ply", force="mesh")


def bunny_metres_per_unit() -> float:
    return float(json.loads((BUNNY / "object.json").read_text())["units"]["metres_per_unit"])


def bunny_diameter() -> float:
    return float(json.loads((BUNNY / "object.json").read_text())["mesh"]["diameter"])


def random_pose(rng: np.random.Generator, extent: float) -> tuple[np.ndarray, np.ndarray]:
    """A rotation uniform on SO(3), (3, 3), and a translation within half ``extent`` per axis, (3,)."""
    from cloudpose.geometry.rotations import random_rotations

    rotation = random_rotations(rng)
    return rotation, rng.uniform(-0.5, 0.5, size=3) * extent


@dataclass
class PosedCloud:
    """A posed sample of the bunny: ``observed = canonical @ rotation + translation``.

    Attributes:
        canonical: (N, 3) points on the surface, file frame and units.
        observed: (N, 3) the same points posed.
    """

    canonical: np.ndarray
    observed: np.ndarray


def posed_bunny(count: int, seed: int) -> PosedCloud:
    """``count`` fresh points of the bunny's surface, posed at random."""
    import trimesh

    rng = np.random.default_rng(seed)
    canonical, _ = trimesh.sample.sample_surface(bunny_mesh(), count, seed=int(rng.integers(2**31)))
    canonical = np.asarray(canonical, dtype=np.float64)
    rotation, translation = random_pose(rng, bunny_diameter())
    return PosedCloud(canonical, canonical @ rotation + translation)


def posed_template(model_path: Path, seed: int) -> PosedCloud:
    """The template of an exam-setting model (``cloudpose export`` of a flattened-FC run), posed at
    random: the exam's copies of one cloud, in the template's point order and the model's frame."""
    template = np.load(Path(model_path).parent / "template.npy").astype(np.float64)
    rotation, translation = random_pose(np.random.default_rng(seed), bunny_diameter())
    return PosedCloud(template, template @ rotation + translation)


def sphere(count: int, radius: float, seed: int) -> np.ndarray:
    """(count, 3) points uniform on a sphere: no pose of the bunny fits it."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, 3))
    return radius * directions / np.linalg.norm(directions, axis=1, keepdims=True)


def pose_error(answer: dict, cloud: PosedCloud) -> float:
    """Largest |observed @ rotation + translation - canonical| of an answer, in the cloud's units."""
    recovered = cloud.observed @ np.asarray(answer["rotation"]) + np.asarray(answer["translation"])
    return float(np.abs(recovered - cloud.canonical).max())


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries an API key (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def json_body(points: np.ndarray) -> bytes:
    import orjson

    return orjson.dumps({"points": points.tolist()})


def json_batch_body(clouds: Sequence[np.ndarray]) -> bytes:
    import orjson

    return orjson.dumps({"clouds": [{"points": points.tolist()} for points in clouds]})


def npy_bytes(points: np.ndarray) -> bytes:
    """A cloud as a ``.npy`` file's bytes, float32 (as sensors and the viewer send frames)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(points, dtype=np.float32))
    return buffer.getvalue()


def npy_multipart_body(points: np.ndarray) -> tuple[bytes, str]:
    """A multipart/form-data body with the cloud as ``cloud.npy`` in field ``file``, and its
    content type."""
    buffer = io.BytesIO()
    np.save(buffer, points)
    head = (
        f'--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="cloud.npy"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + buffer.getvalue() + f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"


# Tables ----------------------------------------------------------------------------------------


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds (NaN for no samples)."""
    if not samples_s:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    ms = np.asarray(samples_s) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def status_counts(statuses: Sequence[int | str]) -> str:
    """``"200×95 503×5"``: how often each status (or error name) came back."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return " ".join(f"{status}×{count}" for status, count in sorted(counts.items())) or "-"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], notes=()) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [max(len(str(column)), *(len(row[i]) for row in cells)) for i, column in enumerate(header)]
    print(f"\n{title}")
    line = "  ".join(
        f"{column:<{widths[i]}}" if i == 0 else f"{column:>{widths[i]}}" for i, column in enumerate(header)
    )
    print(line)
    print("-" * len(line))
    for row in cells:
        print(
            "  ".join(
                f"{value:<{widths[i]}}" if i == 0 else f"{value:>{widths[i]}}" for i, value in enumerate(row)
            )
        )
    for note in notes:
        print(f"  note: {note}")


def fmt_ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"
