"""Whole-frame detection through HTTP: ``POST /v1/detect`` with generated VGA frames as ``.npy``.

Starts ``cloudpose serve --store STORE`` (uvicorn, one worker) on a free loopback port, makes
``--frames`` frames with the scene benchmark's generator (the store's objects with units among its
distractors, the seed's frames as ``cloudpose bench --scenes`` makes them), posts each one's cloud
(``(N, 3)`` float32 ``.npy``, N about 300,000) one at a time through one keep-alive client, and
prints the client's round trip and the server's own time per frame (median, p90), with the
detections per frame. The server is stopped at the end, also on errors.

Usage::

    .venv/bin/python benchmarks/detect_http.py --store artifacts/scene_objects [--frames 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import npy_bytes, running_servers  # noqa: E402


def frame_bodies(store: Path, frames: int, seed: int) -> tuple[list[bytes], list[int]]:
    """The frames' clouds as ``.npy`` bodies, and how many target instances each holds."""
    from cloudpose.estimation.served import ObjectRegistry
    from cloudpose.settings import Settings
    from cloudpose.store.package import ObjectStore
    from pipeline.evaluation import scene_bench

    registry = ObjectRegistry.load(Settings(store=store))
    targets, _ = scene_bench.store_targets(ObjectStore(store), registry.objects)
    bodies, instances = [], []
    for frame in scene_bench.scene_frames(targets, scene_bench.distractor_objects(), frames, seed):
        bodies.append(npy_bytes(frame.points()))
        instances.append(len(frame.instances))
    return bodies, instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "data" / "objects")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import httpx

    bodies, instances = frame_bodies(args.store.resolve(), args.frames, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        extra = ["--store", str(args.store.resolve())]
        with (
            running_servers(Path(folder), extra_args=extra) as (server,),
            httpx.Client(timeout=120) as client,
        ):
            for index, body in enumerate([bodies[0], *bodies]):  # the first frame once more, untimed
                started = time.perf_counter()
                answer = client.post(
                    f"{server.url}/v1/detect", files={"file": ("frame.npy", body, "application/octet-stream")}
                )
                seconds = time.perf_counter() - started
                if answer.status_code != 200:
                    raise SystemExit(f"frame {index}: {answer.status_code} {answer.text[:300]}")
                if index == 0:
                    continue
                reply = answer.json()
                confident = sum(item["confident"] for item in reply["detections"])
                rows.append((seconds * 1000, reply["server_time_ms"], reply["n_points"], confident))
    client_ms, server_ms, points, confident = (np.array(column) for column in zip(*rows, strict=True))
    print(
        f"{len(rows)} VGA frames (seed {args.seed}) of {args.store}, POST /v1/detect with .npy, one at a time"
    )
    print("| measure | median | p90 |")
    print("| --- | ---: | ---: |")
    for label, values in (("round trip, ms", client_ms), ("server time, ms", server_ms), ("points", points)):
        print(f"| {label} | {np.median(values):.0f} | {np.percentile(values, 90):.0f} |")
    print(f"confident detections: {int(confident.sum())}, target instances in the frames: {sum(instances)}")


if __name__ == "__main__":
    main()
