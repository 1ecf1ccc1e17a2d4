"""Real Kinect frames through ``POST /v1/detect``: every frame read, no false alarm.

The frames are the 6 organized 640 x 480 clouds of ``DIR/mosd/testN.pcd`` (``--real``, by default
``../shared/real`` beside the repository; read-only, never copied): PCD ``binary_compressed`` as PCL
wrote it (fields ``label x y z rgba``, metres, the Kinect's frame, no return as NaN), cluttered
tabletops of boxes, cylinders and household objects. None of the store's objects is in them, so a
confident detection is a false alarm.

Without ``--store`` the benchmark makes its own: a temporary copy of ``data/objects`` (the
bunny) plus ``cloudpose object add dragon DIR/dragon/dragon_vrip_res3.ply --units m --no-train
--bench-count 0`` (timed and printed). The service is ``cloudpose serve --store STORE`` on a free
loopback port (``benchmarks/serving.py``), started and stopped by this script. Each frame's file
is posted as it is (multipart field ``file``, ``testN.pcd``) to ``/v1/detect`` (every object of
the store) ``--repeat`` times, one at a time through one keep-alive ``httpx.Client``; the first
frame is sent once more, untimed, before the measured ones. The times in the table are the
medians over the repeats.

Printed (and written with ``--markdown``): one row per frame (points in the file, valid points
the server kept, HTTP status, detections, confident detections, server and client time), then
each detection (object, confident, fitness, inlier RMSE, confidence) and any frame whose
detection budget ran out. Exits 1 when a frame is not read (status other than 200) or a
confident detection appears.

Usage::

    .venv/bin/python benchmarks/real_frames.py [--real ../shared/real] [--store STORE] [--repeat 3]
        [--markdown real_frames.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402
from real_scans import make_store  # noqa: E402

DEFAULT_REAL = REPO_ROOT.parent / "shared" / "real"
MESH_FILE = Path("dragon") / "dragon_vrip_res3.ply"


def frame_counts(data: bytes, name: str) -> tuple[int, int]:
    """Points in the file's header and those with a return, by the project's own readers."""
    from cloudpose.io.cloudfiles import read_pcd
    from cloudpose.io.clouds import read_frame_file

    return len(read_pcd(data, 10**7)), len(read_frame_file(name, data, 10**7))


def detection_line(frame: str, item: dict) -> str:
    summary = item.get("confidence") or {}

    def shown(key: str) -> str:
        value = summary.get(key)
        return "-" if value is None else f"{value:.4g}"

    return (
        f"- {frame}: {item['object']}, confident {item['confident']}, fitness {shown('fitness')}, "
        f"inlier RMSE {shown('inlier_rmse')} m ({shown('inlier_rmse_percent')} % of the diagonal), "
        f"confidence {shown('confidence')}, {item['n_points']} points, visible {item['visible_fraction']}"
    )


def run(store: Path, frames: list[Path], repeat: int, folder: Path) -> tuple[list[str], bool]:
    """The table's lines and whether every frame was read with no confident detection."""
    import httpx

    rows, details, ok = [], [], True
    with (
        serving.running_servers(folder, extra_args=["--store", str(store)]) as (server,),
        httpx.Client(timeout=300) as client,
    ):

        def post(path: Path, data: bytes) -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            answer = client.post(
                f"{server.url}/v1/detect", files={"file": (path.name, data, "application/octet-stream")}
            )
            return answer, (time.perf_counter() - started) * 1000

        post(frames[0], frames[0].read_bytes())  # warm-up, untimed
        for path in frames:
            data = path.read_bytes()
            points, valid = frame_counts(data, path.name)
            answers = [post(path, data) for _ in range(repeat)]
            answer, _ = answers[-1]
            if answer.status_code != 200:
                ok = False
                rows.append(f"| {path.name} | {points} | {valid} | {answer.status_code} | - | - | - | - |")
                details.append(f"- {path.name}: {answer.status_code} {answer.text[:300]}")
                continue
            reply = answer.json()
            if reply["n_points"] != valid:
                kept = reply["n_points"]
                details.append(f"- {path.name}: the server kept {kept} points, the reader {valid}")
            detections = reply["detections"]
            confident = sum(item["confident"] for item in detections)
            ok = ok and confident == 0
            server_ms = statistics.median(item.json()["server_time_ms"] for item, _ in answers)
            client_ms = statistics.median(ms for _, ms in answers)
            rows.append(
                f"| {path.name} | {points} | {valid} | {answer.status_code} | {len(detections)} | "
                f"{confident} | {server_ms:.0f} | {client_ms:.0f} |"
            )
            details += [detection_line(path.name, item) for item in detections]
            if not reply["complete"]:
                warned = "; ".join(reply.get("warnings", []))
                details.append(f"- {path.name}: the detection budget ran out ({warned})")
    header = [
        "| frame | points | valid points | HTTP status | detections | confident detections | "
        "server time ms | client time ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    return header + rows + ([""] + details if details else []), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="the shared real data folder")
    parser.add_argument("--store", type=Path, default=None, help="a store to serve (default: bunny + dragon)")
    parser.add_argument("--repeat", type=int, default=3, help="posts of each frame (median times)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    frames = sorted((args.real / "mosd").glob("test*.pcd"), key=lambda path: int(path.stem[4:]))
    if not frames:
        raise SystemExit(f"no frames in {args.real / 'mosd'}: pass --real, the shared real data folder")
    with tempfile.TemporaryDirectory(prefix="cloudpose-real-frames-") as scratch:
        folder = Path(scratch)
        lines = []
        if args.store is None:
            store, seconds = make_store(folder, args.real / MESH_FILE)
            lines.append(f"store: data/objects + dragon (`cloudpose object add --no-train`: {seconds:.1f} s)")
        else:
            store = args.store.resolve()
            lines.append(f"store: {store}")
        objects = sorted(path.name for path in store.iterdir() if (path / "object.json").is_file())
        shown = os.path.relpath(args.real / "mosd", REPO_ROOT)
        lines.append(
            f"objects: {', '.join(objects)}; {len(frames)} frames of {shown}, each posted "
            f"{args.repeat} times as it is (.pcd binary_compressed), one at a time; median times\n"
        )
        table, ok = run(store, frames, args.repeat, folder)
        lines += table
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
