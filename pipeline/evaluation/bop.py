"""A detector on a BOP dataset, scored by the BOP challenge's criteria.

:func:`run_bop_bench` reads every test image of a dataset (:mod:`pipeline.data.bop`), runs a
whole-frame detector on its points (:data:`pipeline.evaluation.scene_bench.Detector`: metres in,
cloudpose poses out), keeps the confident detections as BOP estimates and scores them
(:func:`score_estimates`); :func:`write_outputs` writes the results CSV that the BOP challenge and
its toolkit take, and the scores as a table and JSON.

Convention: a detection's pose is cloudpose's (row vectors, ``observed = canonical @ rotation +
translation``, metres); its BOP estimate is ``R = rotation.T`` and ``t = 1000 * translation`` (column
vectors, ``x_camera = R @ x_model + t``, millimetres), as :mod:`pipeline.data.bop` states. Scoring is
in BOP's convention throughout.

Errors of an estimate ``(R_e, t_e)`` against a ground truth ``(R_g, t_g)``, over the model's
vertices ``x`` (millimetres), after the bop_toolkit's ``pose_error.py``:

* MSSD: ``min over symmetries (R_s, t_s) of max_x ‖(R_e x + t_e) - (R_g (R_s x + t_s) + t_g)‖`` (mm);
* MSPD: the same distance between the two point sets projected by the image's camera (pixels);
* ADD(-S): ``mean_x ‖(R_e x + t_e) - (R_g x + t_g)‖``; for an object with symmetries, ADD-S: the mean
  over the ground truth's posed vertices of the distance to the nearest estimate-posed vertex.

Symmetries are ``models_info.json``'s: its discrete ones, and each continuous one turned in
``ceil(pi / SYMMETRY_STEP)`` equal steps about its axis through its offset (the toolkit's
discretization), the identity included. (:func:`pipeline.evaluation.scene_bench.pose_errors`
computes MSSD too, but for symmetry axes through the canonical origin; BOP's have offsets.)

Matching and recall, after the toolkit's ``eval_calc_scores.py`` and ``pose_matching.py``: an
instance counts when its ``visib_fract`` is at least ``MIN_VISIBLE`` (0.1); the others are neither
counted nor matched. Per image and object only the ``n`` best-scored estimates count, ``n`` the
object's counted instances there. At each threshold the estimates, in decreasing score, take the
still-unmatched counted instance with the smallest error below it. Recall is matched over counted
instances, pooled over the dataset; AR_MSSD averages it over ``MSSD_THRESHOLDS`` (times the
diameter), AR_MSPD over ``MSPD_THRESHOLDS_PX`` (times the image width over 640); ADD(-S) is the recall
at ``ADD_THRESHOLD`` times the diameter. VSD, BOP's third error, needs a renderer and is not
computed, so the table's AR is the mean of AR_MSSD and AR_MSPD, not BOP's AR.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.bop import BopDataset, BopEstimate, BopImage, BopModel, write_results
from pipeline.evaluation.bench import cell_text
from pipeline.evaluation.scene_bench import Detector
from pipeline.files import atomic_write_json, atomic_write_text

MIN_VISIBLE = 0.1  # BOP's visib_gt_min
MSSD_THRESHOLDS = tuple(np.arange(0.05, 0.51, 0.05).tolist())  # of the object's diameter
MSPD_THRESHOLDS_PX = tuple(np.arange(5, 51, 5).astype(float).tolist())  # for a 640-pixel-wide image
ADD_THRESHOLD = 0.1  # of the object's diameter
SYMMETRY_STEP = 0.01  # the toolkit's max_sym_disc_step
METRICS = ("mssd", "mspd", "add")
SYMMETRY_CHUNK = 32  # equivalent poses compared at once (bounds the memory: chunk x vertices x 3)
RESULTS_FILE = "cloudpose_bop.csv"


def _axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about the unit ``axis`` (column vectors; Rodrigues)."""
    x, y, z = axis
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


def symmetry_transformations(model: BopModel, step: float = SYMMETRY_STEP) -> tuple[np.ndarray, np.ndarray]:
    """The poses ``x -> R_s x + t_s`` that leave the object looking the same (the identity first).

    Returns:
        (K, 3, 3) rotations and (K, 3) translations (mm), column vectors.
    """
    discrete = [(np.eye(3), np.zeros(3))] + [
        (matrix[:3, :3], matrix[:3, 3]) for matrix in model.symmetries_discrete
    ]
    continuous = []
    for symmetry in model.symmetries_continuous:
        axis = symmetry["axis"] / np.linalg.norm(symmetry["axis"])
        offset = symmetry["offset"]
        steps = int(math.ceil(math.pi / step))
        for index in range(steps):
            rotation = _axis_rotation(axis, index * 2.0 * math.pi / steps)
            continuous.append((rotation, offset - rotation @ offset))
    if continuous:
        combined = [
            (turn @ rotation, turn @ translation + shift)
            for rotation, translation in discrete
            for turn, shift in continuous
        ]
    else:
        combined = discrete
    return np.stack([item[0] for item in combined]), np.stack([item[1] for item in combined])


@dataclass(eq=False)
class ScoringModel:
    """What scoring needs of one object.

    Attributes:
        obj_id: its BOP id.
        vertices: (V, 3) its mesh's vertices, mm.
        diameter_mm: from ``models_info.json``.
        symmetric: whether it has symmetries (ADD-S instead of ADD).
        symmetry_rotations: (K, 3, 3) and symmetry_translations: (K, 3) its symmetries.
    """

    obj_id: int
    vertices: np.ndarray
    diameter_mm: float
    symmetric: bool
    symmetry_rotations: np.ndarray
    symmetry_translations: np.ndarray

    @classmethod
    def from_bop(cls, model: BopModel) -> ScoringModel:
        """Read the model's mesh (its vertices as written, no merging)."""
        import trimesh

        mesh = trimesh.load(model.path, force="mesh", process=False)
        rotations, translations = symmetry_transformations(model)
        return cls(
            model.obj_id,
            np.asarray(mesh.vertices, dtype=np.float64),
            model.diameter_mm,
            model.symmetric,
            rotations,
            translations,
        )

    def posed(self, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
        """(V, 3) the vertices at a pose (column vectors, mm)."""
        return self.vertices @ np.asarray(rotation).T + np.asarray(translation)

    def equivalents(self, rotation: np.ndarray, translation: np.ndarray) -> Iterator[np.ndarray]:
        """(k, V, 3) chunks of the vertices at every pose equivalent to ``(rotation, translation)``."""
        rotations = np.asarray(rotation) @ self.symmetry_rotations  # (K, 3, 3)
        translations = self.symmetry_translations @ np.asarray(rotation).T + translation  # (K, 3)
        for start in range(0, len(rotations), SYMMETRY_CHUNK):
            chunk = slice(start, start + SYMMETRY_CHUNK)
            yield np.einsum("vj,kij->kvi", self.vertices, rotations[chunk]) + translations[chunk, None]


def _project(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 2) pixels of (..., 3) camera-frame points."""
    image = points @ matrix.T
    return image[..., :2] / image[..., 2:]


def pose_errors(
    estimate: BopEstimate, truth, model: ScoringModel, camera_matrix: np.ndarray
) -> dict[str, float]:
    """MSSD (mm), MSPD (pixels) and ADD(-S) (mm) of an estimate against a ground truth (see the
    module docstring).

    Args:
        estimate: the estimate (or anything with ``rotation`` and ``translation_mm``).
        truth: a :class:`pipeline.data.bop.BopGroundTruth`.
        model: the object.
        camera_matrix: (3, 3) the image's ``cam_K``.
    """
    from scipy.spatial import cKDTree

    predicted = model.posed(estimate.rotation, estimate.translation_mm)  # (V, 3)
    predicted_pixels = _project(predicted, camera_matrix)  # (V, 2)
    mssd, mspd = math.inf, math.inf
    for chunk in model.equivalents(truth.rotation, truth.translation_mm):  # (k, V, 3)
        mssd = min(mssd, float(np.linalg.norm(chunk - predicted, axis=-1).max(axis=1).min()))
        gaps = _project(chunk, camera_matrix) - predicted_pixels  # (k, V, 2)
        mspd = min(mspd, float(np.linalg.norm(gaps, axis=-1).max(axis=1).min()))
    expected = model.posed(truth.rotation, truth.translation_mm)
    if model.symmetric:
        add = float(cKDTree(predicted).query(expected, k=1)[0].mean())
    else:
        add = float(np.linalg.norm(predicted - expected, axis=-1).mean())
    return {"mssd": mssd, "mspd": mspd, "add": add}


def thresholds(metric: str) -> tuple[float, ...]:
    """The metric's thresholds as the table names them (fractions of the diameter, or pixels at 640)."""
    return {"mssd": MSSD_THRESHOLDS, "mspd": MSPD_THRESHOLDS_PX, "add": (ADD_THRESHOLD,)}[metric]


def _matched(errors: np.ndarray, limit: float) -> int:
    """Instances matched at one threshold: rows (estimates, best score first) take greedily the
    unmatched column (instance) of smallest error below ``limit``."""
    free = np.ones(errors.shape[1], dtype=bool)
    for row in errors:
        candidates = np.where(free & (row < limit), row, np.inf)
        if np.isfinite(candidates).any():
            free[int(np.argmin(candidates))] = False
    return int((~free).sum())


@dataclass
class BopScores:
    """Recall of a set of estimates on a dataset.

    Attributes:
        counted: obj_id -> instances counted (visible at least ``MIN_VISIBLE``).
        matched: metric -> obj_id -> (T,) instances matched at each of the metric's thresholds.
        images: images scored.
        estimates: estimates given; ``considered`` of them were among the best ``n`` of their image and
            object (the others, and those of images or objects without counted instances, are ignored).
        seconds: each image's time (the estimates' ``time``; NaN where unknown).
    """

    counted: dict[int, int]
    matched: dict[str, dict[int, np.ndarray]]
    images: int
    estimates: int
    considered: int
    seconds: list[float] = field(default_factory=list)

    def recall(self, metric: str, obj_id: int | None = None) -> np.ndarray | None:
        """(T,) recall at each threshold, over one object or all (pooled); None without instances."""
        ids = list(self.counted) if obj_id is None else [obj_id]
        total = sum(self.counted[item] for item in ids)
        if total == 0:
            return None
        return sum(self.matched[metric][item] for item in ids) / total

    def average_recall(self, metric: str, obj_id: int | None = None) -> float | None:
        """The recall averaged over the metric's thresholds (the ADD(-S) recall for ``add``)."""
        recall = self.recall(metric, obj_id)
        return None if recall is None else float(recall.mean())

    def summary(self, obj_id: int | None = None) -> dict:
        """``instances``, ``ar_mssd``, ``ar_mspd``, ``ar`` (their mean) and ``add_recall``."""
        mssd, mspd = self.average_recall("mssd", obj_id), self.average_recall("mspd", obj_id)
        return {
            "instances": sum(self.counted.values()) if obj_id is None else self.counted[obj_id],
            "ar_mssd": mssd,
            "ar_mspd": mspd,
            "ar": None if mssd is None or mspd is None else (mssd + mspd) / 2.0,
            "add_recall": self.average_recall("add", obj_id),
        }


def _image_estimates(estimates: Sequence[BopEstimate]) -> dict[tuple[int, int, int], list[BopEstimate]]:
    grouped: dict[tuple[int, int, int], list[BopEstimate]] = defaultdict(list)
    for item in estimates:
        grouped[(item.scene_id, item.im_id, item.obj_id)].append(item)
    return grouped


def _score_image(
    image: BopImage,
    grouped: Mapping[tuple[int, int, int], list[BopEstimate]],
    models: Mapping[int, ScoringModel],
    scores: BopScores,
) -> None:
    """Add one image's counted and matched instances to ``scores``."""
    for obj_id in sorted({item.obj_id for item in image.instances}):
        counted = [
            item for item in image.instances if item.obj_id == obj_id and item.visible_fraction >= MIN_VISIBLE
        ]
        scores.counted[obj_id] = scores.counted.get(obj_id, 0) + len(counted)
        for metric in METRICS:
            scores.matched[metric].setdefault(obj_id, np.zeros(len(thresholds(metric)), dtype=np.int64))
        if not counted:
            continue
        found = grouped.get((image.scene_id, image.im_id, obj_id), [])
        best = sorted(found, key=lambda item: -item.score)[: len(counted)]
        scores.considered += len(best)
        if not best:
            continue
        model = models[obj_id]
        table = [[pose_errors(item, truth, model, image.camera.matrix) for truth in counted] for item in best]
        scale = {"mssd": model.diameter_mm, "mspd": image.width / 640.0, "add": model.diameter_mm}
        for metric in METRICS:
            errors = np.array([[cell[metric] for cell in row] for row in table])  # (E, G)
            for index, limit in enumerate(thresholds(metric)):
                scores.matched[metric][obj_id][index] += _matched(errors, limit * scale[metric])


def score_estimates(
    dataset: BopDataset, estimates: Sequence[BopEstimate], models: Mapping[int, ScoringModel] | None = None
) -> BopScores:
    """Score estimates on the dataset's images by the BOP criteria (see the module docstring).

    Args:
        dataset: the dataset (its ground truth, cameras and objects).
        estimates: the estimates, e.g. :func:`pipeline.data.bop.read_results` of a results CSV.
        models: obj_id -> scoring model, to reuse; read from the dataset when None.
    """
    if models is None:
        present = {item.obj_id for image in dataset.images for item in image.instances}
        models = {obj_id: ScoringModel.from_bop(dataset.models[obj_id]) for obj_id in sorted(present)}
    grouped = _image_estimates(estimates)
    scores = BopScores({}, {metric: {} for metric in METRICS}, len(dataset.images), len(estimates), 0)
    times: dict[tuple[int, int], float] = {}
    for item in estimates:
        times[(item.scene_id, item.im_id)] = float(item.time_s)
    for image in dataset.images:
        _score_image(image, grouped, models, scores)
        seconds = times.get((image.scene_id, image.im_id), -1.0)
        scores.seconds.append(seconds if seconds >= 0 else math.nan)
    return scores


@dataclass
class BopRun:
    """A detector over a dataset.

    Attributes:
        estimates: its confident detections as BOP estimates, image by image.
        failures: ``scene S image I: error`` for each image where the detector raised.
        scores: the estimates scored.
    """

    estimates: list[BopEstimate]
    failures: list[str]
    scores: BopScores


def detect_images(
    dataset: BopDataset, detector: Detector, progress: Callable[[int], None] | None = None
) -> tuple[list[BopEstimate], list[str], list[float]]:
    """The detector's confident detections on every image, as BOP estimates (see the module docstring).

    Each image's time is the detector's call alone (``time.perf_counter``), the PNG read and
    back-projected before it. Detections of objects that are not the dataset's are dropped; an
    image where the detector raises has no estimates, and its failure is listed.

    Args:
        dataset: the dataset; objects are named as :func:`pipeline.data.bop.object_name` names them.
        detector: ``points (N, 3) metres -> list[scene_bench.Detection]``.
        progress: called with the number of images done after each one.

    Returns:
        The estimates, the failures, and each image's seconds.
    """
    ids = {model.name: obj_id for obj_id, model in dataset.models.items()}
    estimates, failures, times = [], [], []
    for done, image in enumerate(dataset.images, start=1):
        points = image.points()
        started = time.perf_counter()
        try:
            found = list(detector(points))
        except Exception as error:  # a failing image fails alone, never the run
            found = []
            failures.append(f"scene {image.scene_id} image {image.im_id}: {type(error).__name__}: {error}")
        seconds = time.perf_counter() - started
        times.append(seconds)
        for detection in found:
            if not detection.confident or detection.object not in ids:
                continue
            estimates.append(
                BopEstimate(
                    image.scene_id,
                    image.im_id,
                    ids[detection.object],
                    float(detection.score),
                    np.asarray(detection.rotation, dtype=np.float64).T,  # rows -> columns
                    np.asarray(detection.translation, dtype=np.float64) * 1000.0,  # m -> mm
                    seconds,
                )
            )
        if progress is not None:
            progress(done)
    return estimates, failures, times


def run_bop_bench(
    dataset: BopDataset, detector: Detector, progress: Callable[[int], None] | None = None
) -> BopRun:
    """Detect on every image of the dataset and score the estimates (:func:`detect_images`,
    :func:`score_estimates`)."""
    estimates, failures, times = detect_images(dataset, detector, progress)
    scores = score_estimates(dataset, estimates)
    scores.seconds = times  # images without estimates have a time too
    return BopRun(estimates, failures, scores)


def format_table(scores: BopScores) -> str:
    """A fixed-width table: one row per object and one for all, AR_MSSD, AR_MSPD, their mean and
    the ADD(-S) recall (%), and notes on what was counted."""
    header = ["object", "instances", "AR_MSSD %", "AR_MSPD %", "AR(MSSD,MSPD) %", "ADD(-S) %"]
    rows = [(f"obj_{obj_id:06d}", scores.summary(obj_id)) for obj_id in sorted(scores.counted)]
    rows.append(("all", scores.summary()))
    body = [
        [
            name,
            cell_text(figures["instances"], "{}"),
            *(cell_text(figures[key], "{:.1%}") for key in ("ar_mssd", "ar_mspd", "ar", "add_recall")),
        ]
        for name, figures in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, width) in enumerate(zip(cells, widths, strict=True))
        )

    known = [seconds for seconds in scores.seconds if math.isfinite(seconds)]
    timing = f"{np.mean(known) * 1e3:.0f} ms an image on average" if known else "no image times"
    notes = [
        f"{scores.images} images, {scores.estimates} estimates ({scores.considered} among the best "
        f"n of their image and object), {timing}",
        f"instances visible at least {MIN_VISIBLE:g}; MSSD thresholds 0.05-0.5 of the diameter, MSPD "
        f"5-50 px x width/640, ADD(-S) < {ADD_THRESHOLD:g} of the diameter; VSD not computed",
    ]
    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body), "", *notes])


def scores_json(run: BopRun) -> dict:
    """A JSON-ready dict: the thresholds, the summary overall and per object, recall per threshold,
    the failures."""
    scores = run.scores

    def recalls(obj_id: int | None) -> dict:
        return {
            metric: (None if (values := scores.recall(metric, obj_id)) is None else values.tolist())
            for metric in METRICS
        }

    return {
        "criteria": {
            "min_visible": MIN_VISIBLE,
            "mssd_thresholds_of_diameter": list(MSSD_THRESHOLDS),
            "mspd_thresholds_px_at_640": list(MSPD_THRESHOLDS_PX),
            "add_threshold_of_diameter": ADD_THRESHOLD,
            "vsd": "not computed",
        },
        "images": scores.images,
        "estimates": scores.estimates,
        "considered": scores.considered,
        "failures": run.failures,
        "summary": {**scores.summary(), "recall": recalls(None)},
        "by_object": {
            f"obj_{obj_id:06d}": {**scores.summary(obj_id), "recall": recalls(obj_id)}
            for obj_id in sorted(scores.counted)
        },
        "seconds": [None if math.isnan(value) else value for value in scores.seconds],
    }


def write_outputs(run: BopRun, out: str | Path) -> dict[str, Path]:
    """Write ``cloudpose_bop.csv`` (the BOP results file), ``bop_scores.txt`` and ``bop_scores.json``."""
    out = Path(out)
    return {
        "results": write_results(out / RESULTS_FILE, run.estimates),
        "table": atomic_write_text(out / "bop_scores.txt", format_table(run.scores) + "\n"),
        "json": atomic_write_json(out / "bop_scores.json", scores_json(run)),
    }
