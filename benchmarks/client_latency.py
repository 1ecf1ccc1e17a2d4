"""Time of one pose through the Python client (against a `cloudpose serve` it starts) and through the
in-process ``Estimator``, on the shipped bunny example: a table of median and 90th percentile
milliseconds, and the server's own share.

    .venv/bin/python benchmarks/client_latency.py [--count 50]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cloudpose import Client, Estimator, ServiceUnreachable  # noqa: E402

EXAMPLE = REPO_ROOT / "data" / "objects" / "bunny" / "example.xyz"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(call, count: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def row(name: str, times: list[float], extra: str = "") -> str:
    return f"| {name} | {np.median(times):.1f} | {np.percentile(times, 90):.1f} | {extra} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="timed calls per way")
    args = parser.parse_args()
    points = np.loadtxt(EXAMPLE)
    port = free_port()
    command = [str(Path(sys.executable).parent / "cloudpose"), "serve", "--port", str(port)]
    server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [
        f"{len(points)} points, {args.count} calls each",
        "",
        "| way | median ms | p90 ms | |",
        "|---|---|---|---|",
    ]
    try:
        with Client(f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.health()
                    break
                except ServiceUnreachable:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.2)
            server_ms: list[float] = []
            times = timed(lambda: server_ms.append(client.pose(points).server_time_ms), args.count)
            lines.append(row("Client.pose (.npy upload)", times, f"server {np.median(server_ms):.1f} ms"))
            times = timed(lambda: client.pose(points.tolist()), args.count)
            lines.append(row("Client.pose (JSON list)", times))
    finally:
        server.terminate()
        server.wait(timeout=20)
    started = time.perf_counter()
    estimator = Estimator.from_store()
    load_s = time.perf_counter() - started
    times = timed(lambda: estimator.pose(points), args.count)
    lines.append(row("Estimator.pose (in process)", times, f"from_store {load_s:.1f} s"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
