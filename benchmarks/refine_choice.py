"""Which pose refinement: ICP variants measured on perturbed bunny clouds, plus classical baselines.

Each cloud is sampled on the mesh surface, posed at random, shuffled, optionally made noisy or
partial, and each variant refines the true pose perturbed by a random rotation (up to
``--max-angle`` degrees about a random axis) and translation (up to ``--max-shift`` of the
diagonal). Scenarios:

* ``full``: N = 1024 clean points;
* ``small``: N = 100 clean points;
* ``noisy``: N = 1024, Gaussian noise of sigma 1% of the diagonal, 5% uniform outliers in the
  cloud's bounding box;
* ``partial``: N = 1024 points on one side of a random plane (30-70% of the surface);
* ``wide``: N = 1024 clean points, start 30 to 60 degrees off (the basin of convergence);
* ``partwide``: a partial view as above, start 30 to 60 degrees off;
* ``flipped``: N = 1024 clean points, start turned by 180 degrees about a model principal axis
  (plus the usual perturbation), which only the hypotheses can recover.

Printed per variant and scenario: rotation error median / p99 (degrees), success rate at 5 degrees
and the median wall time per cloud (ms), then FPFH+RANSAC+ICP and PCA+ICP (global methods, no
start pose) at N = 1024 for reference.

Usage::

    .venv/bin/python benchmarks/refine_choice.py [--count 100] [--baseline-count 20] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open3d as o3d
from scipy.spatial.transform import Rotation

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cloudpose.geometry.rotations import geodesic_deg, random_rotations  # noqa: E402
from cloudpose.registration import refine  # noqa: E402
from cloudpose.registration.refine import back_matrix, object_pose  # noqa: E402
from pipeline.data.mesh import load_mesh  # noqa: E402
from pipeline.evaluation import baselines  # noqa: E402

registration = o3d.pipelines.registration
SURFACE_POINTS = 20_000
SCENARIOS = ("full", "small", "noisy", "partial", "wide", "partwide", "flipped")
Refiner = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def make_cloud(
    surface: np.ndarray, diagonal: float, scenario: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An observed cloud and its true object pose (row vectors)."""
    count = 100 if scenario == "small" else 1024
    rotation = random_rotations(rng)
    translation = rng.uniform(-0.5, 0.5, 3) * diagonal
    if scenario in ("partial", "partwide"):
        pool = surface[rng.choice(len(surface), 4 * count, replace=False)]
        direction = random_rotations(rng)[0]  # a uniform unit vector
        side = pool @ direction
        pool = pool[side >= np.quantile(side, 1 - rng.uniform(0.3, 0.7))]
        canonical = pool[rng.permutation(len(pool))[:count]]
    else:
        canonical = surface[rng.choice(len(surface), count, replace=False)]
    observed = canonical @ rotation + translation
    if scenario == "noisy":
        observed = observed + rng.normal(scale=0.01 * diagonal, size=observed.shape)
        outliers = int(round(0.05 * count))
        observed[:outliers] = rng.uniform(observed.min(axis=0), observed.max(axis=0), size=(outliers, 3))
    return observed[rng.permutation(len(observed))], rotation, translation


def perturb(
    rotation: np.ndarray,
    translation: np.ndarray,
    axes: np.ndarray,
    scenario: str,
    args: argparse.Namespace,
    diagonal: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    axis = rng.normal(size=3)
    low, high = (30.0, 60.0) if scenario in ("wide", "partwide") else (0.0, args.max_angle)
    turn = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(rng.uniform(low, high)))
    start = turn.as_matrix() @ rotation  # canonical-frame turn about the object's centre
    if scenario == "flipped":
        flip_axis = axes[rng.integers(3)]
        start = (2 * np.outer(flip_axis, flip_axis) - np.eye(3)) @ start
    shift = rng.normal(size=3)
    shift *= rng.uniform(0, args.max_shift) * diagonal / np.linalg.norm(shift)
    return start, translation + shift


def subsample(points: np.ndarray, count: int) -> np.ndarray:
    if len(points) <= count:
        return points
    return points[np.random.default_rng(0).choice(len(points), count, replace=False)]


SCHEDULE = (0.10, 0.05, 0.025, 0.01)


def open3d_icp(model: refine.SurfaceModel, loss: str) -> Refiner:
    """open3d point-to-plane ICP, 10% -> 1% of the diagonal, 10 iterations a stage, <= 1024 points."""

    def run(observed: np.ndarray, rotation: np.ndarray, translation: np.ndarray):
        source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(subsample(observed, 1024)))
        matrix = back_matrix(rotation, translation)
        for fraction in SCHEDULE:
            distance = fraction * model.diagonal
            kernel = registration.TukeyLoss(k=distance) if loss == "tukey" else registration.L2Loss()
            matrix = registration.registration_icp(
                source,
                model.cloud,
                distance,
                matrix,
                registration.TransformationEstimationPointToPlane(kernel),
                registration.ICPConvergenceCriteria(1e-7, 1e-7, 10),
            ).transformation
        return object_pose(matrix)

    return run


def small_gicp_icp(model: refine.SurfaceModel) -> Refiner:
    """small_gicp point-to-plane ICP (prebuilt tree, estimated model normals), same schedule."""
    import small_gicp

    target = small_gicp.PointCloud(model.points)
    tree = small_gicp.KdTree(target)
    small_gicp.estimate_normals(target, tree)

    def run(observed: np.ndarray, rotation: np.ndarray, translation: np.ndarray):
        source = small_gicp.PointCloud(subsample(observed, 1024))
        matrix = back_matrix(rotation, translation)
        for fraction in SCHEDULE:
            matrix = small_gicp.align(
                target,
                source,
                tree,
                matrix,
                registration_type="PLANE_ICP",
                max_correspondence_distance=fraction * model.diagonal,
                max_iterations=10,
            ).T_target_source
        return object_pose(matrix)

    return run


def cloudpose(model: refine.SurfaceModel, options: dict | None = None, **criteria: object) -> Refiner:
    """refine_pose with keyword ``options`` and ``criteria`` replacing fields of the default
    :class:`~cloudpose.registration.refine.RefineCriteria` (to measure alternatives)."""
    chosen = dataclasses.replace(refine.REFINE_CRITERIA, **criteria)

    def run(observed: np.ndarray, rotation: np.ndarray, translation: np.ndarray):
        options_now = {**(options or {}), "criteria": chosen}
        result = refine.refine_pose(observed, model, rotation, translation, **options_now)
        return result.object_rotation, result.object_translation

    return run


def summarize(errors: list[float], times: list[float]) -> dict[str, float]:
    errors_a = np.asarray(errors)
    return {
        "median_deg": float(np.median(errors_a)),
        "p99_deg": float(np.percentile(errors_a, 99)),
        "success_5deg": float(np.mean(errors_a < 5)),
        "median_ms": float(np.median(times) * 1000),
    }


HEADER = f"{'variant':44s} {'scenario':8s} {'median°':>9s} {'p99°':>9s} {'ok@5°':>7s} {'ms':>8s}"
Results = dict[str, dict[str, dict[str, float]]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100, help="clouds per scenario")
    parser.add_argument(
        "--baseline-count", type=int, default=20, help="clouds per scenario for the baselines"
    )
    parser.add_argument("--max-angle", type=float, default=30.0, help="start rotation error, degrees (max)")
    parser.add_argument("--max-shift", type=float, default=0.05, help="start translation error, of diagonal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args()


def variants_for(model: refine.SurfaceModel, array: np.ndarray, diagonal: float) -> dict[str, Refiner]:
    """The refiners compared, by name, in the order of the table."""
    variants: dict[str, Refiner] = {
        "open3d ICP p2plane Tukey (4 stages)": open3d_icp(model, "tukey"),
        "open3d ICP p2plane L2 (4 stages)": open3d_icp(model, "l2"),
    }
    if refine.small_gicp is not None:
        variants["small_gicp PLANE_ICP (4 stages)"] = small_gicp_icp(model)
    never_doubt = {"doubt_fitness": 0.0}
    variants["cloudpose, fixed 1% kernel, no hypotheses"] = cloudpose(
        model, never_doubt, fine_distance=0.01, fine_kernel_range=(0.01, 0.01)
    )
    variants["cloudpose, stages 10/5/2.5%, no hypotheses"] = cloudpose(
        model, never_doubt, coarse_schedule=(0.10, 0.05, 0.025)
    )
    variants["cloudpose, no hypotheses"] = cloudpose(model, never_doubt)
    variants["cloudpose (open3d index)"] = cloudpose(model)
    if refine.small_gicp is not None:
        fast = refine.SurfaceModel.from_array(array, diagonal, index_backend="small_gicp")
        variants["cloudpose (small_gicp index)"] = cloudpose(fast)
    return variants


def print_preamble(args: argparse.Namespace, build_ms: float) -> None:
    print(f"# refine choice: bunny, surface model {SURFACE_POINTS} points (built in {build_ms:.0f} ms)")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, open3d {o3d.__version__}"
    )
    print(
        f"# starts: up to {args.max_angle:g} deg ('wide', 'partwide': 30-60 deg) "
        f"and {args.max_shift:.0%} of the diagonal off"
    )
    print(f"# {args.count} clouds per scenario")


def print_row(name: str, scenario: str, row: dict[str, float]) -> None:
    print(
        f"{name:44s} {scenario:8s} {row['median_deg']:9.4f} {row['p99_deg']:9.3f} "
        f"{row['success_5deg']:7.1%} {row['median_ms']:8.2f}",
        flush=True,
    )


def compare_variants(
    variants: dict[str, Refiner],
    model: refine.SurfaceModel,
    surface: np.ndarray,
    args: argparse.Namespace,
    results: Results,
) -> None:
    """Every variant refines the same perturbed clouds of each scenario; prints a row per pair."""
    diagonal = model.diagonal
    names = list(variants)
    for scenario in SCENARIOS:
        rng = np.random.default_rng([args.seed, SCENARIOS.index(scenario)])
        errors: dict[str, list[float]] = {name: [] for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        for index in range(args.count):
            observed, rotation, translation = make_cloud(surface, diagonal, scenario, rng)
            start = perturb(rotation, translation, model.axes, scenario, args, diagonal, rng)
            # Every variant refines the same cloud, in a rotating order, so that load on the
            # machine affects them alike.
            for name in names[index % len(names) :] + names[: index % len(names)]:
                began = time.perf_counter()
                estimate, _ = variants[name](observed, *start)
                times[name].append(time.perf_counter() - began)
                errors[name].append(float(geodesic_deg(estimate, rotation)))
        for name in names:
            row = summarize(errors[name], times[name])
            results[name][scenario] = row
            print_row(name, scenario, row)
        print()


def compare_baselines(
    model: refine.SurfaceModel, surface: np.ndarray, args: argparse.Namespace, results: Results
) -> None:
    """The global methods (no start pose) on fresh clouds; prints a row per method and scenario."""
    diagonal = model.diagonal
    for name, method in (("FPFH+RANSAC+ICP", baselines.fpfh_ransac_icp), ("PCA+ICP", baselines.pca_icp)):
        results[name] = {}
        method(make_cloud(surface, diagonal, "full", np.random.default_rng(99))[0], model, 0)  # warm caches
        for scenario in ("full", "noisy", "partial"):
            rng = np.random.default_rng([args.seed, 100 + SCENARIOS.index(scenario)])
            errors, times = [], []
            for index in range(args.baseline_count):
                observed, rotation, _ = make_cloud(surface, diagonal, scenario, rng)
                began = time.perf_counter()
                estimate, _ = method(observed, model, index)
                times.append(time.perf_counter() - began)
                errors.append(float(geodesic_deg(estimate, rotation)))
            row = summarize(errors, times)
            results[name][scenario] = row
            print_row(name, scenario, row)


def main() -> None:
    args = parse_args()
    mesh = load_mesh()
    array = refine.sample_surface_with_normals(
        mesh.vertices, mesh.faces, SURFACE_POINTS, np.random.default_rng(1)
    )
    diagonal = mesh.diagonal
    built = time.perf_counter()
    model = refine.SurfaceModel.from_array(array, diagonal, index_backend="open3d")
    build_ms = (time.perf_counter() - built) * 1000
    # Clouds are drawn from a separate, denser sample so they never share points with the model.
    surface = refine.sample_surface_with_normals(mesh.vertices, mesh.faces, 200_000, np.random.default_rng(2))
    surface = surface[:, :3].astype(np.float64)
    variants = variants_for(model, array, diagonal)

    print_preamble(args, build_ms)
    results: Results = {name: {} for name in variants}
    print(HEADER)
    print("-" * len(HEADER))
    compare_variants(variants, model, surface, args, results)

    print(f"# global baselines (no start pose), {args.baseline_count} clouds each")
    print(HEADER)
    print("-" * len(HEADER))
    compare_baselines(model, surface, args, results)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
