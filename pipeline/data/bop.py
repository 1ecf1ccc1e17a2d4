"""The BOP benchmark's dataset layout and results file, read and written.

The layout (https://github.com/thodan/bop_toolkit, docs/bop_datasets_format.md), as far as
cloudpose reads it::

    DIR/models/models_info.json         {obj_id: {"diameter": mm, "symmetries_discrete": [[16]],
                                          "symmetries_continuous": [{"axis", "offset"}], ...}}
    DIR/models/obj_NNNNNN.ply           each object's mesh, millimetres
    DIR/test/SCENE/scene_camera.json    {im_id: {"cam_K": [9] row-major, "depth_scale": mm per unit}}
    DIR/test/SCENE/scene_gt.json        {im_id: [{"obj_id", "cam_R_m2c": [9] row-major,
                                          "cam_t_m2c": [3] mm}]}
    DIR/test/SCENE/scene_gt_info.json   {im_id: [{"visib_fract", ...}]}, in scene_gt's order
    DIR/test/SCENE/depth/IMID.png       16-bit depth; times depth_scale is millimetres
    DIR/test_targets_bop19.json         optional: [{"scene_id", "im_id", "obj_id", "inst_count"}];
                                        when present, only the images it lists are read

SCENE and IMID are written with six digits (``000001``). The results file of the BOP challenge
(docs/bop_challenge_2019.md) is a CSV with the header ``scene_id,im_id,obj_id,score,R,t,time``: ``R``
nine numbers (row-major) and ``t`` three numbers (mm), space-separated, ``time`` the seconds spent
on the whole image (the same on every row of an image; -1 when unknown).

Convention: BOP uses column vectors, ``x_camera = R @ x_model + t`` (millimetres, the model file's
coordinates). cloudpose uses row vectors, ``observed = canonical @ R_row + t``; the two describe the
same pose when ``R_row = R.T`` (the translation is the same vector). Everything in this module stays
in BOP's convention (column vectors, millimetres); :mod:`pipeline.evaluation.bop` converts where
cloudpose's poses come in, and :func:`write_dataset` where a :class:`pipeline.data.scenes.Frame`'s
ground truth goes out. Frames' points are in metres, as everywhere in cloudpose.

Every problem with a folder or file raises :class:`BopError`, whose message names the file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloudpose.io.frames import Intrinsics, depth_frame_points
from pipeline.files import atomic_write_text

SPLIT = "test"
TARGETS_FILE = "test_targets_bop19.json"
RESULTS_HEADER = ("scene_id", "im_id", "obj_id", "score", "R", "t", "time")
# Depth PNGs as Pillow opens them: 16-bit grayscale, or 32-bit integers (some writers' 16-bit PNGs).
DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")
MAX_DEPTH_PIXELS = 50_000_000  # larger than any camera of the BOP datasets


class BopError(ValueError):
    """A folder or file that is not in the BOP layout (the message says which and why)."""


def object_name(obj_id: int) -> str:
    """The cloudpose object name of a BOP object id: ``obj_000001``, as its model file is named."""
    return f"obj_{obj_id:06d}"


@dataclass(frozen=True)
class BopModel:
    """One object of the dataset.

    Attributes:
        obj_id: its BOP id.
        path: its mesh, ``models/obj_NNNNNN.ply`` (millimetres).
        diameter_mm: largest distance between two of its points, from ``models_info.json``.
        symmetries_discrete: (K, 4, 4) the discrete symmetries (column vectors, mm), maybe none.
        symmetries_continuous: ``{"axis": [3], "offset": [3]}`` per continuous symmetry.
    """

    obj_id: int
    path: Path
    diameter_mm: float
    symmetries_discrete: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    symmetries_continuous: tuple[dict, ...] = ()

    @property
    def name(self) -> str:
        return object_name(self.obj_id)

    @property
    def symmetric(self) -> bool:
        return len(self.symmetries_discrete) > 0 or len(self.symmetries_continuous) > 0


@dataclass(frozen=True)
class BopCamera:
    """One image's camera.

    Attributes:
        matrix: (3, 3) ``cam_K``, pixels.
        depth_scale: millimetres per unit of the depth PNG.
    """

    matrix: np.ndarray
    depth_scale: float

    def intrinsics(self) -> Intrinsics:
        """The camera as cloudpose reads depth images (``depth_scale`` in metres per unit)."""
        fx, fy, cx, cy = self.matrix[0, 0], self.matrix[1, 1], self.matrix[0, 2], self.matrix[1, 2]
        return Intrinsics(float(fx), float(fy), float(cx), float(cy), self.depth_scale * 1e-3)


@dataclass(frozen=True)
class BopGroundTruth:
    """One annotated instance of an image.

    Attributes:
        obj_id: its object.
        rotation: (3, 3) ``cam_R_m2c`` (column vectors).
        translation_mm: (3,) ``cam_t_m2c``.
        visible_fraction: ``visib_fract`` of ``scene_gt_info.json``.
    """

    obj_id: int
    rotation: np.ndarray
    translation_mm: np.ndarray
    visible_fraction: float


@dataclass(frozen=True)
class BopImage:
    """One test image: its depth PNG, camera and ground truth.

    Attributes:
        scene_id, im_id: its ids.
        depth_path: the 16-bit depth PNG.
        camera: its camera.
        width, height: the depth image's size, pixels.
        instances: its annotated instances, in ``scene_gt.json``'s order.
    """

    scene_id: int
    im_id: int
    depth_path: Path
    camera: BopCamera
    width: int
    height: int
    instances: tuple[BopGroundTruth, ...]

    def points(self) -> np.ndarray:
        """(N, 3) float64 the depth image's returns in the sensor frame, metres."""
        from cloudpose.io.clouds import CloudError

        fields = dataclasses.asdict(self.camera.intrinsics())
        try:
            return depth_frame_points(
                self.depth_path.name, self.depth_path.read_bytes(), fields, MAX_DEPTH_PIXELS
            )
        except CloudError as error:
            raise BopError(f"{self.depth_path}: {error.detail}") from None


@dataclass(frozen=True)
class BopDataset:
    """A BOP dataset's objects and test images.

    Attributes:
        root: the dataset folder.
        models: obj_id -> model.
        images: every test image (or those ``test_targets_bop19.json`` lists), by scene and id.
    """

    root: Path
    models: dict[int, BopModel]
    images: tuple[BopImage, ...]


def _load_json(path: Path) -> object:
    if not path.is_file():
        raise BopError(f"{path} is missing: a BOP dataset has it (see the bop_toolkit's dataset format)")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BopError(f"{path} is not readable JSON: {error}") from None


def _numbers(path: Path, where: str, values: object, count: int) -> np.ndarray:
    """``values`` as ``count`` finite float64 numbers, or a BopError naming ``path`` and ``where``."""
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.size != count or not np.isfinite(array).all():
        raise BopError(f"{path}: {where} must be {count} finite numbers, got {str(values)[:80]}")
    return array


def read_models(root: Path) -> dict[int, BopModel]:
    """The dataset's objects from ``models/models_info.json`` and ``models/obj_NNNNNN.ply``."""
    info_path = root / "models" / "models_info.json"
    info = _load_json(info_path)
    if not isinstance(info, dict) or not info:
        raise BopError(f"{info_path} must map object ids to their info, got {str(info)[:80]}")
    models = {}
    for key, entry in info.items():
        if not str(key).isdigit() or not isinstance(entry, dict):
            raise BopError(f"{info_path}: object {key!r} is not an integer id with an info object")
        obj_id = int(key)
        path = root / "models" / f"{object_name(obj_id)}.ply"
        if not path.is_file():
            raise BopError(f"{path} is missing: models_info.json lists object {obj_id}")
        diameter = float(_numbers(info_path, f"object {obj_id}'s diameter", entry.get("diameter"), 1)[0])
        discrete = [
            _numbers(info_path, f"object {obj_id}'s discrete symmetry", matrix, 16).reshape(4, 4)
            for matrix in entry.get("symmetries_discrete", [])
        ]
        continuous = tuple(
            {
                "axis": _numbers(info_path, f"object {obj_id}'s symmetry axis", item.get("axis"), 3),
                "offset": _numbers(info_path, f"object {obj_id}'s symmetry offset", item.get("offset"), 3),
            }
            for item in entry.get("symmetries_continuous", [])
        )
        models[obj_id] = BopModel(obj_id, path, diameter, np.array(discrete).reshape(-1, 4, 4), continuous)
    return dict(sorted(models.items()))


def _depth_size(path: Path) -> tuple[int, int]:
    """(width, height) of a depth PNG, from its header; a BopError unless it is 16-bit."""
    from PIL import Image

    if not path.is_file():
        raise BopError(f"{path} is missing: scene_camera.json lists its image")
    try:
        with Image.open(path, formats=["PNG"]) as image:  # reads the header only
            mode, size = image.mode, image.size
    except Exception as error:  # Pillow raises several types for what is not a PNG
        raise BopError(f"{path} is not a readable PNG image ({type(error).__name__})") from None
    if mode not in DEPTH_MODES:
        raise BopError(
            f"{path} is a PNG of mode {mode}, not 16-bit depth: BOP depth images hold one 16-bit "
            "channel (times depth_scale: millimetres)"
        )
    return size


def _image_ground_truth(scene: Path, key: str, gt: list, gt_info: list) -> tuple[BopGroundTruth, ...]:
    """One image's instances from its ``scene_gt.json`` and ``scene_gt_info.json`` lists."""
    gt_path, info_path = scene / "scene_gt.json", scene / "scene_gt_info.json"
    if not isinstance(gt, list) or not isinstance(gt_info, list) or len(gt) != len(gt_info):
        raise BopError(
            f"{gt_path} and {info_path} must hold one list per image of the same length; image {key} does not"
        )
    instances = []
    for index, (pose, info) in enumerate(zip(gt, gt_info, strict=True)):
        where = f"image {key}, instance {index}"
        if not isinstance(pose, dict) or not isinstance(info, dict) or not str(pose.get("obj_id")).isdigit():
            raise BopError(f"{gt_path}: {where} has no integer obj_id")
        instances.append(
            BopGroundTruth(
                obj_id=int(pose["obj_id"]),
                rotation=_numbers(gt_path, f"{where}'s cam_R_m2c", pose.get("cam_R_m2c"), 9).reshape(3, 3),
                translation_mm=_numbers(gt_path, f"{where}'s cam_t_m2c", pose.get("cam_t_m2c"), 3),
                visible_fraction=float(
                    _numbers(info_path, f"{where}'s visib_fract", info.get("visib_fract"), 1)[0]
                ),
            )
        )
    return tuple(instances)


def read_scene(scene: Path, wanted: set[int] | None = None) -> list[BopImage]:
    """The images of one scene folder (``test/SCENE``), or of those ids in ``wanted``."""
    cameras, gts, gt_infos = (
        _load_json(scene / name) for name in ("scene_camera.json", "scene_gt.json", "scene_gt_info.json")
    )
    for name, value in (("scene_camera", cameras), ("scene_gt", gts), ("scene_gt_info", gt_infos)):
        if not isinstance(value, dict):
            raise BopError(f"{scene / (name + '.json')} must map image ids to their entries")
    images = []
    for key in sorted(cameras, key=lambda text: int(text) if str(text).isdigit() else -1):
        if not str(key).isdigit():
            raise BopError(f"{scene / 'scene_camera.json'}: image id {key!r} is not an integer")
        im_id = int(key)
        if wanted is not None and im_id not in wanted:
            continue
        camera_path, entry = scene / "scene_camera.json", cameras[key]
        if not isinstance(entry, dict):
            raise BopError(f"{camera_path}: image {key} has no camera object")
        camera = BopCamera(
            _numbers(camera_path, f"image {key}'s cam_K", entry.get("cam_K"), 9).reshape(3, 3),
            float(_numbers(camera_path, f"image {key}'s depth_scale", entry.get("depth_scale", 1.0), 1)[0]),
        )
        if key not in gts or key not in gt_infos:
            raise BopError(f"image {key} of {scene} has a camera but no entry in scene_gt(_info).json")
        depth_path = scene / "depth" / f"{im_id:06d}.png"
        width, height = _depth_size(depth_path)
        instances = _image_ground_truth(scene, key, gts[key], gt_infos[key])
        images.append(BopImage(int(scene.name), im_id, depth_path, camera, width, height, instances))
    return images


def _targets(root: Path) -> dict[int, set[int]] | None:
    """scene_id -> image ids that ``test_targets_bop19.json`` lists, or None without the file."""
    path = root / TARGETS_FILE
    if not path.is_file():
        return None
    entries = _load_json(path)
    targets: dict[int, set[int]] = {}
    try:
        for entry in entries:  # type: ignore[union-attr]
            targets.setdefault(int(entry["scene_id"]), set()).add(int(entry["im_id"]))
    except (TypeError, KeyError, ValueError):
        raise BopError(f"{path} must be a list of {{scene_id, im_id, obj_id, inst_count}}") from None
    return targets


def read_dataset(root: str | Path, split: str = SPLIT) -> BopDataset:
    """A BOP dataset's objects and test images (depth PNG headers checked, pixels not yet read).

    Args:
        root: the dataset folder (``models/`` and ``test/`` inside).
        split: the folder of the test scenes (``test``; T-LESS's is ``test_primesense``).

    Raises:
        BopError: a missing or malformed file, or a depth PNG that is not 16-bit.
    """
    root = Path(root)
    if not root.is_dir():
        raise BopError(f"{root} is not a folder: --bop takes a BOP dataset's folder (models/, {split}/)")
    models = read_models(root)
    split_folder = root / split
    scenes = sorted(path for path in split_folder.glob("*") if path.is_dir() and path.name.isdigit())
    if not scenes:
        raise BopError(f"{split_folder} holds no scene folder (six digits, e.g. {split}/000001)")
    targets = _targets(root)
    images = []
    for scene in scenes:
        if targets is not None and int(scene.name) not in targets:
            continue
        images.extend(read_scene(scene, None if targets is None else targets[int(scene.name)]))
    unknown = sorted({item.obj_id for image in images for item in image.instances} - set(models))
    if unknown:
        raise BopError(f"the ground truth names objects {unknown} that models/models_info.json lacks")
    return BopDataset(root, models, tuple(images))


# Writing the layout ------------------------------------------------------------------------------


def _scene_gt_info(instances: Sequence) -> list[dict]:
    """``scene_gt_info.json``'s entries of an image's instances (visible box, pixels, fraction)."""
    info = []
    for instance in instances:
        rows, columns = np.nonzero(instance.mask)
        box = (
            [int(columns.min()), int(rows.min()), int(np.ptp(columns)) + 1, int(np.ptp(rows)) + 1]
            if len(rows)
            else [-1, -1, -1, -1]
        )
        info.append(
            {
                "bbox_visib": box,
                "px_count_visib": int(instance.n_points),
                "visib_fract": float(instance.visible_fraction),
            }
        )
    return info


def write_dataset(root: str | Path, frames: Sequence, objects: Sequence, scene_id: int = 1) -> Path:
    """Write frames of :mod:`pipeline.data.scenes` as one scene of a BOP dataset.

    Objects get ids 1, 2, ... in the order given; their meshes go out in millimetres. Depth goes
    out as the frames' 16-bit PNG (:meth:`pipeline.data.scenes.Frame.depth_units`), so BOP's
    ``depth_scale`` is the frame's metres per unit in millimetres. Poses go out in BOP's convention
    (``cam_R_m2c = rotation.T``, ``cam_t_m2c = 1000 * translation``).

    Args:
        root: the dataset folder (made if missing).
        frames: :class:`pipeline.data.scenes.Frame` s, written as images 0, 1, ...
        objects: the frames' target :class:`pipeline.data.scenes.SceneObject` s (meshes in metres);
            instances of other objects are left out.
        scene_id: the scene's id.

    Returns:
        The root.
    """
    from PIL import Image

    from pipeline.data.symmetry_search import object_diameter

    root = Path(root)
    ids = {item.name: index + 1 for index, item in enumerate(objects)}
    (root / "models").mkdir(parents=True, exist_ok=True)
    info = {}
    for item in objects:
        vertices_mm = np.asarray(item.mesh.vertices, dtype=np.float64) * 1000.0
        mesh = item.mesh.copy()
        mesh.vertices = vertices_mm
        mesh.export(root / "models" / f"{object_name(ids[item.name])}.ply")
        low, size = vertices_mm.min(axis=0), np.ptp(vertices_mm, axis=0)
        info[str(ids[item.name])] = {
            "diameter": object_diameter(vertices_mm),
            **{f"min_{axis}": float(value) for axis, value in zip("xyz", low, strict=True)},
            **{f"size_{axis}": float(value) for axis, value in zip("xyz", size, strict=True)},
        }
    (root / "models" / "models_info.json").write_text(json.dumps(info, indent=2) + "\n")
    scene = root / SPLIT / f"{scene_id:06d}"
    (scene / "depth").mkdir(parents=True, exist_ok=True)
    cameras, gts, gt_infos = {}, {}, {}
    for im_id, frame in enumerate(frames):
        Image.fromarray(frame.depth_units()).save(scene / "depth" / f"{im_id:06d}.png", format="PNG")
        camera = frame.intrinsics
        matrix = [camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0]
        cameras[str(im_id)] = {"cam_K": matrix, "depth_scale": camera.depth_scale * 1000.0}
        kept = [instance for instance in frame.instances if instance.name in ids]
        gts[str(im_id)] = [
            {
                "cam_R_m2c": np.asarray(instance.rotation).T.reshape(-1).tolist(),
                "cam_t_m2c": (np.asarray(instance.translation) * 1000.0).tolist(),
                "obj_id": ids[instance.name],
            }
            for instance in kept
        ]
        gt_infos[str(im_id)] = _scene_gt_info(kept)
    for name, value in (("scene_camera", cameras), ("scene_gt", gts), ("scene_gt_info", gt_infos)):
        (scene / f"{name}.json").write_text(json.dumps(value, indent=2) + "\n")
    return root


# The results file --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BopEstimate:
    """One row of a BOP results file: a pose estimate in BOP's convention.

    Attributes:
        scene_id, im_id, obj_id: which image and object.
        score: higher is more certain (BOP keeps the best per object and image).
        rotation: (3, 3) ``R`` (column vectors: ``x_camera = R @ x_model + t``).
        translation_mm: (3,) ``t``.
        time_s: seconds spent on the whole image (-1: unknown).
    """

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    rotation: np.ndarray
    translation_mm: np.ndarray
    time_s: float = -1.0


def _text(values: Iterable[float]) -> str:
    # repr of a float reads back to the same float, so a file read back scores the same.
    return " ".join(repr(float(value)) for value in values)


def write_results(path: str | Path, estimates: Iterable[BopEstimate]) -> Path:
    """Write estimates as the BOP challenge's results CSV (see the module docstring)."""
    lines = [",".join(RESULTS_HEADER)]
    for item in estimates:
        rotation = np.asarray(item.rotation, dtype=np.float64).reshape(9)
        translation = np.asarray(item.translation_mm, dtype=np.float64).reshape(3)
        lines.append(
            f"{item.scene_id},{item.im_id},{item.obj_id},{float(item.score)!r},{_text(rotation)},"
            f"{_text(translation)},{float(item.time_s)!r}"
        )
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_results(path: str | Path) -> list[BopEstimate]:
    """The estimates of a BOP results CSV, in file order.

    Raises:
        BopError: a missing file, a wrong header, or a row without its seven fields and numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise BopError(f"{path} is missing")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(field_.strip() for field_ in rows[0]) != RESULTS_HEADER:
        raise BopError(f"{path} must start with the header {','.join(RESULTS_HEADER)}")
    estimates = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"line {number}"
        if len(row) != len(RESULTS_HEADER):
            raise BopError(f"{path}: {where} has {len(row)} fields, not {len(RESULTS_HEADER)}")
        try:
            ids = [int(value) for value in row[:3]]
            score, time_s = float(row[3]), float(row[6])
            rotation = [float(value) for value in row[4].split()]
            translation = [float(value) for value in row[5].split()]
        except ValueError:
            raise BopError(f"{path}: {where} holds a field that is not a number") from None
        rotation_array = _numbers(path, f"{where}'s R", rotation, 9).reshape(3, 3)
        translation_array = _numbers(path, f"{where}'s t", translation, 3)
        if not math.isfinite(score):
            raise BopError(f"{path}: {where}'s score is not finite")
        estimates.append(BopEstimate(*ids, score, rotation_array, translation_array, time_s))
    return estimates
