"""How well any registration can pin down an object's rotation from a noisy cloud: the
Cramér-Rao bound of the ``noisy`` bench set, per object.

The ``noisy`` set (:mod:`pipeline.data.benchsets`) holds 973 surface points with Gaussian noise of
σ = 1 % of the diagonal per axis (and 51 outliers, which carry no information). Along the
surface normal, a point's offset is N(0, σ²), and a small motion (rotation ω about the surface
centroid, translation v) moves it by ``(x × n)·ω + n·v``. The Fisher information of the pose from
N points is therefore ``N · E[J Jᵀ] / σ²`` with ``J = (x × n, n)`` averaged over the surface, and no
unbiased estimator has a smaller covariance than its inverse. The table gives the median and
99th percentile of the rotation error (degrees) that this covariance implies, next to the error
measured for cloudpose, so a bar below the bound is visibly out of reach for the object's shape:
a smooth, nearly ellipsoidal pebble turns its surface along itself, and little of it resists.

    .venv/bin/python benchmarks/noise_bound.py --store data/objects --store artifacts/objects
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudpose.geometry.symmetry import Symmetry  # noqa: E402
from cloudpose.store.package import SHIPPED_STORE, ObjectStore  # noqa: E402
from pipeline.data.benchsets import NOISE_SIGMA, NOISY_POINTS, OUTLIER_FRACTION  # noqa: E402

SAMPLES = 200_000


def rotation_bound_deg(
    points: np.ndarray,
    normals: np.ndarray,
    sigma: float,
    count: int,
    free_axis: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[float, float, np.ndarray]:
    """Median and 99th percentile rotation error (degrees) of the Cramér-Rao bound, and the
    per-axis standard deviations (degrees, about the principal axes of the rotation covariance).

    Args:
        points: (M, 3) surface samples, centred on the surface centroid.
        normals: (M, 3) their unit normals.
        sigma: noise standard deviation along the normal.
        count: informative points per cloud.
        free_axis: (3,) a continuous symmetry axis: turns about it are equally right answers,
            so only the two other rotation directions are bounded.
    """
    directions = np.eye(3)
    if free_axis is not None:
        directions = np.linalg.svd(np.outer(free_axis, free_axis))[0][:, 1:]  # (3, 2) across the axis
    jacobian = np.concatenate([np.cross(points, normals) @ directions, normals], axis=1)  # (M, k + 3)
    information = count * (jacobian.T @ jacobian) / len(jacobian) / sigma**2
    rotations = directions.shape[1]
    covariance = np.linalg.inv(information)[:rotations, :rotations]  # translation marginalized
    rng = np.random.default_rng(seed)
    draws = rng.standard_normal((SAMPLES, rotations)) @ np.linalg.cholesky(covariance).T
    error = np.degrees(np.linalg.norm(draws, axis=1))
    spread = np.degrees(np.sqrt(np.linalg.eigvalsh(covariance)))
    return float(np.median(error)), float(np.percentile(error, 99)), spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", type=Path, help="object store (repeatable)")
    args = parser.parse_args()
    count = NOISY_POINTS - round(OUTLIER_FRACTION * NOISY_POINTS)
    print("| object | symmetry | bound: rotation median ° | bound: p99 ° | per-axis σ ° (principal) |")
    print("| --- | --- | ---: | ---: | --- |")
    for root in args.store or [SHIPPED_STORE]:
        for package in ObjectStore(root).packages():
            surface = package.surface()
            points = surface[:, :3] - surface[:, :3].mean(axis=0)
            normals = surface[:, 3:] / np.linalg.norm(surface[:, 3:], axis=1, keepdims=True)
            symmetry = Symmetry.from_dict(package.meta["symmetry"])
            sigma = NOISE_SIGMA * package.diagonal
            median, p99, spread = rotation_bound_deg(points, normals, sigma, count, symmetry.axis)
            note = symmetry.kind
            if symmetry.axis is not None:
                note += " (turns about the axis are free; the other two are bounded)"
            spread_text = " / ".join(f"{value:.3f}" for value in spread)
            print(f"| {package.name} | {note} | {median:.3f} | {p99:.3f} | {spread_text} |")


if __name__ == "__main__":
    main()
