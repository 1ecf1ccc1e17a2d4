"""How well the ``found`` verdict separates right fits from wrong ones, on real and synthetic data.

A pose answer is found when (a) the refined fit's confidence reaches
:data:`cloudpose.estimation.served.FOUND_CONFIDENCE` (``confidence = fitness * (1 - rmse / (0.03 diagonal))``,
:func:`cloudpose.registration.refine.confidence_score`), (b) the fit is *explained*
(:class:`cloudpose.estimation.inference._CloudScatter`: inlier RMSE within
:data:`cloudpose.estimation.inference.EXPLAINED_RATIO` of ``sqrt(scatter^2 + tolerance^2)``, the cloud's own
scatter about its local surface and the object's surface tolerance) and (c) no other pose competes
(part of the search, not measured here). This benchmark refines fits that are right and fits that
are wrong, each from one start and without any search
(``refine_pose(..., search=False, doubt_fitness=0.0, max_points=1024, seed=len(cloud))``, what
the service refines with; the service's later polish of loose fits is not applied), and asks the
verdict ``confidence >= FOUND_CONFIDENCE and explained`` of each.

Fits per cloud (observed cloud, true object pose ``R_gt, t_gt`` in the package's internal frame):

* ``right``: refined from the true pose; counted when it ends < 5 deg (modulo the package's
  symmetry) and < 5 % of the diagonal from the truth, else dropped;
* ``turned``: from the true pose turned about the cloud's centroid by a random rotation of
  20-180 deg (``--turned`` per cloud);
* ``shifted``: from the true pose shifted by 4-8 % of the diagonal along a random direction in
  the plane of the cloud's two largest principal axes, plus a random 10 deg turn about the
  cloud's centroid (``--shifted`` per cloud): a fit that slides along a smooth surface;
* ``near-symmetric``: for packages with ``tuning.near_symmetries`` (turns ``T`` that map the
  object nearly onto itself), from ``(T @ R_gt, t_gt)``, one per turn;
* ``other object (A -> B)``: a cloud of object A, scaled by ``diagonal_B / diagonal_A``,
  registered against B's model from the four proper alignments of principal axes plus
  ``--other-random-starts`` random rotations (centroids matched); the best fit by
  :func:`cloudpose.registration.refine.fit_score` (fitness to two decimals, then the RMSE) is kept,
  as a search
  would answer it.

A turned, shifted or near-symmetric fit is kept as wrong when it does *not* end right (>= 5 deg
from the truth modulo symmetry, or >= 5 % of the diagonal away); one that came back to the truth
is dropped (the ``dropped`` column). Every other-object fit is wrong. (Translation counts: a fit
that slides a long part along itself ends a few degrees but 10-30 % of the diagonal off, and is
as wrong an answer as a turned one.) A wrong fit *competes* with the right fit of its cloud when
:func:`cloudpose.registration.refine.competes` says so (fitness within 0.03, RMSE within 1.5 times):
a view that
several poses explain, which the search's ambiguity check (c) must refuse, as no residual test
can; it lies *on a near-symmetric copy* when it ends < 5 deg from ``T @ R_gt`` for a near
symmetry ``T``.

Per fit: fitness, inlier RMSE (% of the diagonal), the cloud's scatter (% of the diagonal,
:func:`cloudpose.registration.refine.surface_noise` on <= 4096 points), ``ratio = rmse / sqrt(scatter^2 +
tolerance^2)``, confidence, explained, found (= confidence >= FOUND_CONFIDENCE and explained).

Data:

* real: the Stanford dragon's single-view laser scans (``DIR/dragon/scans/*.npy``, metres, the
  scanner's frame; ``--real``, by default ``../shared/real`` beside the repository, read-only).
  ``poses.json`` gives per scan ``T`` with ``x_mesh = T3 @ x_scan + t`` (column vectors). A scan
  posed at random, ``observed = scan @ A + b`` (``A`` uniform on SO(3), ``b`` uniform in +-0.5 m),
  has the object pose ``R = T3 @ A``, ``t_file = b - t @ R`` (``observed = canonical_file @ R +
  t_file``), and in the internal frame (file minus the mesh centroid ``c``) ``t = t_file + c @ R``.
  At start-up every real cloud is measured at its true pose (before any refinement): its fitness
  must be >= 0.95 and its inlier RMSE <= 0.3 % of the diagonal (the data's README: about 0.1 %),
  else the run stops. ``--poses-per-scan`` poses per scan, each at every ``--sizes`` entry (N
  points drawn at random, or ``full``). The dragon package is made in a temporary store with
  ``cloudpose object add dragon dragon_vrip_res3.ply --units m --no-train --bench-count 0``
  (or taken from ``--store``). Other-object fits of the real rows: every dragon cloud scaled to
  the bunny's size against the bunny (``data/objects/bunny``), and ``--other-count`` single
  rendered views of the bunny (``pipeline.data.benchsets`` set ``partial``, N of their points or all)
  scaled to the dragon's size against the dragon.
* synthetic: the bunny and objects of ``benchmarks/make_objects.py`` (``--objects``; made in a
  temporary store with ``pipeline.objects.adding.add_object(..., units="mm", train=False,
  bench_count=0)`` unless ``--store`` holds them) on the seeded sets of
  :mod:`pipeline.data.benchsets` (``--sets``, ``--count`` cases each; their poses are in the frame of
  ``pipeline.data.mesh.load_mesh``, the file's frame minus the surface centroid: the package's internal
  frame, checked at start-up). Other-object fits: the first ``--other-count`` cases of each set of
  the next object in ``--objects`` (the lever for the bunny and the bunny for any other when only
  one object is listed), scaled, against this object.

Printed (and written with ``--markdown``): (1) per data set (real dragon per size, synthetic per
object) and fit kind: fits, dropped, found %, p10 / median / p90 of fitness, RMSE % and ratio;
(2) a summary, real vs synthetic: right fits found %, wrong fits found %, the worst wrong kind,
and how many found wrong fits compete with their cloud's right fit and how many are worse than it;
(3) the margin of EXPLAINED_RATIO per data set: the largest ratio among right fits and the
smallest ratio among wrong fits with confidence >= FOUND_CONFIDENCE; (4) synthetic per set;
(5) every wrong fit the verdict finds; (6) the right fits it refuses. ``--out-json`` writes every
fit.

Usage::

    .venv/bin/python benchmarks/honesty.py [--real ../shared/real] [--store STORE]
        [--scans 15] [--poses-per-scan 2] [--sizes 1024,4096,full]
        [--objects bunny,lever,box,cylinder,pebble] [--sets shuffled,noisy,partial,partial_noisy]
        [--count 30] [--other-count 10] [--other-random-starts 4] [--turned 3] [--shifted 2]
        [--seed 0] [--no-real] [--no-synthetic] [--markdown honesty.md] [--out-json honesty.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_scans import Scan, load_scans, parse_sizes  # noqa: E402

from cloudpose.estimation.inference import EXPLAINED_RATIO, _CloudScatter  # noqa: E402
from cloudpose.estimation.served import FOUND_CONFIDENCE  # noqa: E402
from cloudpose.geometry.rotations import random_rotations  # noqa: E402
from cloudpose.geometry.symmetry import Symmetry  # noqa: E402
from cloudpose.registration.refine import (  # noqa: E402
    INLIER_DISTANCE,
    SurfaceModel,
    competes,
    fit_score,
    principal_axes,
    refine_pose,
)
from cloudpose.store.package import ObjectPackage, ObjectStore  # noqa: E402

DEFAULT_REAL = REPO_ROOT.parent / "shared" / "real"
SHIPPED_STORE = REPO_ROOT / "data" / "objects"
DRAGON, BUNNY = "dragon", "bunny"
DRAGON_MESH = "dragon_vrip_res3.ply"
TRANSLATION_HALF_RANGE_M = 0.5
DEFAULT_OBJECTS = ("bunny", "lever", "box", "cylinder", "pebble")
DEFAULT_SETS = ("shuffled", "noisy", "partial", "partial_noisy")

RIGHT_DEG = 5.0
RIGHT_TRANSLATION = 0.05  # of the diagonal
TURNED_DEG = (20.0, 180.0)
SHIFT_RANGE = (0.04, 0.08)  # of the diagonal
SHIFT_TURN_DEG = 10.0
MAX_POINTS = 1024  # what the service refines on (cloudpose.estimation.inference.REFINE_MAX_POINTS)

# Start-up check of the real ground truth: the true pose, unrefined (the README: ~0.1 %).
REAL_START_FITNESS = 0.95
REAL_START_RMSE = 0.003  # of the diagonal
# Synthetic sets: noise-free clouds lie on the mesh, the noisy ones 1 % (sigma) off it.
SYNTH_START_FITNESS = 0.8
SYNTH_START_RMSE = 0.015
START_CHECK_POINTS = 4096

RIGHT, TURNED, SHIFTED, NEAR = "right", "turned", "shifted", "near-symmetric"
OTHER = "other object"
KIND_ORDER = (RIGHT, TURNED, SHIFTED, NEAR, OTHER)

TABLE_HEADER = (
    "data", "kind", "fits", "dropped", "found %",
    "fitness p10", "fitness med", "fitness p90",
    "RMSE % p10", "RMSE % med", "RMSE % p90",
    "ratio p10", "ratio med", "ratio p90",
)  # fmt: skip
SUMMARY_HEADER = (
    "data", "clouds", "right fits", "right found %", "wrong fits", "wrong found %",
    "worst wrong kind", "its found %", "wrong found, competing with the right fit",
    "wrong found, worse than the right fit",
)  # fmt: skip
MARGIN_HEADER = (
    "data", "right fits", "largest right ratio", "wrong fits conf >= found",
    "smallest such ratio", "EXPLAINED_RATIO",
)  # fmt: skip
SET_HEADER = (
    "set", "right fits", "right found %", "largest right ratio", "wrong fits", "wrong found %",
    "smallest wrong ratio (conf >= found)",
)  # fmt: skip
FIT_HEADER = (
    "data", "kind", "cloud", "fitness", "RMSE %", "scatter %", "ratio", "confidence",
    "rot err (deg)", "transl err %", "on near-sym copy", "competes with right fit",
)  # fmt: skip
MAX_LISTED = 25


# Objects ---------------------------------------------------------------------------------------


@dataclass
class Target:
    """An object's package as the service's verdict sees it."""

    name: str
    package: ObjectPackage
    model: SurfaceModel
    symmetry: Symmetry
    tolerance: float  # surface tolerance, mesh units
    near: np.ndarray  # (K, 3, 3) near symmetries, internal frame
    tree: object  # cKDTree of the model's points, for the start-up checks

    @property
    def diagonal(self) -> float:
        return self.package.diagonal

    @classmethod
    def of(cls, package: ObjectPackage) -> Target:
        from scipy.spatial import cKDTree

        from cloudpose.estimation.inference import DEFAULT_SURFACE_TOLERANCE

        model = SurfaceModel.from_array(package.surface(), package.diagonal)
        tolerance = package.surface_tolerance
        if tolerance is None:
            tolerance = DEFAULT_SURFACE_TOLERANCE * package.diagonal
        near = np.asarray(package.tuning.get("near_symmetries", []), dtype=np.float64).reshape(-1, 3, 3)
        return cls(
            package.name,
            package,
            model,
            Symmetry.from_dict(package.meta["symmetry"]),
            float(tolerance),
            near,
            cKDTree(model.points),
        )

    def start_fit(
        self, cloud: np.ndarray, rotation: np.ndarray, translation: np.ndarray
    ) -> tuple[float, float]:
        """Fitness and inlier RMSE (fraction of the diagonal) of a pose as given, unrefined: the
        cloud moved back into the internal frame, each point's nearest model point, inliers
        within the refinement's inlier distance, point-to-plane RMSE."""
        if len(cloud) > START_CHECK_POINTS:
            cloud = cloud[np.random.default_rng(0).choice(len(cloud), START_CHECK_POINTS, replace=False)]
        canonical = (cloud - translation) @ rotation.T
        distance, index = self.tree.query(canonical)
        inliers = distance <= INLIER_DISTANCE * self.diagonal
        if not inliers.any():
            return 0.0, math.inf
        offsets = canonical[inliers] - self.model.points[index[inliers]]
        along = np.einsum("ij,ij->i", offsets, self.model.normals[index[inliers]])
        return float(inliers.mean()), float(np.sqrt(np.mean(along**2)) / self.diagonal)

    def error(
        self,
        rotation: np.ndarray,
        translation: np.ndarray,
        gt_rotation: np.ndarray,
        gt_translation: np.ndarray,
    ) -> tuple[float, float]:
        """Rotation error (deg, modulo symmetry) and translation error (fraction of the diagonal)."""
        degrees = self.symmetry.error_deg(rotation, gt_rotation)
        return float(degrees), float(np.linalg.norm(translation - gt_translation) / self.diagonal)


def cloudpose_command() -> list[str]:
    script = Path(sys.executable).parent / "cloudpose"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


def add_dragon(store: Path, mesh_path: Path, runs_dir: Path) -> None:
    command = [
        *cloudpose_command(), "object", "add", DRAGON, str(mesh_path), "--units", "m", "--no-train",
        "--bench-count", "0", "--store", str(store), "--runs-dir", str(runs_dir),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


class Objects:
    """Packages by name: from ``--store`` when it holds them, the shipped store for the bunny,
    else made in a temporary store (the dragon with the CLI, make_objects' meshes in process)."""

    def __init__(self, folder: Path, user_store: Path | None, real: Path) -> None:
        self.folder = folder
        self.user = ObjectStore(user_store) if user_store is not None else None
        self.shipped = ObjectStore(SHIPPED_STORE)
        self.made = ObjectStore(folder / "store")
        self.real = real
        self.meshes: dict[str, Path] | None = None
        self.targets: dict[str, Target] = {}
        self.notes: list[str] = []

    def package(self, name: str) -> ObjectPackage:
        if name in self.made:
            return self.made.get(name)
        for store in (self.user, self.shipped if name == BUNNY else None):
            if store is not None and name in store:
                self.notes.append(f"{name}: the package in {os.path.relpath(store.root, REPO_ROOT)}")
                return store.get(name)
        started = time.perf_counter()
        if name == DRAGON:
            add_dragon(self.folder / "store", self.real / "dragon" / DRAGON_MESH, self.folder / "runs")
            how = f"`cloudpose object add {DRAGON} {DRAGON_MESH} --units m --no-train --bench-count 0`"
        else:
            if self.meshes is None:
                import make_objects

                self.meshes = make_objects.make_objects(self.folder / "meshes")
            if name not in self.meshes:
                raise SystemExit(f"no object {name!r}: choose bunny or one of {', '.join(self.meshes)}")
            from pipeline.objects.adding import add_object

            add_object(
                name, self.meshes[name], store=self.made, units="mm", train=False, bench_count=0,
                runs_dir=self.folder / "runs",
            )  # fmt: skip
            how = f"make_objects' {self.meshes[name].name} added with add_object(units='mm', train=False)"
        self.notes.append(f"{name}: {how}, in a temporary store ({time.perf_counter() - started:.1f} s)")
        return self.made.get(name)

    def target(self, name: str) -> Target:
        if name not in self.targets:
            self.targets[name] = Target.of(self.package(name))
        return self.targets[name]


# Fits ------------------------------------------------------------------------------------------


@dataclass
class Fit:
    """One refined fit and the verdict's view of it."""

    data: str  # "real dragon 1024", "synthetic lever"
    group: str  # "real" or "synthetic"
    kind: str  # right, turned, shifted, near-symmetric, other object (A -> B)
    cloud: str
    set: str | None
    points: int
    model: str
    fitness: float
    rmse_percent: float | None  # None when unrefined
    scatter_percent: float
    tolerance_percent: float
    ratio: float | None
    confidence: float
    explained: bool
    found: bool
    rotation_error_deg: float | None = None
    translation_error_percent: float | None = None
    kept: bool = True  # False: dropped (a right start that ended wrong, a wrong one that came back)
    near_copy: bool | None = None  # ended < 5 deg from a near-symmetric copy (None: the object has none)
    # A wrong fit about as good as the right fit of its cloud (cloudpose.registration.refine.competes: fitness
    # within 0.03, RMSE within 1.5 times): a view that several poses explain, which only the
    # search's ambiguity check (c) can refuse, not the residual test.
    competes_right: bool = False

    @property
    def confident(self) -> bool:
        return self.confidence >= FOUND_CONFIDENCE

    @property
    def base_kind(self) -> str:
        return OTHER if self.kind.startswith(OTHER) else self.kind


def _rng(seed: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(key).encode()) for key in keys)])


def random_axis(rng: np.random.Generator) -> np.ndarray:
    axis = rng.normal(size=3)
    return axis / np.linalg.norm(axis)


def turn(axis: np.ndarray, degrees: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.radians(degrees) * axis).as_matrix()


def turned_about(
    rotation: np.ndarray, translation: np.ndarray, motion: np.ndarray, centre: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The posed model turned by ``motion`` (row vectors) about ``centre``:
    ``x -> (x - centre) @ motion + centre`` applied to ``canonical @ R + t``."""
    return rotation @ motion, (translation - centre) @ motion + centre


class Verdict:
    """Refines fits of one cloud against one object and asks the verdict of each."""

    def __init__(self, target: Target, cloud: np.ndarray) -> None:
        self.target = target
        self.cloud = cloud
        self.scatter = _CloudScatter(cloud, target.tolerance)
        self.expected = self.scatter.expected()  # sqrt(scatter^2 + tolerance^2), mesh units

    def refine(self, rotation: np.ndarray, translation: np.ndarray):
        return refine_pose(
            self.cloud, self.target.model, rotation, translation, search=False, doubt_fitness=0.0,
            max_points=MAX_POINTS, seed=len(self.cloud),
        )  # fmt: skip

    def fit(self, refinement, **fields) -> Fit:
        diagonal = self.target.diagonal
        refined = bool(refinement.refined) and math.isfinite(refinement.inlier_rmse)
        explained = bool(self.scatter.explains(refinement, diagonal))
        return Fit(
            points=len(self.cloud),
            model=self.target.name,
            fitness=float(refinement.fitness),
            rmse_percent=100.0 * refinement.inlier_rmse / diagonal if refined else None,
            scatter_percent=100.0 * float(self.scatter.noise) / diagonal,
            tolerance_percent=100.0 * self.target.tolerance / diagonal,
            ratio=float(refinement.inlier_rmse / self.expected) if refined else None,
            confidence=float(refinement.confidence),
            explained=explained,
            found=bool(refinement.confidence >= FOUND_CONFIDENCE and explained),
            **fields,
        )


def object_fits(
    target: Target,
    cloud: np.ndarray,
    gt_rotation: np.ndarray,
    gt_translation: np.ndarray,
    rng: np.random.Generator,
    labels: dict,
    turned: int,
    shifted: int,
) -> list[Fit]:
    """The right fit and the wrong fits (turned, shifted, near-symmetric) of one cloud."""
    verdict = Verdict(target, cloud)
    centre = cloud.mean(axis=0)
    starts: list[tuple[str, np.ndarray, np.ndarray]] = [(RIGHT, gt_rotation, gt_translation)]
    for _ in range(turned):
        motion = turn(random_axis(rng), rng.uniform(*TURNED_DEG))
        starts.append((TURNED, *turned_about(gt_rotation, gt_translation, motion, centre)))
    if shifted:
        axes = principal_axes(cloud)[1]
    for _ in range(shifted):
        angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = np.cos(angle) * axes[0] + np.sin(angle) * axes[1]
        step = rng.uniform(*SHIFT_RANGE) * target.diagonal * direction
        rotation, translation = turned_about(
            gt_rotation, gt_translation, turn(random_axis(rng), SHIFT_TURN_DEG), centre
        )
        starts.append((SHIFTED, rotation, translation + step))
    for near in target.near:
        starts.append((NEAR, near @ gt_rotation, gt_translation))
    fits = []
    for kind, rotation, translation in starts:
        refinement = verdict.refine(rotation, translation)
        degrees, shift = target.error(
            refinement.object_rotation, refinement.object_translation, gt_rotation, gt_translation
        )
        right = refinement.refined and degrees < RIGHT_DEG and shift < RIGHT_TRANSLATION
        near_copy = None
        if len(target.near):  # the copies' translations differ too: the turns are near, not exact
            near_copy = bool(refinement.refined) and any(
                target.symmetry.error_deg(refinement.object_rotation, near @ gt_rotation) < RIGHT_DEG
                for near in target.near
            )
        if kind == RIGHT:
            right_refinement = refinement
        rival = bool(kind != RIGHT and right_refinement.refined and competes(refinement, right_refinement))
        fits.append(
            verdict.fit(
                refinement,
                kind=kind,
                rotation_error_deg=degrees,
                translation_error_percent=100.0 * shift,
                kept=right if kind == RIGHT else not right,
                near_copy=near_copy,
                competes_right=rival,
                **labels,
            )  # fmt: skip
        )
    return fits


def other_object_fit(
    target: Target,
    cloud: np.ndarray,
    source: str,
    source_diagonal: float,
    rng: np.random.Generator,
    random_starts: int,
    labels: dict,
) -> Fit:
    """Another object's cloud, scaled to this object's size, registered from the principal axes'
    alignments and ``random_starts`` random rotations; the best fit by fitness, then RMSE."""
    scaled = cloud * (target.diagonal / source_diagonal)
    verdict = Verdict(target, scaled)
    cloud_centre, cloud_axes = principal_axes(scaled)
    model_centre = target.model.points.mean(axis=0)
    model_axes = target.model.axes
    rotations = []
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        rotation = model_axes.T @ np.diag(signs) @ cloud_axes
        if np.linalg.det(rotation) < 0:
            rotation = model_axes.T @ np.diag(signs) @ np.diag((1, 1, -1)) @ cloud_axes
        rotations.append(rotation)
    rotations += list(random_rotations(rng, random_starts)) if random_starts else []
    best = None
    for rotation in rotations:
        refinement = verdict.refine(rotation, cloud_centre - model_centre @ rotation)
        if best is None or fit_score(refinement.fitness, refinement.inlier_rmse) > fit_score(
            best.fitness, best.inlier_rmse
        ):
            best = refinement
    return verdict.fit(best, kind=f"{OTHER} ({source} -> {target.name})", **labels)


# Real data -------------------------------------------------------------------------------------


def posed_scan(scan: Scan, scan_index: int, pose_index: int, seed: int, centroid: np.ndarray):
    """``observed = scan @ A + b`` and its object pose in the internal frame.

    ``canonical_file = scan @ T3.T + t`` and ``scan = (observed - b) @ A.T``, so
    ``canonical_file = observed @ (A.T @ T3.T) + t - b @ (A.T @ T3.T)``; the object pose
    (``observed = canonical_file @ R + t_file``) inverts it: ``R = T3 @ A``, ``t_file = b - t @ R``;
    internally ``canonical_internal = canonical_file - centroid``, so ``t_internal = t_file +
    centroid @ R``."""
    rng = np.random.default_rng([seed, scan_index, pose_index])
    motion = random_rotations(rng)
    shift = rng.uniform(-TRANSLATION_HALF_RANGE_M, TRANSLATION_HALF_RANGE_M, 3)
    observed = scan.points @ motion + shift
    rotation = scan.rotation @ motion
    translation = shift - scan.translation @ rotation + centroid @ rotation
    return observed, rotation, translation


def of_size(points: np.ndarray, size: str, rng: np.random.Generator) -> np.ndarray:
    if size == "full" or int(size) >= len(points):
        return points
    return points[rng.choice(len(points), int(size), replace=False)]


def real_fits(args: argparse.Namespace, objects: Objects, progress: Callable[[str], None]) -> list[Fit]:
    from pipeline.data.benchsets import make_set
    from pipeline.data.mesh import load_mesh

    dragon, bunny = objects.target(DRAGON), objects.target(BUNNY)
    scans = load_scans(args.real / "dragon", args.scans)
    sizes = parse_sizes(args.sizes)
    clouds = []
    for scan_index, scan in enumerate(scans):
        for pose_index in range(args.poses_per_scan):
            observed, rotation, translation = posed_scan(
                scan, scan_index, pose_index, args.seed, dragon.package.centroid
            )
            fitness, rmse = dragon.start_fit(observed, rotation, translation)
            if not (fitness >= REAL_START_FITNESS and rmse <= REAL_START_RMSE):
                raise SystemExit(
                    f"{scan.name} pose {pose_index}: at its true pose the scan fits the dragon with fitness "
                    f"{fitness:.3f} and RMSE {100 * rmse:.3f} % of the diagonal (expected >= "
                    f"{REAL_START_FITNESS} and <= {100 * REAL_START_RMSE} %): wrong pose convention?"
                )
            clouds.append((scan, scan_index, pose_index, observed, rotation, translation, fitness, rmse))
    starts = np.array([(item[6], 100 * item[7]) for item in clouds])
    progress(
        f"real: {len(clouds)} posed scans checked at their true pose: fitness min {starts[:, 0].min():.3f}, "
        f"RMSE median {np.median(starts[:, 1]):.3f} % of the diagonal (max {starts[:, 1].max():.3f} %)"
    )
    bunny_views = make_set("partial", load_mesh(bunny.package.mesh_path), args.other_count, args.seed)
    fits: list[Fit] = []
    for size in sizes:
        started = time.perf_counter()
        data = f"real dragon {size}"
        for scan, scan_index, pose_index, observed, rotation, translation, *_ in clouds:
            cloud = of_size(observed, size, _rng(args.seed, "size", scan_index, pose_index, size))
            labels = {"data": data, "group": "real", "cloud": f"{scan.name} pose {pose_index}", "set": None}
            rng = _rng(args.seed, "real", scan_index, pose_index, size)
            fits += object_fits(dragon, cloud, rotation, translation, rng, labels, args.turned, args.shifted)
            fits.append(
                other_object_fit(bunny, cloud, DRAGON, dragon.diagonal, rng, args.other_random_starts, labels)
            )
        for index, case in enumerate(bunny_views):
            rng = _rng(args.seed, "bunny view", index, size)
            cloud = of_size(case.observed, size, rng)
            labels = {"data": data, "group": "real", "cloud": f"bunny partial #{index}", "set": "partial"}
            fits.append(
                other_object_fit(dragon, cloud, BUNNY, bunny.diagonal, rng, args.other_random_starts, labels)
            )
        progress(
            f"{data}: {sum(fit.data == data for fit in fits)} fits in {time.perf_counter() - started:.1f} s"
        )
    return fits


# Synthetic data --------------------------------------------------------------------------------


def synthetic_fits(args: argparse.Namespace, objects: Objects, progress: Callable[[str], None]) -> list[Fit]:
    from pipeline.data.benchsets import make_set
    from pipeline.data.mesh import load_mesh

    names = [name.strip() for name in args.objects.split(",") if name.strip()]
    set_names = [name.strip() for name in args.sets.split(",") if name.strip()]
    if not names or not set_names:
        raise SystemExit("--objects and --sets need at least one name each")
    cases: dict[str, dict[str, list]] = {}

    def sets_of(name: str) -> dict[str, list]:
        if name not in cases:
            target = objects.target(name)
            mesh = load_mesh(target.package.mesh_path)
            if np.linalg.norm(mesh.offset - target.package.centroid) > 1e-6 * target.diagonal:
                raise SystemExit(
                    f"{name}: load_mesh's centroid {mesh.offset} is not the package's "
                    f"{target.package.centroid}"
                )
            count = max(args.count, args.other_count)
            cases[name] = {set_name: make_set(set_name, mesh, count, args.seed) for set_name in set_names}
        return cases[name]

    fits: list[Fit] = []
    for position, name in enumerate(names):
        started = time.perf_counter()
        target = objects.target(name)
        if len(names) > 1:
            source = names[(position + 1) % len(names)]
        else:
            source = "lever" if name == BUNNY else BUNNY
        data = f"synthetic {name}"
        checks = []
        for set_name, set_cases in sets_of(name).items():
            for index, case in enumerate(set_cases[: args.count]):
                checks.append(target.start_fit(case.observed, case.object_rotation, case.object_translation))
                labels = {
                    "data": data,
                    "group": "synthetic",
                    "cloud": f"{set_name} #{index}",
                    "set": set_name,
                }
                rng = _rng(args.seed, "synthetic", name, set_name, index)
                fits += object_fits(
                    target, case.observed, case.object_rotation, case.object_translation, rng, labels,
                    args.turned, args.shifted,
                )  # fmt: skip
        checks = np.array(checks)
        fitness, rmse = np.median(checks[:, 0]), 100 * np.median(checks[:, 1])
        if not (fitness >= SYNTH_START_FITNESS and rmse <= 100 * SYNTH_START_RMSE):
            raise SystemExit(
                f"{name}: at their true poses the set clouds fit with median fitness {fitness:.3f} "
                f"and RMSE {rmse:.3f} % of the diagonal: wrong frame?"
            )
        source_target = objects.target(source)
        for set_name, set_cases in sets_of(source).items():
            for index, case in enumerate(set_cases[: args.other_count]):
                labels = {
                    "data": data,
                    "group": "synthetic",
                    "cloud": f"{source} {set_name} #{index}",
                    "set": set_name,
                }
                rng = _rng(args.seed, "other", name, source, set_name, index)
                fits.append(
                    other_object_fit(
                        target,
                        case.observed,
                        source,
                        source_target.diagonal,
                        rng,
                        args.other_random_starts,
                        labels,
                    )
                )
        progress(
            f"{data}: {sum(fit.data == data for fit in fits)} fits in {time.perf_counter() - started:.1f} s "
            f"(true poses: median fitness {fitness:.3f}, RMSE {rmse:.3f} %)"
        )
    return fits


# Tables ----------------------------------------------------------------------------------------


def _percent(part: int, whole: int) -> str:
    return "-" if whole == 0 else f"{100.0 * part / whole:.1f}"


def _quantiles(values: Iterable[float | None], digits: int) -> list[str]:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return ["-", "-", "-"]
    return [f"{value:.{digits}f}" for value in np.percentile(finite, [10, 50, 90])]


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _kind_order(kind: str) -> tuple[int, str]:
    base = OTHER if kind.startswith(OTHER) else kind
    return KIND_ORDER.index(base), kind


def _datas(fits: Sequence[Fit]) -> list[str]:
    return list(dict.fromkeys(fit.data for fit in fits))


def kind_rows(fits: Sequence[Fit]) -> list[list[str]]:
    rows = []
    for data in _datas(fits):
        of_data = [fit for fit in fits if fit.data == data]
        for kind in sorted({fit.kind for fit in of_data}, key=_kind_order):
            group = [fit for fit in of_data if fit.kind == kind]
            kept = [fit for fit in group if fit.kept]
            rows.append(
                [
                    data, kind, str(len(kept)), str(len(group) - len(kept)),
                    _percent(sum(fit.found for fit in kept), len(kept)),
                    *_quantiles((fit.fitness for fit in kept), 3),
                    *_quantiles((fit.rmse_percent for fit in kept), 3),
                    *_quantiles((fit.ratio for fit in kept), 2),
                ]
            )  # fmt: skip
    return rows


def _worst_kind(wrong: Sequence[Fit]) -> tuple[str, str]:
    if not wrong:
        return "-", "-"
    shares = {}
    for kind in {fit.base_kind for fit in wrong}:
        group = [fit for fit in wrong if fit.base_kind == kind]
        shares[kind] = (sum(fit.found for fit in group) / len(group), len(group))
    kind = max(sorted(shares), key=lambda key: shares[key])
    return kind, f"{100.0 * shares[kind][0]:.1f}"


def summary_rows(fits: Sequence[Fit]) -> list[list[str]]:
    rows = []
    for group_name in ("real", "synthetic"):
        group = [fit for fit in fits if fit.group == group_name and fit.kept]
        if not group:
            continue
        right = [fit for fit in group if fit.kind == RIGHT]
        wrong = [fit for fit in group if fit.kind != RIGHT]
        clouds = len({(fit.data, fit.cloud) for fit in right})
        rows.append(
            [
                group_name, str(clouds),
                str(len(right)), _percent(sum(fit.found for fit in right), len(right)),
                str(len(wrong)), _percent(sum(fit.found for fit in wrong), len(wrong)), *_worst_kind(wrong),
                str(sum(fit.found and fit.competes_right for fit in wrong)),
                str(sum(fit.found and not fit.competes_right for fit in wrong)),
            ]
        )  # fmt: skip
    return rows


def _margin(fits: Sequence[Fit]) -> tuple[list[Fit], float | None, list[Fit], float | None]:
    right = [fit for fit in fits if fit.kept and fit.kind == RIGHT]
    confident = [
        fit for fit in fits if fit.kept and fit.kind != RIGHT and fit.confident and fit.ratio is not None
    ]
    largest = max((fit.ratio for fit in right if fit.ratio is not None), default=None)
    smallest = min((fit.ratio for fit in confident), default=None)
    return right, largest, confident, smallest


def margin_rows(fits: Sequence[Fit]) -> list[list[str]]:
    rows = []
    for data in _datas(fits):
        right, largest, confident, smallest = _margin([fit for fit in fits if fit.data == data])
        rows.append(
            [
                data,
                str(len(right)),
                _fmt(largest, 2),
                str(len(confident)),
                _fmt(smallest, 2),
                f"{EXPLAINED_RATIO:g}",
            ]
        )
    return rows


def set_rows(fits: Sequence[Fit]) -> list[list[str]]:
    rows = []
    synthetic = [fit for fit in fits if fit.group == "synthetic"]
    for set_name in dict.fromkeys(fit.set for fit in synthetic):
        group = [fit for fit in synthetic if fit.set == set_name and fit.kept]
        right = [fit for fit in group if fit.kind == RIGHT]
        wrong = [fit for fit in group if fit.kind != RIGHT]
        _, largest, _, smallest = _margin(group)
        rows.append(
            [
                str(set_name), str(len(right)), _percent(sum(fit.found for fit in right), len(right)),
                _fmt(largest, 2), str(len(wrong)), _percent(sum(fit.found for fit in wrong), len(wrong)),
                _fmt(smallest, 2),
            ]
        )  # fmt: skip
    return rows


def fit_row(fit: Fit) -> list[str]:
    return [
        fit.data, fit.kind, fit.cloud, f"{fit.fitness:.3f}", _fmt(fit.rmse_percent, 3),
        f"{fit.scatter_percent:.3f}", _fmt(fit.ratio, 2), f"{fit.confidence:.3f}",
        _fmt(fit.rotation_error_deg, 1), _fmt(fit.translation_error_percent, 2),
        "-" if fit.near_copy is None else ("yes" if fit.near_copy else "no"),
        "-" if fit.kind == RIGHT or fit.kind.startswith(OTHER) else ("yes" if fit.competes_right else "no"),
    ]  # fmt: skip


def report(fits: Sequence[Fit], notes: Sequence[str]) -> str:
    wrong_found = [fit for fit in fits if fit.kept and fit.kind != RIGHT and fit.found]
    # The verdict's own misses first (not competing with the right fit), the most confident first.
    wrong_found.sort(key=lambda fit: (fit.competes_right, -fit.confidence))
    right_refused = [fit for fit in fits if fit.kept and fit.kind == RIGHT and not fit.found]
    right_refused.sort(key=lambda fit: -(fit.ratio or math.inf))
    parts = [
        "# Honesty of the found verdict",
        f"found = confidence >= {FOUND_CONFIDENCE:g} and explained (ratio = RMSE / sqrt(scatter^2 + "
        f"tolerance^2) <= {EXPLAINED_RATIO:g}); fits refined from one start, without search. "
        f"Right: < {RIGHT_DEG:g} deg and < {100 * RIGHT_TRANSLATION:g} % of the diagonal from the truth "
        "(modulo symmetry); dropped: right starts that ended wrong, wrong starts that came back right. "
        "A wrong fit competes with the right one when cloudpose.registration.refine.competes says so "
        "(the ambiguity "
        "check's business, not the residual test's).",
        *(f"- {note}" for note in notes),
        "## By data and fit kind",
        _markdown(TABLE_HEADER, kind_rows(fits)),
        "## Summary",
        _markdown(SUMMARY_HEADER, summary_rows(fits)),
        "## Margin of EXPLAINED_RATIO",
        "Largest ratio among right fits; smallest ratio among wrong fits whose confidence alone would "
        "pass (>= FOUND_CONFIDENCE).",
        _markdown(MARGIN_HEADER, margin_rows(fits)),
    ]
    if any(fit.group == "synthetic" for fit in fits):
        parts += ["## Synthetic per set", _markdown(SET_HEADER, set_rows(fits))]
    parts += [f"## Wrong fits found ({len(wrong_found)})"]
    parts += [
        _markdown(FIT_HEADER, [fit_row(fit) for fit in wrong_found[:MAX_LISTED]]) if wrong_found else "none"
    ]
    if len(wrong_found) > MAX_LISTED:
        parts.append(f"({len(wrong_found) - MAX_LISTED} more in --out-json)")
    parts += [f"## Right fits not found ({len(right_refused)})"]
    parts += [
        _markdown(FIT_HEADER, [fit_row(fit) for fit in right_refused[:MAX_LISTED]])
        if right_refused
        else "none"
    ]
    if len(right_refused) > MAX_LISTED:
        parts.append(f"({len(right_refused) - MAX_LISTED} more in --out-json)")
    return "\n\n".join(parts) + "\n"


# Main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="real data folder (../shared/real)")
    parser.add_argument(
        "--store", type=Path, default=None, help="store to take packages from when it holds them"
    )
    parser.add_argument("--scans", type=int, default=15)
    parser.add_argument("--poses-per-scan", type=int, default=2)
    parser.add_argument("--sizes", default="1024,4096,full")
    parser.add_argument("--objects", default=",".join(DEFAULT_OBJECTS))
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS))
    parser.add_argument("--count", type=int, default=30, help="cases per synthetic set")
    parser.add_argument("--other-count", type=int, default=10, help="other-object clouds per real size / set")
    parser.add_argument("--other-random-starts", type=int, default=4)
    parser.add_argument("--turned", type=int, default=3, help="turned starts per cloud")
    parser.add_argument("--shifted", type=int, default=2, help="shifted starts per cloud")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--out-json", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("scans", "poses_per_scan", "count"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("other_count", "other_random_starts", "turned", "shifted"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must not be negative")
    if args.no_real and args.no_synthetic:
        raise SystemExit("nothing to do: --no-real and --no-synthetic")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {line}", file=sys.stderr, flush=True)

    if not args.no_real and not (args.real / "dragon" / "poses.json").is_file():
        raise SystemExit(f"no real data at {args.real} (want dragon/poses.json; --real DIR, or --no-real)")
    with tempfile.TemporaryDirectory(prefix="honesty-") as folder:
        objects = Objects(Path(folder), args.store, args.real)
        fits: list[Fit] = []
        if not args.no_real:
            fits += real_fits(args, objects, progress)
        if not args.no_synthetic:
            fits += synthetic_fits(args, objects, progress)
        notes = list(objects.notes)
    notes.append(f"seed {args.seed}; {len(fits)} fits in {time.perf_counter() - started:.0f} s")
    text = report(fits, notes)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    if args.out_json is not None:
        args.out_json.write_text(
            json.dumps(
                {
                    "found_confidence": FOUND_CONFIDENCE,
                    "explained_ratio": EXPLAINED_RATIO,
                    "args": {key: str(value) for key, value in vars(args).items()},
                    "fits": [asdict(fit) for fit in fits],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
