"""Tracking: the frame rate that following poses from frame to frame sustains, and how often it holds.

Makes ``--sequences`` seeded sequences of ``--length`` VGA frames (``pipeline.data.scenes.frame_sequence``:
one cluttered scene of the store's objects with units, the camera circling it ``--turn-deg`` a frame
and moving ``--shift-m``), and runs the client's loop on each (``pipeline.evaluation.track_bench``): detection
on the first frame, tracking from the frame before on the others, detection again on a frame where
a track was lost. Prints the scene benchmark's figures for tracked and detected frames and the
sustained frame rate, in process. With ``--http`` it then runs the loop through a real server
(``cloudpose serve --store STORE``, one worker): ``POST /v1/detect`` and ``POST /v1/track`` with
the frame as ``.npy`` and the previous poses in the field ``previous``, and prints the round trips.

Usage::

    .venv/bin/python benchmarks/track.py [--store data/objects] [--sequences 10] [--length 30] [--http]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import npy_bytes, running_servers  # noqa: E402


def http_loop(store: Path, sequences: list[list], url: str) -> dict[str, list[float]]:
    """The detect-then-track loop through the server: round trips (ms) by route."""
    import httpx

    times: dict[str, list[float]] = {"detect": [], "track": []}
    with httpx.Client(timeout=120) as client:
        for frames in sequences:
            previous: list[dict] = []
            for frame in frames:
                files = {"file": ("frame.npy", npy_bytes(frame.points()), "application/octet-stream")}
                answer = None
                if previous:
                    started = time.perf_counter()
                    reply = client.post(
                        f"{url}/v1/track", files=files, data={"previous": json.dumps(previous)}
                    )
                    times["track"].append((time.perf_counter() - started) * 1000)
                    reply.raise_for_status()
                    answer = reply.json()
                    found = [item for item in answer["tracks"] if not item["lost"]]
                if answer is None or answer["lost"]:
                    started = time.perf_counter()
                    reply = client.post(f"{url}/v1/detect", files=files)
                    times["detect"].append((time.perf_counter() - started) * 1000)
                    reply.raise_for_status()
                    found = reply.json()["detections"]
                previous = [
                    {key: item[key] for key in ("object", "rotation", "translation")}
                    for item in found
                    if item["confident"]
                ]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "data" / "objects")
    parser.add_argument("--sequences", type=int, default=10)
    parser.add_argument("--length", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--turn-deg", type=float, default=2.0)
    parser.add_argument("--shift-m", type=float, default=0.005)
    parser.add_argument("--http", action="store_true", help="also run the loop through a real server")
    args = parser.parse_args()

    from cloudpose.estimation.served import ObjectRegistry
    from cloudpose.settings import Settings
    from cloudpose.store.package import ObjectStore
    from pipeline.data.scenes import CameraMotion, SceneLayout, frame_sequence
    from pipeline.evaluation import scene_bench, track_bench

    store = args.store.resolve()
    registry = ObjectRegistry.load(Settings(store=store))
    targets, models = scene_bench.store_targets(ObjectStore(store), registry.objects)
    distractors = scene_bench.distractor_objects()
    motion = CameraMotion(turn_deg=args.turn_deg, shift_m=args.shift_m)
    frames = track_bench.run_track_bench(
        registry.objects, targets, distractors, models, args.sequences, args.length, args.seed, motion,
        progress=lambda done, total: print(f"sequence {done}/{total}", file=sys.stderr, flush=True),
    )  # fmt: skip
    title = (
        f"{args.sequences} sequences x {args.length} VGA frames (seed {args.seed}) of {args.store}, camera "
        f"{args.turn_deg:g} deg + {args.shift_m * 1000:g} mm a frame, in process"
    )
    print(track_bench.format_table(track_bench.summarize(frames), title))
    if not args.http:
        return
    layout = SceneLayout.for_size(max(float(np.linalg.norm(item.mesh.extents)) for item in targets))
    sequences = [
        list(
            frame_sequence(
                targets,
                distractors,
                np.random.default_rng(seed),
                args.length,
                scene_bench.DEFAULT_INTRINSICS,
                scene_bench.BENCH_COUNTS,
                scene_bench.DEFAULT_NOISE,
                layout,
                motion,
            )
        )  # fmt: skip
        for seed in np.random.SeedSequence(args.seed).spawn(args.sequences)
    ]
    with tempfile.TemporaryDirectory() as folder:
        with running_servers(Path(folder), extra_args=["--store", str(store)]) as (server,):
            times = http_loop(store, sequences, server.url)
    total_s = sum(sum(values) for values in times.values()) / 1000
    print("\nthe same loop through HTTP (.npy uploads, one keep-alive client)")
    print("| route | calls | median ms | p90 ms |")
    print("| --- | ---: | ---: | ---: |")
    for route, values in times.items():
        if values:
            print(
                f"| /v1/{route} | {len(values)} | {np.median(values):.0f} | {np.percentile(values, 90):.0f} |"
            )
    frames_total = args.sequences * args.length
    print(f"sustained through HTTP: {frames_total / total_s:.1f} frames/s")


if __name__ == "__main__":
    main()
