"""Real laser scans of the Stanford dragon, posed at random, through ``cloudpose serve``.

The data are the 15 single-view Cyberware scans of ``DIR/dragon`` (``--real``, by default
``../shared/real`` beside the repository; read-only, never copied): ``scans/dragonStandRight_N.npy``
((M, 3) float32, metres, the scanner's frame) and ``poses.json``, per scan the 4x4 ``T`` with
``x_mesh = T[:3,:3] @ x_scan + T[:3,3]`` into the frame of ``dragon_vrip_res3.ply`` (metres). In
cloudpose's row-vector convention a scan's pose is ``canonical = scan @ T3.T + t`` (``T3 =
T[:3,:3]``, ``t = T[:3,3]``).

Each scan gets ``--poses-per-scan`` K random rigid motions (a rotation uniform on SO(3),
``scipy.spatial.transform.Rotation.random`` with a seeded generator; a translation uniform in
±0.5 m per axis): ``posed = scan @ A + b``, so the true answer is
``canonical = posed @ R_gt + t_gt`` with ``R_gt = A.T @ T3.T`` and ``t_gt = -b @ R_gt + t``. Every
posed scan is sent at every ``--sizes`` entry: ``full`` (the whole scan, 15k-44k points) or N
points drawn at random without replacement, as a float32 ``.npy`` upload (multipart field
``file``) to ``POST /v1/objects/dragon/pose?units=m``, one at a time through one keep-alive
``httpx.Client``. Cloud ``(scan, pose)`` depends only on ``(seed, scan, pose)``: a smaller run is
a prefix of a larger one.

At start-up the ground truth is checked for every scan: the scan moved by ``T`` and a posed copy
moved back by ``(R_gt, t_gt)`` must both lie within a median 1 mm of the mesh's surface (the data's
README: 0.29-0.33 mm), measured point-to-plane against a dense seeded surface sample of the mesh
(scipy ``cKDTree``). A wrong convention puts them centimetres off and stops the run.

Without ``--store`` the benchmark makes its own: a temporary copy of ``data/objects`` plus
``cloudpose object add dragon DIR/dragon/dragon_vrip_res3.ply --units m --no-train
--bench-count 0``. The service is ``cloudpose serve --store STORE`` on a free loopback port (or
``--port``), started and stopped by this script (``benchmarks/serving.py``).

Cross-object checks in the same run (another object's cloud must come back ``found: false``):

* posed dragon scans (the first ``--cross-poses-per-scan`` poses of every scan, at every size)
  sent to the bunny's route ``/v1/objects/bunny/pose?units=m``;
* bunny clouds in metres sent to the dragon's route: fresh surface samples of the bunny
  (``serving.posed_bunny``, 1024 and 4096 points) and single rendered views of it
  (``pipeline.data.benchsets`` set ``partial``: 30-70 % of the surface, self-occlusion, sensor
  fall-off), ``--cross-count`` of each kind, each converted from the bunny's units to metres;
* as a control, the same bunny clouds sent to the bunny's own route (they should be found).

Printed (and written with ``--markdown``): the per-size table (rotation error median/p90/p99,
translation error median, < 5 deg, found, found-and-right, wrong-and-found, right-but-not-found,
server and client times), the cross-object table, and the most common ``reason`` strings of the
dragon's not-found answers (numbers replaced by ``#`` to group them). ``--out-json`` writes every
cloud's row. The first dragon cloud is sent once more, untimed, before the measured ones.

Usage::

    .venv/bin/python benchmarks/real_scans.py [--real ../shared/real] [--store STORE]
        [--poses-per-scan 20] [--sizes 1024,4096,full] [--scans 15] [--seed 0] [--port P]
        [--cross-poses-per-scan 1] [--cross-count 20]
        [--out-json real_scans.json] [--markdown real_scans.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402

from cloudpose.geometry.rotations import geodesic_deg, random_rotations  # noqa: E402

DEFAULT_REAL = REPO_ROOT.parent / "shared" / "real"
OBJECT = "dragon"
OTHER = "bunny"
MESH_FILE = "dragon_vrip_res3.ply"
SCAN_PREFIX = "dragonStandRight_"
TRANSLATION_HALF_RANGE_M = 0.5
RIGHT_DEG = 5.0
GT_MEDIAN_LIMIT_M = 1e-3  # the data's README measures 0.29-0.33 mm
GT_CHECK_POINTS = 4000  # per scan
GT_SURFACE_SAMPLES = 1_000_000
BUNNY_SIZES = (1024, 4096)
PROGRESS_EVERY = 50
HTTP_TIMEOUT_S = 300.0


# Data ------------------------------------------------------------------------------------------


@dataclass
class Scan:
    """One real scan and its ground truth.

    Attributes:
        name: ``dragonStandRight_N``.
        points: (M, 3) float64, metres, the scanner's frame.
        rotation: (3, 3) ``T[:3,:3]``, scan frame -> mesh frame (column vectors).
        translation: (3,) ``T[:3,3]``.
    """

    name: str
    points: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray

    def canonical(self) -> np.ndarray:
        """The scan in the mesh's frame (row vectors): ``scan @ T3.T + t``."""
        return self.points @ self.rotation.T + self.translation


def load_scans(dragon_dir: Path, limit: int | None = None) -> list[Scan]:
    """The scans in turntable order (0, 24, ..., 336 degrees), the first ``limit`` of them."""
    poses = json.loads((dragon_dir / "poses.json").read_text())["poses"]
    files = sorted(
        (dragon_dir / "scans").glob(f"{SCAN_PREFIX}*.npy"), key=lambda path: int(path.stem.rsplit("_", 1)[1])
    )
    if not files:
        raise SystemExit(f"no scans {SCAN_PREFIX}*.npy in {dragon_dir / 'scans'}")
    scans = []
    for path in files[:limit]:
        matrix = np.asarray(poses[path.stem], dtype=np.float64)
        points = np.load(path, allow_pickle=False).astype(np.float64)
        if points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all():
            raise SystemExit(f"{path}: expected finite (M, 3) points, got {points.shape}")
        scans.append(Scan(path.stem, points, matrix[:3, :3], matrix[:3, 3]))
    return scans


@dataclass
class PosedScan:
    """A scan moved by a random rigid motion, and the answer that brings it back.

    ``posed = scan @ motion_rotation + motion_translation``; ``canonical = posed @ rotation +
    translation`` (the true answer of the service, metres).
    """

    scan_index: int
    pose_index: int
    posed: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray


def pose_scan(scan: Scan, scan_index: int, pose_index: int, seed: int) -> PosedScan:
    """Pose ``pose_index`` of scan ``scan_index``: depends only on ``(seed, scan, pose)``."""
    rng = np.random.default_rng([seed, scan_index, pose_index])
    motion_rotation = random_rotations(rng)
    motion_translation = rng.uniform(-TRANSLATION_HALF_RANGE_M, TRANSLATION_HALF_RANGE_M, 3)
    posed = scan.points @ motion_rotation + motion_translation
    # posed @ A.T = scan + b @ A.T, so canonical = (posed - b) @ A.T @ T3.T + t
    rotation = motion_rotation.T @ scan.rotation.T
    translation = -motion_translation @ rotation + scan.translation
    return PosedScan(scan_index, pose_index, posed, rotation, translation)


def parse_sizes(text: str) -> list[str]:
    sizes = [part.strip().lower() for part in text.split(",") if part.strip()]
    for size in sizes:
        if size != "full" and not (size.isdigit() and int(size) > 0):
            raise SystemExit(f"--sizes: {size!r} is neither a positive point count nor 'full'")
    if not sizes:
        raise SystemExit("--sizes: give at least one size")
    return sizes


def cloud_of_size(posed: PosedScan, size: str, seed: int) -> np.ndarray:
    """The whole posed scan (``full``), or ``size`` of its points drawn without replacement
    (seeded by ``(seed, scan, pose, size)``; the whole scan when it has fewer points)."""
    if size == "full" or int(size) >= len(posed.posed):
        return posed.posed
    rng = np.random.default_rng([seed, posed.scan_index, posed.pose_index, int(size), 1])
    return posed.posed[rng.choice(len(posed.posed), int(size), replace=False)]


# Ground truth check ------------------------------------------------------------------------------


class SurfaceDistance:
    """Point-to-plane distance to a mesh: the nearest of a dense surface sample, along its face's
    normal (exact for a flat face; the sample spacing, about 0.3 mm here, enters only through the
    curvature)."""

    def __init__(self, mesh_path: Path, samples: int = GT_SURFACE_SAMPLES, seed: int = 0) -> None:
        import trimesh
        from scipy.spatial import cKDTree

        mesh = trimesh.load(mesh_path, force="mesh", process=False)
        points, faces = trimesh.sample.sample_surface(mesh, samples, seed=seed)
        normals = np.asarray(mesh.face_normals)[faces]
        keep = np.isfinite(normals).all(axis=1) & (np.linalg.norm(normals, axis=1) > 0.5)
        self.points = np.asarray(points, dtype=np.float64)[keep]
        self.normals = normals[keep]
        self.tree = cKDTree(self.points)
        self.diagonal = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        _, index = self.tree.query(points, workers=-1)
        return np.abs(np.einsum("ij,ij->i", points - self.points[index], self.normals[index]))


def check_ground_truth(scans: Sequence[Scan], mesh_path: Path, seed: int) -> list[dict]:
    """Every scan moved by its ``T``, and its first posed copy moved back by the true answer, lie
    on the mesh (median < 1 mm); raises SystemExit otherwise. Returns the medians and p90s."""
    distance = SurfaceDistance(mesh_path, seed=seed)
    results = []
    for index, scan in enumerate(scans):
        rng = np.random.default_rng([seed, index, 2**20])
        pick = rng.choice(len(scan.points), min(GT_CHECK_POINTS, len(scan.points)), replace=False)
        aligned = distance(scan.canonical()[pick])
        posed = pose_scan(scan, index, 0, seed)
        back = distance(posed.posed[pick] @ posed.rotation + posed.translation)
        row = {
            "scan": scan.name,
            "points": len(scan.points),
            "aligned_median_mm": float(np.median(aligned) * 1000),
            "aligned_p90_mm": float(np.percentile(aligned, 90) * 1000),
            "posed_back_median_mm": float(np.median(back) * 1000),
        }
        results.append(row)
        for what in ("aligned_median_mm", "posed_back_median_mm"):
            if not row[what] < GT_MEDIAN_LIMIT_M * 1000:
                raise SystemExit(
                    f"ground truth check failed for {scan.name}: {what} = {row[what]:.3f} mm "
                    f"(limit {GT_MEDIAN_LIMIT_M * 1000:.1f} mm); the pose convention is wrong"
                )
    return results


# Store and service -------------------------------------------------------------------------------


def make_store(folder: Path, mesh_path: Path) -> tuple[Path, float]:
    """The shipped bunny and the dragon, added (``--no-train``), in a store of their own; and
    the seconds the add took."""
    store = folder / "store"
    shutil.copytree(REPO_ROOT / "data" / "objects" / "bunny", store / "bunny")
    command = [
        *serving.cloudpose_command(), "object", "add", OBJECT, str(mesh_path), "--units", "m",
        "--no-train", "--bench-count", "0", "--store", str(store), "--runs-dir", str(folder / "runs"),
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return store, seconds


@dataclass
class Row:
    """One request and its answer."""

    route: str  # the object whose route was asked
    kind: str  # dragon: the size; cross checks: what was sent
    scan: str | None
    pose: int | None
    points: int
    status: int
    found: bool
    reason: str | None
    rotation_error_deg: float | None
    translation_error_mm: float | None
    server_time_ms: float | None
    client_time_ms: float
    fitness: float | None
    inlier_rmse: float | None
    hypotheses: int | None
    confidence: float | None
    warnings: list[str] | None


class Poser:
    """Posts clouds as ``.npy`` uploads through one keep-alive client."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url
        self.client = httpx.Client(timeout=HTTP_TIMEOUT_S)

    def close(self) -> None:
        self.client.close()

    def info(self, name: str) -> dict:
        answer = self.client.get(f"{self.url}/v1/objects/{name}")
        return answer.json() if answer.status_code == 200 else {}

    def pose(
        self,
        route: str,
        kind: str,
        points: np.ndarray,
        truth: PosedScan | None = None,
        scan: str | None = None,
    ) -> Row:
        body = serving.npy_bytes(points)
        started = time.perf_counter()
        response = self.client.post(
            f"{self.url}/v1/objects/{route}/pose",
            params={"units": "m"},
            files={"file": ("cloud.npy", body, "application/octet-stream")},
        )
        client_ms = (time.perf_counter() - started) * 1000
        common = {
            "route": route,
            "kind": kind,
            "scan": scan,
            "pose": truth.pose_index if truth is not None else None,
            "points": len(points),
            "status": response.status_code,
            "client_time_ms": client_ms,
        }
        if response.status_code != 200:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            empty = dict.fromkeys(
                ("rotation_error_deg", "translation_error_mm", "server_time_ms", "fitness", "inlier_rmse",
                 "hypotheses", "confidence", "warnings")
            )  # fmt: skip
            return Row(**common, **empty, found=False, reason=f"HTTP {response.status_code}: {detail}")
        answer = response.json()
        confidence = answer.get("confidence") or {}
        rotation_error = translation_error = None
        if truth is not None:
            rotation = np.asarray(answer["rotation"], dtype=np.float64)
            translation = np.asarray(answer["translation"], dtype=np.float64)
            rotation_error = float(geodesic_deg(rotation, truth.rotation))
            translation_error = float(np.linalg.norm(translation - truth.translation) * 1000)
        return Row(
            **common,
            found=bool(answer["found"]),
            reason=answer.get("reason"),
            rotation_error_deg=rotation_error,
            translation_error_mm=translation_error,
            server_time_ms=answer.get("server_time_ms"),
            fitness=confidence.get("fitness"),
            inlier_rmse=confidence.get("inlier_rmse"),
            hypotheses=confidence.get("hypotheses"),
            confidence=confidence.get("confidence"),
            warnings=answer.get("warnings"),
        )


# Clouds ----------------------------------------------------------------------------------------


def dragon_clouds(
    scans: Sequence[Scan], poses_per_scan: int, sizes: Sequence[str], seed: int
) -> Iterator[tuple[str, Scan, PosedScan, np.ndarray]]:
    """``(size, scan, posed scan, cloud)``, size by size, scan by scan, pose by pose."""
    for size in sizes:
        for scan_index, scan in enumerate(scans):
            for pose_index in range(poses_per_scan):
                posed = pose_scan(scan, scan_index, pose_index, seed)
                yield size, scan, posed, cloud_of_size(posed, size, seed)


def bunny_clouds(count: int, seed: int) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """Posed bunny clouds in metres: ``count`` surface samples per size in :data:`BUNNY_SIZES`
    and ``count`` single rendered views; and notes on what could not be made."""
    metres = serving.bunny_metres_per_unit()
    clouds: list[tuple[str, np.ndarray]] = []
    for size in BUNNY_SIZES:
        for index in range(count):
            cloud = serving.posed_bunny(size, seed=seed * 100_003 + size * 1009 + index)
            clouds.append((f"bunny samples, {size} pts", cloud.observed * metres))
    notes = []
    try:
        from pipeline.data.benchsets import make_set
        from pipeline.data.mesh import load_mesh

        views = make_set("partial", load_mesh(serving.BUNNY / "mesh.ply"), count=count, seed=seed)
        clouds += [("bunny single views", case.observed * metres) for case in views]
    except ImportError as error:  # the view renderer needs open3d
        notes.append(f"bunny single views skipped: {error}")
    return clouds, notes


# Tables ----------------------------------------------------------------------------------------


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else float("nan")


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def is_right(row: Row) -> bool:
    """The rotation is within :data:`RIGHT_DEG` of the truth (found or not)."""
    return row.rotation_error_deg is not None and row.rotation_error_deg < RIGHT_DEG


def size_summary(rows: Sequence[Row]) -> dict:
    """One size's figures (rotation errors in degrees, translation in mm, shares in %)."""
    count = len(rows)
    rotation = np.array([row.rotation_error_deg for row in rows if row.rotation_error_deg is not None])
    translation = np.array([row.translation_error_mm for row in rows if row.translation_error_mm is not None])
    right = [is_right(row) for row in rows]
    found = [row.found for row in rows]
    server = np.array([row.server_time_ms for row in rows if row.server_time_ms is not None])
    client = np.array([row.client_time_ms for row in rows])

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if len(values) else float("nan")

    return {
        "clouds": count,
        "points_median": float(np.median([row.points for row in rows])) if rows else float("nan"),
        "http_errors": sum(row.status != 200 for row in rows),
        "rotation_median_deg": pct(rotation, 50),
        "rotation_p90_deg": pct(rotation, 90),
        "rotation_p99_deg": pct(rotation, 99),
        "translation_median_mm": pct(translation, 50),
        "within_5deg_pct": percent(sum(right), count),
        "found_pct": percent(sum(found), count),
        "found_and_right_pct": percent(sum(f and r for f, r in zip(found, right, strict=True)), count),
        "wrong_and_found_pct": percent(sum(f and not r for f, r in zip(found, right, strict=True)), count),
        "right_not_found_pct": percent(sum(r and not f for f, r in zip(found, right, strict=True)), count),
        "server_p50_ms": pct(server, 50),
        "server_p90_ms": pct(server, 90),
        "client_p50_ms": pct(client, 50),
    }


SIZE_HEADER = (
    "size", "clouds", "points (median)", "rot median (deg)", "rot p90 (deg)", "rot p99 (deg)",
    "transl median (mm)", "< 5 deg %", "found %", "found & right %", "wrong & found %",
    "right, not found %", "server p50 (ms)", "server p90 (ms)", "client p50 (ms)",
)  # fmt: skip
SIZE_KEYS = (
    "clouds", "points_median", "rotation_median_deg", "rotation_p90_deg", "rotation_p99_deg",
    "translation_median_mm", "within_5deg_pct", "found_pct", "found_and_right_pct", "wrong_and_found_pct",
    "right_not_found_pct", "server_p50_ms", "server_p90_ms", "client_p50_ms",
)  # fmt: skip
CROSS_HEADER = ("route", "sent", "clouds", "found %", "fitness median", "server p50 (ms)")


def size_table_rows(summaries: dict[str, dict]) -> list[list[str]]:
    digits = {"clouds": 0, "points_median": 0, "rotation_median_deg": 2, "rotation_p90_deg": 1,
              "rotation_p99_deg": 1, "translation_median_mm": 1}  # fmt: skip
    return [
        [size, *(fmt(summary[key], digits.get(key, 1)) for key in SIZE_KEYS)]
        for size, summary in summaries.items()
    ]


def per_scan_rows(rows: Sequence[Row], scans: Sequence[Scan], sizes: Sequence[str]) -> list[list[str]]:
    """Per scan: its points, then per size ``found % / right %`` of its poses."""
    table = []
    for scan in scans:
        cells = [scan.name, str(len(scan.points))]
        for size in sizes:
            mine = [row for row in rows if row.scan == scan.name and row.kind == size]
            right = sum(is_right(row) for row in mine)
            found = sum(row.found for row in mine)
            cells.append(f"{fmt(percent(found, len(mine)), 0)} / {fmt(percent(right, len(mine)), 0)}")
        table.append(cells)
    return table


def cross_summary(rows: Sequence[Row]) -> list[dict]:
    """Per (route, kind): clouds, found %, median fitness and server time."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.route, row.kind), []).append(row)
    result = []
    for (route, kind), members in groups.items():
        fitness = [row.fitness for row in members if row.fitness is not None]
        server = [row.server_time_ms for row in members if row.server_time_ms is not None]
        result.append({
            "route": f"/v1/objects/{route}/pose",
            "sent": kind,
            "clouds": len(members),
            "found_pct": percent(sum(row.found for row in members), len(members)),
            "fitness_median": float(np.median(fitness)) if fitness else float("nan"),
            "server_p50_ms": float(np.median(server)) if server else float("nan"),
            "control": route == OTHER and kind.startswith("bunny"),
        })  # fmt: skip
    return result


def reason_pattern(reason: str | None) -> str:
    """A reason with its numbers replaced by ``#``, to group answers that differ only in figures."""
    if not reason:
        return "(no reason given)"
    return re.sub(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", "#", reason)


def top_reasons(rows: Sequence[Row], top: int = 5) -> list[tuple[str, int, str]]:
    """The ``top`` most common reason patterns of the not-found rows: pattern, count, an example."""
    missing = [row for row in rows if not row.found]
    counts = Counter(reason_pattern(row.reason) for row in missing)
    examples = {}
    for row in missing:
        examples.setdefault(reason_pattern(row.reason), row.reason or "")
    return [(pattern, count, examples[pattern]) for pattern, count in counts.most_common(top)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], text_columns: int = 1) -> str:
    """A markdown table: the first ``text_columns`` columns left-aligned, the others right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# Run -------------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[real_scans] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real data folder (holds dragon/)")
    parser.add_argument("--store", type=Path, help="an object store that holds dragon (default: make one)")
    parser.add_argument("--poses-per-scan", type=int, default=20, help="random poses of each scan")
    parser.add_argument("--sizes", default="1024,4096,full", help="points per cloud, comma-separated; full")
    parser.add_argument("--scans", type=int, help="use only the first N scans (turntable order)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, help="port of the started server (default: a free one)")
    parser.add_argument(
        "--cross-poses-per-scan", type=int, default=1, help="posed scans per scan and size sent to the bunny"
    )
    parser.add_argument(
        "--cross-count", type=int, default=20, help="bunny clouds per kind sent to the dragon"
    )
    parser.add_argument("--out-json", type=Path, help="write every cloud's row and the tables here")
    parser.add_argument("--markdown", type=Path, help="write the tables here too")
    args = parser.parse_args(argv)
    if args.poses_per_scan < 1 or (args.scans is not None and args.scans < 1):
        parser.error("--poses-per-scan and --scans must be at least 1")
    if args.cross_poses_per_scan < 0 or args.cross_count < 0:
        parser.error("--cross-poses-per-scan and --cross-count must be at least 0")
    return args


@dataclass
class Measured:
    """What one run sent and got back."""

    rows: list[Row]  # the dragon's own route
    cross: list[Row]  # the cross-object checks and their control
    notes: list[str]  # setup lines for the report
    has_other: bool
    tracebacks: int


def measure(
    args: argparse.Namespace, scans: Sequence[Scan], sizes: Sequence[str], mesh_path: Path
) -> Measured:
    """Make or use the store, start the service, send every cloud, stop the service."""
    notes = []
    with tempfile.TemporaryDirectory(prefix="real_scans-") as temp:
        folder = Path(temp)
        if args.store is None:
            store, add_seconds = make_store(folder, mesh_path)
            notes.append(
                f"store: a temporary copy of data/objects plus `cloudpose object add {OBJECT} "
                f"{mesh_path.name} --units m --no-train --bench-count 0`, which took {add_seconds:.1f} s"
            )
            progress(f"object add {OBJECT} (--no-train) took {add_seconds:.1f} s")
        else:
            store = args.store.resolve()
            if not (store / OBJECT).is_dir():
                raise SystemExit(f"{store} holds no {OBJECT!r}; leave --store out to make a store with it")
            notes.append(f"store: {store}")
        has_other = (store / OTHER).is_dir()
        log_path = folder / "server.log"
        server = serving.start_server(log_path, port=args.port, extra_args=["--store", str(store)])
        poser = Poser(server.url)
        rows: list[Row] = []
        cross: list[Row] = []
        try:
            info = poser.info(OBJECT)
            symmetry = info.get("symmetry")
            symmetry = symmetry.get("kind", "?") if isinstance(symmetry, dict) else symmetry
            notes.append(
                f"service: `cloudpose serve --store STORE` on {server.url}, one worker; {OBJECT}: model "
                f"{info.get('model_id', '?')}, symmetry {symmetry}; float32 .npy uploads to "
                "/v1/objects/NAME/pose?units=m, one at a time, one keep-alive client; one untimed warm-up"
            )
            _, _, posed, cloud = next(dragon_clouds(scans, 1, sizes[:1], args.seed))
            poser.pose(OBJECT, "warm-up", cloud, posed)

            total = len(sizes) * len(scans) * args.poses_per_scan
            loop_started = time.perf_counter()
            for size, scan, posed, cloud in dragon_clouds(scans, args.poses_per_scan, sizes, args.seed):
                rows.append(poser.pose(OBJECT, size, cloud, posed, scan.name))
                if len(rows) % PROGRESS_EVERY == 0 or len(rows) == total:
                    last = rows[-PROGRESS_EVERY:]
                    right = sum(is_right(row) for row in last)
                    progress(
                        f"{len(rows)}/{total} dragon clouds (size {size}), "
                        f"{time.perf_counter() - loop_started:.0f} s; "
                        f"last {len(last)}: found {sum(row.found for row in last)}, < 5 deg {right}"
                    )

            if has_other and args.cross_poses_per_scan:
                sent = dragon_clouds(scans, args.cross_poses_per_scan, sizes, args.seed)
                for size, scan, _, cloud in sent:
                    cross.append(poser.pose(OTHER, f"posed dragon scans, {size}", cloud, None, scan.name))
            bunnies, bunny_notes = bunny_clouds(args.cross_count, args.seed) if args.cross_count else ([], [])
            notes += bunny_notes
            for route in (OBJECT, OTHER) if has_other else (OBJECT,):
                for kind, cloud in bunnies:
                    cross.append(poser.pose(route, kind, cloud))
            progress(f"{len(cross)} cross-object clouds sent")
        finally:
            poser.close()
            server.stop()
        tracebacks = serving.count_tracebacks(log_path)
        if tracebacks:
            progress(f"the server logged {tracebacks} tracebacks; its log's end:")
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
    if not has_other:
        notes.append(f"the store has no {OTHER}: no cloud was sent to its route")
    return Measured(rows, cross, notes, has_other, tracebacks)


def report_text(
    args: argparse.Namespace,
    scans: Sequence[Scan],
    checks: Sequence[dict],
    measured: Measured,
    summaries: dict[str, dict],
    crosses: Sequence[dict],
    reasons: Sequence[tuple[str, int, str]],
    machine: str,
) -> str:
    """The report in markdown: setup, the per-size, per-scan and cross-object tables, the reasons."""
    sizes = list(summaries)
    medians = [row["aligned_median_mm"] for row in checks]
    backs = [row["posed_back_median_mm"] for row in checks]
    points = [len(scan.points) for scan in scans]
    errors = sum(row.status != 200 for row in measured.rows + measured.cross)
    setup = [
        f"data: {os.path.relpath(args.real.resolve() / 'dragon', REPO_ROOT)}, "
        f"{len(scans)} scans ({min(points)}-{max(points)} points), "
        f"{args.poses_per_scan} random poses each (rotation uniform on SO(3), translation within "
        f"±{TRANSLATION_HALF_RANGE_M} m per axis), seed {args.seed}",
        f"ground truth check: each scan moved by its T lies a median {min(medians):.3f}-{max(medians):.3f} "
        "mm from the mesh surface (point to surface); posed, then moved back by the true answer: "
        f"{min(backs):.3f}-{max(backs):.3f} mm",
        *measured.notes,
        f"{machine}; HTTP errors {errors}; server log tracebacks {measured.tracebacks}",
    ]
    cross_rows = [
        [
            c["route"] + (" (control)" if c["control"] else ""),
            c["sent"],
            c["clouds"],
            fmt(c["found_pct"]),
            fmt(c["fitness_median"], 3),
            fmt(c["server_p50_ms"]),
        ]
        for c in crosses
    ]
    missing = sum(not row.found for row in measured.rows)
    lines = [
        f"# Real dragon scans through HTTP ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        *(f"- {line}" for line in setup),
        "",
        f"## Dragon scans to /v1/objects/{OBJECT}/pose (right = rotation error < {RIGHT_DEG:g} deg)",
        "",
        markdown_table(SIZE_HEADER, size_table_rows(summaries)),
        "",
        "## Per scan: found % / right % (turntable order)",
        "",
        markdown_table(["scan", "points", *sizes], per_scan_rows(measured.rows, scans, sizes)),
        "",
        "## Cross-object checks (another object's clouds should come back found: false; the bunny's "
        "clouds to its own route are the control, they should be found)",
        "",
        markdown_table(CROSS_HEADER, cross_rows, text_columns=2) if cross_rows else "(none sent)",
        "",
        f"## Most common reasons of the dragon's not-found answers ({missing} of {len(measured.rows)}; "
        "numbers as #)",
        "",
        markdown_table(("reason", "answers", "example"), [[p, c, e] for p, c, e in reasons], text_columns=3)
        if reasons
        else "(none)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = parse_sizes(args.sizes)
    mesh_path = args.real.resolve() / "dragon" / MESH_FILE
    if not mesh_path.is_file():
        raise SystemExit(
            f"no dragon/{MESH_FILE} in {args.real.resolve()} (--real names the folder of dragon/)"
        )
    started = time.perf_counter()
    load_before = os.getloadavg()[0]

    scans = load_scans(mesh_path.parent, args.scans)
    checks = check_ground_truth(scans, mesh_path, args.seed)
    medians = [row["aligned_median_mm"] for row in checks]
    progress(f"ground truth: {len(scans)} scans on the mesh, median {min(medians):.3f}-{max(medians):.3f} mm")

    measured = measure(args, scans, sizes, mesh_path)
    summaries = {size: size_summary([row for row in measured.rows if row.kind == size]) for size in sizes}
    crosses = cross_summary(measured.cross)
    reasons = top_reasons(measured.rows)
    machine = (
        f"machine: {os.cpu_count()} CPUs; load average (1 min) {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; whole run {time.perf_counter() - started:.0f} s"
    )
    text = report_text(args, scans, checks, measured, summaries, crosses, reasons, machine)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.out_json:
        report = {
            "config": {
                key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
            },
            "ground_truth": checks,
            "sizes": summaries,
            "per_scan": {
                row[0]: dict(zip(["points", *sizes], row[1:], strict=True))
                for row in per_scan_rows(measured.rows, scans, sizes)
            },
            "cross": crosses,
            "reasons": [{"pattern": p, "count": c, "example": e} for p, c, e in reasons],
            "rows": [asdict(row) for row in measured.rows],
            "cross_rows": [asdict(row) for row in measured.cross],
        }
        args.out_json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
