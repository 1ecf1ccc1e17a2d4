"""Adding an object: mesh checks, units, symmetry, per-object tuning, training, packaging.

``add_object`` turns a mesh file into a package of the object store (:mod:`cloudpose.store.package`):

1. the mesh is read and checked (triangles, area, degenerate faces, watertightness, whether its
   size is plausible in the declared units);
2. its symmetries are found (:func:`pipeline.data.symmetry_search.find_symmetry`) and what the pose search
   takes from the object is measured on it (how far a single view's centroid lies from the
   object's centre);
3. the surface is sampled with its normals (the registration's model): the package is
   servable from here on, by the registration search alone;
4. unless told not to, the order-free network is trained within the time budget (the learning
   rate schedule spans the budget), exported and put in the package, which makes it fast;
5. a short ``cloudpose bench`` run scores the package, and its figures go into the descriptor
   and ``PROVENANCE.md``.

Every write goes through :func:`cloudpose.store.package.write_package`, so a package is replaced whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cloudpose.geometry.symmetry import Symmetry
from cloudpose.registration.refine import sample_surface_with_normals
from cloudpose.store.package import (
    UNITS_M,
    ObjectPackage,
    ObjectStore,
    StoreError,
    metres_per_unit,
    read_model_sidecar,
)
from pipeline.data.mesh import Mesh, MeshError, load_mesh
from pipeline.files import atomic_write_bytes
from pipeline.training.config import ConfigError

SURFACE_POINTS = 20_000
# A part in the declared units should measure between these (metres, bounding-box diagonal).
PLAUSIBLE_SIZE_M = (1e-3, 20.0)
VIEW_OFFSET_VIEWS = 60
DEFAULT_BUDGET_S = 600.0
ADD_BENCH_COUNT = 50


@dataclass(frozen=True)
class TrainRecipe:
    """How ``object add`` trains an object's order-free network.

    Everything that depends on the object's size is relative to what ``object add`` measures on
    the mesh: the network's input scale is the mesh's diagonal (``model_arguments``), the
    training translations and the noise sigma are in diagonals (``translation_range`` and
    ``noise_max`` of :class:`~pipeline.training.config.TrainConfig`), the loss is symmetric under
    the symmetries found on the mesh, and the views are rendered from the mesh. What remains here
    is scale-free: the network's widths, the sensor-like data mix, the optimizer and the budget.
    These are the recipe of the shipped bunny model (``configs/pointnet.yaml``, its schedule
    spanning the time budget instead of 28,000 steps), the default for any object; the package
    records them with :attr:`SOURCE`.

    Attributes:
        model_kind / activation / widths / head: the PointNet-style network.
        points_min / points_max / input_points: cloud sizes drawn per step, and the input size.
        partial_fraction: share of training clouds that are single partial views.
        noise_max: per-cloud noise sigma range, in diagonals of the object.
        outlier_max: per-cloud outlier share range.
        view_bank_size: views rendered once per run.
        batch_size / lr / steps / schedule_by / val_every / val_size: the optimization; the rate
            decays over the time budget (``steps`` is never the limit).
        target_median_deg / target_p99_deg / target_translation_pct: validation targets no
            network reaches alone (refinement does the rest), so runs use their budget.
    """

    SOURCE: ClassVar[str] = "default recipe: the shipped bunny model's (configs/pointnet.yaml), scale-free"

    model_kind: str = "pointnet"
    activation: str = "relu"
    widths: tuple[int, ...] = (64, 128, 256)
    head: tuple[int, ...] = (256, 128)
    points_min: int = 64
    points_max: int = 512
    input_points: int = 512
    partial_fraction: float = 0.6
    noise_max: float = 0.015
    outlier_max: float = 0.08
    view_bank_size: int = 1000
    batch_size: int = 32
    lr: float = 0.001
    steps: int = 1_000_000
    schedule_by: str = "time"
    val_every: int = 500
    val_size: int = 500
    target_median_deg: float = 1e-6
    target_p99_deg: float = 1e-6
    target_translation_pct: float = 1e-6

    def to_config(self) -> dict[str, Any]:
        """The recipe as :func:`pipeline.training.config.load_config` overrides (lists for tuples)."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()
        }


TRAIN_RECIPE = TrainRecipe()


@dataclass
class MeshReport:
    """What the checks found; ``problems`` stop the add, ``warnings`` are printed and stored."""

    faces: int
    vertices: int
    watertight: bool
    degenerate_faces: int
    duplicate_faces: int
    extent: list[float]
    diagonal: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "faces": self.faces,
            "vertices": self.vertices,
            "watertight": self.watertight,
            "degenerate_faces": self.degenerate_faces,
            "duplicate_faces": self.duplicate_faces,
            "extent": self.extent,
            "diagonal": self.diagonal,
            "warnings": self.warnings,
        }


def check_mesh(
    path: str | Path, unit_m: float | None = None, units: str | None = None
) -> tuple[Mesh, MeshReport]:
    """Read a mesh and check that it can serve as an object model.

    Raises:
        MeshError: unreadable, no triangles, no area, or a size that no unit makes plausible.
    """
    import trimesh

    mesh = load_mesh(path)
    # Merged vertices tell whether the surface is closed (STL stores every triangle apart).
    merged = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True, validate=False)
    areas = mesh.face_areas
    degenerate = int(np.count_nonzero(areas <= 1e-12 * mesh.diagonal**2))
    sorted_faces = np.sort(mesh.faces, axis=1)
    duplicates = len(sorted_faces) - len(np.unique(sorted_faces, axis=0))
    extent = (mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)).tolist()
    report = MeshReport(
        faces=len(mesh.faces),
        vertices=len(merged.vertices),
        watertight=bool(merged.is_watertight),
        degenerate_faces=degenerate,
        duplicate_faces=int(duplicates),
        extent=[float(value) for value in extent],
        diagonal=mesh.diagonal,
    )
    if degenerate == len(mesh.faces):
        raise MeshError(f"mesh {path} has only degenerate (zero-area) triangles")
    if degenerate:
        report.warnings.append(f"{degenerate} degenerate (zero-area) triangles are ignored")
    if duplicates:
        report.warnings.append(f"{duplicates} duplicate triangles")
    if not report.watertight:
        report.warnings.append(
            "the mesh is not watertight (open edges): fine for a scanned or partial surface, but "
            "inside and outside are not defined, so check that normals point outward"
        )
    if min(extent) <= 1e-6 * mesh.diagonal:
        report.warnings.append(
            "the mesh is flat (one extent is zero): a plane cannot fix a pose around its normal"
        )
    if unit_m is not None:
        size_m = mesh.diagonal * unit_m
        low, high = PLAUSIBLE_SIZE_M
        if not low <= size_m <= high:
            report.warnings.append(
                f"in {units} the object measures {size_m:.4g} m across, an unusual size for a part: "
                "check --units"
            )
    return mesh, report


def measure_view_offset(mesh: Mesh, views: int = VIEW_OFFSET_VIEWS, seed: int = 0) -> float:
    """Median distance from a single view's centroid to the object's centre, along the line of
    sight (fraction of the diagonal; positive towards the camera). The search places the object
    this far behind a view's centroid when no nearer guess fits."""
    from pipeline.data.views import random_viewpoint, render_view

    rng = np.random.default_rng(seed)
    offsets = []
    for _ in range(views):
        camera = random_viewpoint(rng, mesh.diagonal)
        points = render_view(mesh, camera, rng, depth_noise=0.0)
        if len(points) < 32:
            continue
        direction = camera / np.linalg.norm(camera)
        offsets.append(float(points.mean(axis=0) @ direction) / mesh.diagonal)
    return float(np.median(offsets)) if offsets else 0.12


def example_files(mesh: Mesh, seed: int = 0) -> dict[str, bytes]:
    """``example.json`` / ``example.xyz``: a fresh, shuffled, posed surface sample of 2048 points
    and its true answer in the file's frame, to try the service by hand."""
    from pipeline.data.benchsets import random_pose
    from pipeline.data.mesh import sample_surface

    rng = np.random.default_rng([seed, 20261126])
    rotation, translation = random_pose(rng, mesh.diagonal)
    observed = sample_surface(mesh, 2048, rng) @ rotation + translation
    back_rotation = rotation.T
    back_translation = -translation @ back_rotation + mesh.offset  # to the file's own coordinates
    lines = [" ".join(f"{value:.7g}" for value in point) for point in observed.tolist()]
    example = {
        "points": np.round(observed, 7).tolist(),
        "true_rotation": back_rotation.tolist(),
        "true_translation": back_translation.tolist(),
        "note": "true_rotation / true_translation: mesh file coordinates = points @ rotation + translation",
    }
    return {"example.json": json.dumps(example).encode(), "example.xyz": ("\n".join(lines) + "\n").encode()}


# A turn that leaves this share of the object's surface within the refinement's inlier distance
# of itself (nearly the 0.9 at which a fit stops being doubtful) makes a pose and its turned copy
# hard to tell apart: the service always tries both.
NEAR_SYMMETRY_FITNESS = 0.85
NEAR_SYMMETRY_TURNS_DEG = (180.0, 90.0, -90.0)


def find_near_symmetries(mesh: Mesh, symmetry: Any, samples: int = 4000, seed: int = 0) -> list[np.ndarray]:
    """Turns about the principal axes that map the object nearly, but not exactly, onto itself.

    A turn S (row vectors, about the centroid) counts when the share of a dense surface sample
    that ``X @ S`` puts within the refinement's inlier distance of the surface reaches
    :data:`NEAR_SYMMETRY_FITNESS`: then a wrong pose S @ R fits a cloud almost as well as the
    right one R, and no single fit can be trusted to tell them apart. Exact symmetries (the
    ``symmetry`` group) are left out: those poses are equally right.

    Returns:
        (3, 3) rotations, row-vector convention, canonical (internal) frame.
    """
    from scipy.spatial import cKDTree

    from cloudpose.registration.refine import INLIER_DISTANCE, principal_axes
    from pipeline.data.mesh import sample_surface

    points = sample_surface(mesh, samples, np.random.default_rng(seed))
    tree = cKDTree(points)
    _, axes = principal_axes(points)
    found: list[np.ndarray] = []
    for axis in axes:
        for degrees in NEAR_SYMMETRY_TURNS_DEG:
            angle = np.radians(degrees)
            skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            column = np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew
            turn = column.T  # row vectors: x @ turn rotates x about the axis
            if not symmetry.distinct(turn, np.eye(3), 5.0):
                continue  # an exact symmetry
            if any(not symmetry.distinct(turn, other, 5.0) for other in found):
                continue
            distance, _ = tree.query(points @ turn)
            if np.mean(distance < INLIER_DISTANCE * mesh.diagonal) >= NEAR_SYMMETRY_FITNESS:
                found.append(turn)
    return found


def close_near_symmetries(near: list[np.ndarray], symmetry: Any) -> list[np.ndarray]:
    """The near symmetries and their products (turns compose: two near half-turns make a third),
    without the identity and the exact symmetries, one per class of equivalent turns."""
    if not near:
        return []
    group = training_symmetries(Symmetry.identity(), near).astype(np.float64)
    closed: list[np.ndarray] = []
    for turn in group[1:]:
        if symmetry.distinct(turn, np.eye(3), 5.0) and all(
            symmetry.distinct(turn, other, 5.0) for other in closed
        ):
            closed.append(turn)
    return closed


CONTINUOUS_TRAINING_TURNS = 36
MAX_TRAINING_GROUP = 192


def training_symmetries(symmetry: Any, near: list[np.ndarray]) -> np.ndarray:
    """The rotations the network's loss treats as equivalent: the object's symmetries (a
    continuous axis as 36 turns of 10°) and its near symmetries, closed under products.

    The network then learns the pose up to these turns, which it cannot tell apart reliably
    anyway; the service's registration decides between near-symmetric copies.

    Returns:
        (K, 3, 3) float32, identity first, row-vector convention.
    """
    from cloudpose.geometry.rotations import axis_rotation

    elements = [np.asarray(rotation, dtype=np.float64) for rotation in symmetry.rotations]
    if symmetry.axis is not None:
        turns = [
            axis_rotation(symmetry.axis, 2 * np.pi * k / CONTINUOUS_TRAINING_TURNS)
            for k in range(1, CONTINUOUS_TRAINING_TURNS)
        ]
        elements += [turn @ rotation for turn in turns for rotation in symmetry.rotations]
    elements += [np.asarray(turn, dtype=np.float64) for turn in near]

    def known(candidate: np.ndarray, group: list[np.ndarray]) -> bool:
        return any(np.abs(candidate - member).max() < 0.05 for member in group)

    group: list[np.ndarray] = [np.eye(3)]
    for element in elements:
        if not known(element, group):
            group.append(element)
    grown = True
    while grown and len(group) < MAX_TRAINING_GROUP:
        grown = False
        for first in list(group):
            for second in list(group):
                product = first @ second
                u, _, vh = np.linalg.svd(product)
                product = u @ vh
                if not known(product, group) and len(group) < MAX_TRAINING_GROUP:
                    group.append(product)
                    grown = True
    return np.stack(group).astype(np.float32)


AMBIGUITY_VIEWS = 40


def measure_view_ambiguity(
    mesh: Mesh, surface: np.ndarray, symmetry: Any, views: int = AMBIGUITY_VIEWS, seed: int = 0
) -> float:
    """Share of single views of the object that another pose (beyond its symmetries) fits about
    as well as the true one: the service screens the turns of confident answers for objects
    where it is above zero (a box seen on two faces; not the bunny).

    Each view is rendered in the internal frame (true pose: identity), refined from the truth
    with its half, quarter and 40-degree turns screened, and counted when a competitor remains.
    """
    from cloudpose.registration.refine import SurfaceModel, refine_pose, rotation_about
    from pipeline.data.views import random_viewpoint, render_view

    model = SurfaceModel.from_array(surface, mesh.diagonal)
    rng = np.random.default_rng([seed, 7])
    ambiguous = counted = 0
    for _ in range(views):
        points = render_view(mesh, random_viewpoint(rng, mesh.diagonal), rng, depth_noise=0.0)
        if len(points) < 64:
            continue
        counted += 1
        turns = [
            (rotation_about(axis, sign * 90.0), np.zeros(3)) for axis in model.axes for sign in (1.0, -1.0)
        ]
        result = refine_pose(
            points,
            model,
            np.eye(3),
            np.zeros(3),
            alternatives=turns,
            doubt_fitness=1.01,
            distinct=lambda a, b: symmetry.distinct(a, b, 5.0),
        )
        if any(
            symmetry.distinct(other.object_rotation, result.object_rotation, 5.0)
            for other in result.competitors
        ) or (symmetry.distinct(result.object_rotation, np.eye(3), 5.0)):
            ambiguous += 1
    return ambiguous / max(counted, 1)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@dataclass
class AddResult:
    package: ObjectPackage
    report: MeshReport
    timings_s: dict[str, float]
    training: dict[str, Any] | None
    bench: list[dict[str, Any]] | None


def base_descriptor(
    mesh_path: Path,
    mesh: Mesh,
    report: MeshReport,
    units: str | None,
    unit_m: float | None,
    symmetry: Any,
    view_offset: float,
) -> dict[str, Any]:
    """The descriptor of a package before training: mesh, units, symmetry, tuning."""
    from pipeline.data.symmetry_search import object_diameter

    return {
        "units": {"name": units, "metres_per_unit": unit_m},
        "mesh": {
            "source": str(mesh_path),
            "sha256": mesh.sha256,
            "centroid": [float(value) for value in mesh.offset],
            "diagonal": mesh.diagonal,
            "diameter": object_diameter(mesh.vertices),
            **{key: value for key, value in report.to_dict().items() if key != "diagonal"},
        },
        "surface": {"file": "surface.npy", "count": SURFACE_POINTS, "frame": "internal (centroid at origin)"},
        "symmetry": symmetry.to_dict(),
        "tuning": {"view_offset": view_offset},
        "model": None,
        "bench": None,
    }


def surface_tolerance(
    text: str | None, metres_per_unit_value: float | None, diagonal: float
) -> tuple[float, str]:
    """How far the real object's surface may lie from its mesh, in the mesh's units, and where the
    figure came from.

    Args:
        text: ``0.5mm`` (any unit of :data:`cloudpose.store.package.UNITS_M`; needs the mesh's units),
            ``0.3%`` (of the mesh's bounding-box diagonal), a bare number (the mesh's own units),
            or None for the default (:data:`cloudpose.estimation.inference.DEFAULT_SURFACE_TOLERANCE` of the
            diagonal, set on real laser scans).

    Raises:
        ConfigError: a figure that is not a positive number, or a unit the mesh cannot convert.
    """
    from cloudpose.estimation.inference import DEFAULT_SURFACE_TOLERANCE

    if text is None:
        value = DEFAULT_SURFACE_TOLERANCE * diagonal
        return value, f"default: {100 * DEFAULT_SURFACE_TOLERANCE:g} % of the diagonal (real laser scans)"
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z%]*)\s*", text)
    problem = (
        f"--surface-tolerance {text!r}: give a positive length such as 0.5mm, 0.3% (of the diagonal) or 0.002"
    )
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(problem)
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit == "%":
        value = number / 100.0 * diagonal
    elif unit == "":
        value = number
    elif unit in UNITS_M:
        if metres_per_unit_value is None:
            raise ConfigError(
                f"--surface-tolerance {text!r}: the mesh was added without units, so {unit} cannot be "
                "converted; give the tolerance in the file's own units or as a % of the diagonal"
            )
        value = number * UNITS_M[unit] / metres_per_unit_value
    else:
        raise ConfigError(problem)
    if value >= 0.1 * diagonal:
        raise ConfigError(
            f"--surface-tolerance {text!r} is {100 * value / diagonal:.3g} % of the object's diagonal: "
            "a pose cannot be told from a wrong one that loosely; give at most 10 %"
        )
    return value, f"given: {text.strip()}"


@dataclass
class _Draft:
    """A package being made: its descriptor and files, written whole at each stage."""

    store: ObjectStore
    name: str
    meta: dict[str, Any]
    files: dict[str, bytes]
    mesh: Mesh
    symmetry: Any
    near: list[np.ndarray]

    def write(self, training: dict[str, Any] | None, bench: list[dict[str, Any]] | None) -> ObjectPackage:
        provenance = _provenance(self.name, self.meta, training, bench).encode()
        return self.store.write(self.name, self.meta, {**self.files, "PROVENANCE.md": provenance})


def _check_request(name: str, store: ObjectStore, mode: str, run_dir: Path) -> None:
    """Refuse an add that would overwrite what it must not, before any work."""
    store.check_writable(name)  # a shipped object's name, say, before any work
    if mode not in ("new", "resume", "retrain"):
        raise ConfigError(f"mode must be new, resume or retrain, got {mode!r}")
    if mode == "new" and (name in store or (run_dir / "checkpoint.pt").exists()):
        raise StoreError(
            f"object {name!r} already exists (package or training run {run_dir}): pass --resume to "
            "continue its training, --retrain to train it again, or `cloudpose object remove` first"
        )


def _measure(
    name: str,
    mesh_path: Path,
    store: ObjectStore,
    units: str | None,
    metres_per_unit_value: float | None,
    surface_tolerance_text: str | None,
    seed: int,
    command: str,
    say: Callable[[str], None],
) -> tuple[_Draft, MeshReport]:
    """Steps 1 to 3: check the mesh, find its symmetries, measure its tuning, sample its surface."""
    from pipeline.data.symmetry_search import find_symmetry

    mesh, report = check_mesh(mesh_path, metres_per_unit_value, units)
    for warning in report.warnings:
        say(f"warning: {warning}")
    tolerance, tolerance_source = surface_tolerance(
        surface_tolerance_text, metres_per_unit_value, mesh.diagonal
    )
    symmetry = find_symmetry(mesh)
    say(
        f"symmetry: {symmetry.kind}"
        + (f", {symmetry.order} rotations" if symmetry.order else ", about an axis")
    )
    view_offset = measure_view_offset(mesh, seed=seed)
    near = close_near_symmetries(find_near_symmetries(mesh, symmetry, seed=seed), symmetry)
    if near:
        say(f"{len(near)} near-symmetric turn(s): every pose is checked against its turned copies")
    surface = sample_surface_with_normals(
        mesh.vertices, mesh.faces, SURFACE_POINTS, np.random.default_rng(seed)
    )
    meta = base_descriptor(mesh_path, mesh, report, units, metres_per_unit_value, symmetry, view_offset)
    meta["tuning"]["surface_tolerance"] = tolerance
    meta["tuning"]["surface_tolerance_source"] = tolerance_source
    meta["tuning"]["near_symmetries"] = [turn.tolist() for turn in near]
    meta["tuning"]["ambiguous_views"] = measure_view_ambiguity(mesh, surface, symmetry, seed=seed)
    if meta["tuning"]["ambiguous_views"] > 0:
        say(
            f"{meta['tuning']['ambiguous_views']:.0%} of its single views fit another pose about as well: "
            "confident answers are checked against their turns"
        )
    surface_bytes = _npy_bytes(surface)
    meta["surface"]["sha256"] = hashlib.sha256(surface_bytes).hexdigest()
    mesh_file = "mesh" + mesh_path.suffix.lower()
    meta["mesh"]["file"] = mesh_file
    files = {"surface.npy": surface_bytes, mesh_file: mesh_path.read_bytes(), **example_files(mesh, seed)}
    meta["provenance"] = {
        "command": command,
        "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return _Draft(store, name, meta, files, mesh, symmetry, near), report


def _package_exported_model(
    draft: _Draft, model_path: str | Path, mesh_path: Path
) -> tuple[ObjectPackage, dict[str, Any]]:
    """Step 4 for a network trained elsewhere: check it was trained on this mesh, package it."""
    metadata, model_bytes = read_model_sidecar(model_path)
    if metadata.get("mesh", {}).get("sha256") != draft.mesh.sha256:
        raise StoreError(f"{model_path} was trained on another mesh than {mesh_path}")
    training = {
        key: metadata.get("training", {}).get(key)
        for key in ("steps", "elapsed_s", "device", "stopped_because")
    }
    training["exported_from"] = str(model_path)
    beside = Path(model_path).parent / "PROVENANCE.md"
    if beside.is_file():  # how the network was made, kept with the package
        training["provenance"] = beside.read_text()
    draft.meta["model"] = {
        "file": "model.onnx",
        "sidecar": "model.json",
        "model_id": metadata["model_id"],
        "training": training,
    }
    draft.files["model.onnx"] = model_bytes
    draft.files["model.json"] = Path(model_path).with_suffix(".json").read_bytes()
    return draft.write(None, None), training


def _train_and_package(
    draft: _Draft,
    mesh_path: Path,
    run_dir: Path,
    recipe: TrainRecipe,
    time_budget_s: float,
    mode: str,
    seed: int,
    device: str,
    say: Callable[[str], None],
    tracked: Callable[[str, float, str], Any],
) -> tuple[ObjectPackage, dict[str, Any], float]:
    """Step 4: train the order-free network within the budget, export it, package it.

    Returns:
        The package, the training record of its descriptor, and the seconds training took.
    """
    from pipeline.training.config import load_config
    from pipeline.training.export import export_model
    from pipeline.training.train import train as run_training

    run_dir.mkdir(parents=True, exist_ok=True)
    group = training_symmetries(draft.symmetry, draft.near)
    symmetry_file = run_dir / "symmetries.npy"
    if not symmetry_file.exists() or mode == "retrain":
        atomic_write_bytes(symmetry_file, _npy_bytes(group))
    overrides = {
        "symmetry_file": str(symmetry_file) if len(group) > 1 else "",
        "mesh": str(mesh_path),
        "time_budget_s": float(time_budget_s),
        "seed": seed,
        "device": device,
        "out_dir": str(run_dir),
    }
    cfg = load_config(None, {**recipe.to_config(), **overrides})
    train_started = time.perf_counter()
    with tracked("train", cfg.time_budget_s, "s") as bar:

        def report(step: int, total: int, values: dict[str, float]) -> None:
            if bar is not None:
                status = f"step {step}, loss {values['total']:.3g}"
                bar.update(min(values["elapsed_s"], cfg.time_budget_s), status)

        result = run_training(cfg, progress=report, fresh=(mode == "retrain"), log=say)
    train_s = time.perf_counter() - train_started
    export_dir = run_dir / "export"
    if export_dir.exists():
        shutil.rmtree(export_dir)
    exported = export_model(result.checkpoint, export_dir)
    training = {
        "steps": result.steps,
        "elapsed_s": round(result.elapsed_s, 1),
        "device": result.device,
        "samples_per_s": round(result.samples_per_s),
        "stopped_because": result.stopped_because,
        "time_budget_s": time_budget_s,
        "loss_symmetries": len(group),
        "validation_median_deg": result.validation.get("rotation_median_deg"),
    }
    say(
        f"trained {result.steps} steps in {result.elapsed_s:.0f} s on {result.device} "
        f"(loss symmetric under {len(group)} rotations; validation median "
        f"{result.validation.get('rotation_median_deg', float('nan')):.1f} deg, network alone)"
    )
    model_id = exported.sidecar["model_id"].replace(Path(draft.mesh.name).stem, draft.name, 1)
    draft.meta["model"] = {
        "file": "model.onnx",
        "sidecar": "model.json",
        "model_id": model_id,
        "training": training,
    }
    draft.meta["model"]["recipe"] = {**recipe.to_config(), "source": recipe.SOURCE}
    sidecar = dict(exported.sidecar)
    sidecar["model_id"] = model_id
    draft.files["model.onnx"] = exported.model_path.read_bytes()
    draft.files["model.json"] = (json.dumps(sidecar, indent=2) + "\n").encode()
    return draft.write(training, None), training, train_s


def _bench_and_record(
    draft: _Draft,
    package: ObjectPackage,
    training: dict[str, Any] | None,
    bench_count: int,
    seed: int,
    tracked: Callable[[str, float, str], Any],
) -> tuple[ObjectPackage, list[dict[str, Any]], float]:
    """Step 5: a short bench of the package, its figures written into the descriptor."""
    from cloudpose.estimation.served import served_method
    from pipeline.data.benchsets import SET_NAMES
    from pipeline.evaluation.bench_cli import bench_object

    method = served_method(package.model_path is not None)  # the rows name what ran
    bench_started = time.perf_counter()
    with tracked("bench", bench_count * len(SET_NAMES), "clouds") as bar:
        results = bench_object(
            package,
            count=bench_count,
            seed=seed,
            method_names=(method,),
            on_case=None if bar is None else bar.update,
        )
    bench_s = time.perf_counter() - bench_started
    bench_rows = _bench_rows(results)
    draft.meta["bench"] = {
        "command": f"cloudpose bench --object {draft.name} --count {bench_count} --methods {method}",
        "seed": seed,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": bench_rows,
    }
    return draft.write(training, bench_rows), bench_rows, bench_s


def add_object(
    name: str,
    mesh_path: str | Path,
    *,
    store: ObjectStore,
    units: str | None = None,
    metres_per_unit_value: float | None = None,
    surface_tolerance_text: str | None = None,
    model_path: str | Path | None = None,
    time_budget_s: float = DEFAULT_BUDGET_S,
    train: bool = True,
    mode: str = "new",
    seed: int = 0,
    device: str = "auto",
    runs_dir: str | Path = "runs/objects",
    bench_count: int = ADD_BENCH_COUNT,
    command: str = "",
    progress: Callable[[str], None] | None = None,
    track: Callable[..., Any] | None = None,
    recipe: TrainRecipe = TRAIN_RECIPE,
) -> AddResult:
    """Check a mesh, package it, train and bench it (see the module docstring).

    Args:
        units: what the file's numbers are in (a name of :data:`cloudpose.store.package.UNITS_M`, or any
            label when ``metres_per_unit_value`` gives the size).
        metres_per_unit_value: one file unit in metres, for files in no named unit.
        surface_tolerance_text: how far the real part's surface may lie from the mesh
            (:func:`surface_tolerance`); None for the default.
        model_path: an exported model of this mesh to package instead of training one.
        mode: ``new`` refuses an existing object or training run; ``resume`` continues the
            object's training run; ``retrain`` starts its training over.
        progress: called with a line at each stage.
        track: makes the progress report of a long stage (training, bench), called as
            ``track(description, total, unit=...)``; :class:`pipeline.training.progress.ProgressReport`
            fits. None reports none.
        recipe: how the network is trained (recorded in the package).

    Raises:
        StoreError, MeshError, ConfigError: with a message that says what to do.
    """
    say = progress or (lambda line: None)

    def tracked(description: str, total: float, unit: str) -> Any:
        if track is None:
            return contextlib.nullcontext(None)
        return track(description, total, unit=unit)

    run_dir = Path(runs_dir) / name
    _check_request(name, store, mode, run_dir)
    mesh_path = Path(mesh_path)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if metres_per_unit_value is None and units is not None:
        metres_per_unit_value = metres_per_unit(units)
    draft, report = _measure(
        name, mesh_path, store, units, metres_per_unit_value, surface_tolerance_text, seed, command, say
    )
    if name in store and store.get(name).model_path is not None:
        package = store.get(name)  # resume or retrain: the old package serves until the new one is complete
        timings["package_s"] = time.perf_counter() - started
    else:
        package = draft.write(None, None)
        timings["package_s"] = time.perf_counter() - started
        say(f"packaged {name} in {timings['package_s']:.1f} s (servable now, by the search alone)")

    training = None
    if model_path is not None:
        package, training = _package_exported_model(draft, model_path, mesh_path)
    elif train:
        package, training, timings["train_s"] = _train_and_package(
            draft, mesh_path, run_dir, recipe, time_budget_s, mode, seed, device, say, tracked
        )
    bench_rows = None
    if bench_count > 0:
        package, bench_rows, timings["bench_s"] = _bench_and_record(
            draft, package, training, bench_count, seed, tracked
        )
    timings["total_s"] = time.perf_counter() - started
    return AddResult(package, report, timings, training, bench_rows)


def record_bench(store: ObjectStore, name: str, results: Any, command: str, seed: int) -> ObjectPackage:
    """Put a bench run's figures into an object's package (descriptor and PROVENANCE.md)."""
    package = store.get(name)
    meta = dict(package.meta)
    rows = _bench_rows(results)
    measured = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["bench"] = {"command": command, "seed": seed, "measured": measured, "rows": rows}
    files = {
        entry.name: entry.read_bytes()
        for entry in package.path.iterdir()
        if entry.is_file() and entry.name not in ("object.json", "PROVENANCE.md")
    }
    training = (meta.get("model") or {}).get("training")
    files["PROVENANCE.md"] = _provenance(name, meta, training, rows).encode()
    return store.write(
        name, {key: value for key, value in meta.items() if key not in ("format", "name")}, files
    )


EXAMPLE_FRAME = "example_frame"


def record_example_frame(store: ObjectStore, name: str, written: list[Path], command: str) -> ObjectPackage:
    """Put a frame that ``cloudpose scene make --name example_frame`` wrote (its .png, .json and
    .npy) into an object's package as its example frame, named with the command in the
    descriptor (``example_frame``) and PROVENANCE.md; the package is rewritten whole."""
    package = store.get(name)
    meta = dict(package.meta)
    files = {
        entry.name: entry.read_bytes()
        for entry in package.path.iterdir()
        if entry.is_file()
        and entry.name not in ("object.json", "PROVENANCE.md")
        and not entry.name.startswith(EXAMPLE_FRAME + ".")
    }
    for path in written:
        if path.stem != EXAMPLE_FRAME:
            raise StoreError(f"{path} is not named {EXAMPLE_FRAME}.*: make it with --name {EXAMPLE_FRAME}")
        files[path.name] = path.read_bytes()
    meta["example_frame"] = {"files": sorted(path.name for path in written), "command": command}
    training = (meta.get("model") or {}).get("training")
    rows = (meta.get("bench") or {}).get("rows")
    files["PROVENANCE.md"] = _provenance(name, meta, training, rows).encode()
    return store.write(
        name, {key: value for key, value in meta.items() if key not in ("format", "name")}, files
    )


def _bench_rows(results: Any) -> list[dict[str, Any]]:
    keep = (
        "method",
        "set",
        "count",
        "failures",
        "time_ratio",
        "rotation_median_deg",
        "rotation_p99_deg",
        "success_5deg",
        "found_wrong",
        "found_rate",
        "add_s_median_pct",
        "median_ms",
    )
    return [
        {
            key: (round(value, 4) if isinstance(value, float) else value)
            for key, value in row.items()
            if key in keep
        }
        for row in results.rows()
    ]


def _provenance(
    name: str, meta: dict[str, Any], training: dict[str, Any] | None, bench: list[dict[str, Any]] | None
) -> str:
    mesh = meta["mesh"]
    units = meta["units"]["name"] or "the file's own (unnamed)"
    symmetry = meta["symmetry"]
    lines = [
        f"# {name}: a cloudpose object package",
        "",
        "| | |",
        "| --- | --- |",
        f"| mesh | `{mesh['source']}` (sha256 `{mesh['sha256'][:16]}…`), {mesh['faces']} triangles, "
        f"watertight: {mesh['watertight']} |",
        f"| units | {units}; diagonal {mesh['diagonal']:.4g}, extent "
        + " × ".join(f"{value:.4g}" for value in mesh["extent"])
        + " |",
        "| frame | poses are in the file's own coordinates; internal centre (surface centroid) at "
        + ", ".join(f"{value:.4g}" for value in mesh["centroid"])
        + " |",
        f"| symmetry | {symmetry['kind']}"
        + (f", {symmetry['order']} rotations" if symmetry.get("order") else "")
        + (f", axis {[round(v, 4) for v in symmetry['axis']]}" if symmetry.get("axis") else "")
        + " |",
        f"| tuning | view offset {meta['tuning']['view_offset']:.3f} diagonals (measured) |",
        *(
            [
                f"| surface tolerance | {meta['tuning']['surface_tolerance']:.4g} file units "
                f"({meta['tuning'].get('surface_tolerance_source', '')}) |"
            ]
            if "surface_tolerance" in meta["tuning"]
            else []
        ),
        f"| command | `{meta.get('provenance', {}).get('command', '')}` |",
        f"| seed | {meta.get('provenance', {}).get('seed', 0)} |",
        f"| python | {platform.python_version()} |",
    ]
    if training and training.get("exported_from"):
        lines.append(
            f"| training | packaged from `{training['exported_from']}`: {training['steps']} steps in "
            f"{training['elapsed_s']} s on {training['device']} |"
        )
    elif training:
        lines.append(
            f"| training | {training['steps']} steps in {training['elapsed_s']} s on {training['device']} "
            f"(budget {training['time_budget_s']} s, {training['samples_per_s']} samples/s) |"
        )
        recipe = (meta.get("model") or {}).get("recipe")
        if recipe:
            lines.append(f"| recipe | {recipe.get('source', '')}; in `object.json` |")
    else:
        lines.append("| training | none yet: the registration search alone answers |")
    frame = meta.get("example_frame")
    if frame:
        listed = ", ".join(f"`{file}`" for file in frame["files"])
        lines.append(
            f"| example frame | {listed}: a depth frame holding the object, its camera and the true "
            f"poses (`{frame['command']}`) |"
        )
    if bench:
        measured = f", measured {meta['bench']['measured']}" if meta["bench"].get("measured") else ""
        lines += ["", f"Bench (`{meta['bench']['command']}`, seed {meta['bench']['seed']}{measured}):", ""]
        lines.append("| method | set | rot. median ° | rot. p99 ° | < 5° | wrong & found | found | ms |")
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in bench:
            nan = float("nan")
            lines.append(
                f"| {row['method']} | {row['set']} | {row.get('rotation_median_deg', nan):.3f} | "
                f"{row.get('rotation_p99_deg', nan):.3f} | {row.get('success_5deg', 0) * 100:.1f} % | "
                f"{(row.get('found_wrong') or 0) * 100:.1f} % | {(row.get('found_rate') or 0) * 100:.1f} % | "
                f"{row.get('median_ms', nan):.2f} |"
            )
    network_provenance = meta.get("model", {}) and meta["model"].get("training", {}).get("provenance")
    if network_provenance:
        lines += ["", "## The network", "", network_provenance.strip()]
    return "\n".join(lines) + "\n"
