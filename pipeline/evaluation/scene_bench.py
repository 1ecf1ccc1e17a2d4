"""Whole-frame benchmark: detectors that find known objects in cluttered depth frames, scored BOP-style.

Frames come from :mod:`pipeline.data.scenes` (:func:`scene_frames` builds a seeded set). A detector is any
callable ``points (N, 3) -> list[Detection]`` that takes a frame's valid returns in the sensor frame
(OpenCV: camera at the origin looking along +z; metres) and returns object poses in the convention
of :mod:`models.geometry` and the ground truth (row vectors): an object whose canonical points ``X``
are its mesh's own coordinates appears at ``X @ rotation + translation``.

Scoring (:func:`score_frame`), after the BOP challenge's pose-correctness test:

* a pose is *correct* for a ground-truth instance of the same object when its rotation error is
  below ``Criteria.rotation_deg`` (5°) and its translation error is below
  ``Criteria.translation_pct`` (2 %) of the object's bounding-box diagonal. The translation error is
  how far apart the two poses put the object's surface centroid, ``‖(c R_pred + t_pred) - (c R_gt +
  t_gt)‖``, so it does not depend on where the mesh file puts its origin. With a
  :class:`cloudpose.geometry.symmetry.Symmetry` the rotation error is the smallest over the
  equivalent ground truths; symmetry axes pass through the centroid, so every equivalent puts the
  centroid in the same place and only the rotation error changes;
* matching is greedy: confident detections in order of decreasing score, each to the correct,
  still unmatched instance with the smallest translation error; a confident detection left
  unmatched is a false positive (a second detection of one instance among them). Detections that
  are not ``confident`` are not reported: they count for neither precision nor recall, but are
  kept, and matched on their own with the confident ones (``recall_any_confidence``);
* every instance can be matched, but recall counts only instances whose ``visible_fraction`` is at
  least ``Criteria.min_visible`` (0.3), overall and by visible-fraction bin; a detection of a
  less visible instance is still a true positive, not a false one;
* MSSD (BOP's maximum symmetry-aware surface distance) of a matched pose: the largest distance
  between the model's surface points posed by the estimate and by the nearest equivalent ground
  truth, in % of the object's diameter (a continuous symmetry is searched in 1° steps).

:func:`run_scene_bench` runs several detectors on the same frames, taking turns frame by frame (as
:func:`pipeline.evaluation.bench.run_bench` does case by case), and times each call with
``time.perf_counter``. A detector that raises fails that frame: it reports nothing there, and the
failures are counted. :func:`format_table` and :func:`results_json` give the summary.

Baselines: :func:`clustering_fpfh_detector` (support-plane removal, DBSCAN clusters, FPFH + RANSAC +
point-to-plane ICP per cluster and object, open3d) and, when OpenCV's contrib module imports,
:func:`ppf_detector` (OpenCV's point-pair-feature detector).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloudpose.geometry.rotations import axis_rotation, geodesic_deg
from cloudpose.geometry.symmetry import Symmetry
from pipeline.data.scenes import (
    Frame,
    Instance,
    Intrinsics,
    NoiseModel,
    SceneCounts,
    SceneLayout,
    SceneObject,
    make_frame,
    package_object,
)
from pipeline.evaluation.bench import cell_text

VISIBLE_BINS = (0.3, 0.5, 0.7, 0.9, 1.0)  # edges: [0.3, 0.5), [0.5, 0.7), [0.7, 0.9), [0.9, 1.0]
RANGE_BINS_M = (0.8, 1.0)  # range edges (metres): under 0.8 m, 0.8 to 1.0 m, 1.0 m and beyond
CONTINUOUS_STEP_DEG = 1.0  # MSSD searches a continuous symmetry in steps of this angle
MSSD_POINTS = 1000  # model surface points that MSSD takes the maximum over


@dataclass
class Detection:
    """One object pose found in a frame.

    Attributes:
        object: the object's name (a key of the benchmark's ``objects``).
        rotation: (3, 3) and translation: (3,) the object pose, ``canonical @ rotation +
            translation`` in the sensor frame (metres), as :class:`pipeline.data.scenes.Instance`.
        score: higher is more certain; matching takes detections in decreasing score.
        confident: whether the detector reports it; the others are ignored for precision and recall.
    """

    object: str
    rotation: np.ndarray
    translation: np.ndarray
    score: float
    confident: bool = True


Detector = Callable[[np.ndarray], list[Detection]]


@dataclass(eq=False)
class ObjectModel:
    """What the benchmark knows of one object, in its canonical frame (the mesh's coordinates).

    Attributes:
        points: (M, 3) float64 surface points (metres).
        normals: (M, 3) float64 outward unit normals.
        diagonal: bounding-box diagonal of the mesh; translation errors are in % of it.
        diameter: largest distance between two surface points; MSSD is in % of it.
        symmetry: the object's rotational symmetries (about the centroid), or None for none.
        centroid: (3,) the area-weighted surface centroid, in the mesh's coordinates (metres).
    """

    points: np.ndarray
    normals: np.ndarray
    diagonal: float
    diameter: float
    symmetry: Symmetry | None = None
    centroid: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @classmethod
    def from_mesh(
        cls, mesh, symmetry: Symmetry | None = None, count: int = 5000, seed: int = 0
    ) -> ObjectModel:
        """Sample a model from a mesh.

        Args:
            mesh: a ``trimesh.Trimesh`` or a :class:`pipeline.data.scenes.SceneObject` (its mesh), in
                metres; its own coordinates are the canonical frame.
            symmetry: its symmetries, if any.
            count: surface points to sample (area-weighted).
            seed: seeds the sample.
        """
        from cloudpose.registration.refine import sample_surface_with_normals
        from pipeline.data.mesh import surface_centroid
        from pipeline.data.symmetry_search import object_diameter

        mesh = getattr(mesh, "mesh", mesh)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        faces = np.asarray(mesh.faces, dtype=np.int64)
        surface = sample_surface_with_normals(vertices, faces, count, np.random.default_rng(seed))
        return cls(
            points=surface[:, :3].astype(np.float64),
            normals=surface[:, 3:].astype(np.float64),
            diagonal=float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0))),
            diameter=object_diameter(vertices),
            symmetry=symmetry,
            centroid=surface_centroid(vertices, faces),
        )

    @functools.cached_property
    def surface(self):
        """The :class:`cloudpose.registration.refine.SurfaceModel` of the points (built on first use)."""
        from cloudpose.registration.refine import SurfaceModel

        return SurfaceModel(self.points, self.normals, self.diagonal)

    @functools.cached_property
    def equivalent_rotations(self) -> np.ndarray:
        """(K, 3, 3) the symmetries ``S`` MSSD searches: the identity alone without a symmetry; a
        continuous axis in ``CONTINUOUS_STEP_DEG`` steps composed with the finite rotations."""
        if self.symmetry is None:
            return np.eye(3)[None]
        finite = np.asarray(self.symmetry.rotations, dtype=np.float64)
        if self.symmetry.axis is None:
            return finite
        angles = np.deg2rad(np.arange(0.0, 360.0, CONTINUOUS_STEP_DEG))
        turns = np.stack([axis_rotation(self.symmetry.axis, angle) for angle in angles])  # (A, 3, 3)
        return (turns[:, None] @ finite[None]).reshape(-1, 3, 3)  # (A*K, 3, 3)

    @functools.cached_property
    def mssd_points(self) -> np.ndarray:
        """(min(M, MSSD_POINTS), 3) an even subset of the points, relative to the centroid."""
        step = max(1, len(self.points) // MSSD_POINTS)
        return self.points[::step][:MSSD_POINTS] - self.centroid


@dataclass(frozen=True)
class Criteria:
    """When a pose is correct, and how recall is binned.

    Attributes:
        rotation_deg: a correct pose's rotation error is below this.
        translation_pct: a correct pose's translation error is below this % of the diagonal.
        min_visible: instances less visible than this are left out of recall.
        bins: increasing visible-fraction edges; bin i is ``[bins[i], bins[i + 1])``, the last one
            closed. The first edge should be ``min_visible``.
        range_bins: increasing range edges (frame units, metres in the benchmarks) between the
            recall-by-range groups: the first group holds instances whose centroid lies nearer
            the sensor than the first edge, the last those at the last edge or beyond.
    """

    rotation_deg: float = 5.0
    translation_pct: float = 2.0
    min_visible: float = 0.3
    bins: tuple[float, ...] = VISIBLE_BINS
    range_bins: tuple[float, ...] = RANGE_BINS_M

    def bin_of(self, visible_fraction: float) -> int | None:
        """Index of the bin that holds ``visible_fraction``, or None outside every bin."""
        edges = self.bins
        for index in range(len(edges) - 1):
            last = index == len(edges) - 2
            if edges[index] <= visible_fraction < edges[index + 1] or (
                last and visible_fraction == edges[index + 1]
            ):
                return index
        return None

    def range_bin_of(self, distance: float) -> int:
        """Index of the range group that holds ``distance`` (see ``range_bins``)."""
        return int(np.searchsorted(np.asarray(self.range_bins, dtype=np.float64), distance, side="right"))

    def range_labels(self) -> list[str]:
        """``<0.8 m``, ``0.8-1 m``, ``≥1 m``-style labels of the range groups (``any range``
        without edges)."""
        edges = self.range_bins
        if not edges:
            return ["any range"]
        middle = [f"{edges[i]:g}-{edges[i + 1]:g} m" for i in range(len(edges) - 1)]
        return [f"<{edges[0]:g} m", *middle, f"≥{edges[-1]:g} m"]

    def bin_labels(self) -> list[str]:
        """``[0.3,0.5)``-style labels of the bins, the last one closed (``[0.9,1.0]``)."""
        edges = self.bins
        return [
            f"[{edges[i]:.1f},{edges[i + 1]:.1f}" + ("]" if i == len(edges) - 2 else ")")
            for i in range(len(edges) - 1)
        ]


@dataclass
class PoseErrors:
    """Errors of one estimated pose against one ground-truth instance (symmetry-aware).

    Attributes:
        rotation_deg: geodesic angle to the nearest equivalent ground-truth rotation.
        translation_pct: how far apart the two poses put the surface centroid, in % of the diagonal.
        mssd_pct: MSSD in % of the diameter; NaN when not computed.
    """

    rotation_deg: float
    translation_pct: float
    mssd_pct: float = math.nan


def pose_errors(
    pred_rotation: np.ndarray,
    pred_translation: np.ndarray,
    gt_rotation: np.ndarray,
    gt_translation: np.ndarray,
    model: ObjectModel,
    with_mssd: bool = False,
) -> PoseErrors:
    """Symmetry-aware rotation and translation errors, and MSSD on request.

    Args:
        pred_rotation, gt_rotation: (3, 3) object rotations.
        pred_translation, gt_translation: (3,) object translations (metres).
        model: the object (diagonal, diameter, symmetry, surface points).
        with_mssd: also compute MSSD (a maximum over the model points per equivalent rotation).
    """
    pred_rotation = np.asarray(pred_rotation, dtype=np.float64)
    gt_rotation = np.asarray(gt_rotation, dtype=np.float64)
    centroid = model.centroid
    offset = (centroid @ pred_rotation + np.asarray(pred_translation, dtype=np.float64)) - (
        centroid @ gt_rotation + np.asarray(gt_translation, dtype=np.float64)
    )
    if model.symmetry is None:
        rotation_deg = float(geodesic_deg(pred_rotation, gt_rotation))
    else:
        rotation_deg = model.symmetry.error_deg(pred_rotation, gt_rotation)
    errors = PoseErrors(rotation_deg, float(np.linalg.norm(offset) / model.diagonal * 100.0))
    if with_mssd:
        equivalents = model.equivalent_rotations @ gt_rotation  # (K, 3, 3)
        gaps = np.einsum("mi,kij->kmj", model.mssd_points, pred_rotation[None] - equivalents)  # (K, M, 3)
        largest = np.linalg.norm(gaps + offset, axis=-1).max(axis=1)  # (K,)
        errors.mssd_pct = float(largest.min() / model.diameter * 100.0)
    return errors


@dataclass
class DetectionScore:
    """A reported detection and what it matched.

    Attributes:
        detection: the detection.
        instance: index into the frame's instances of the instance it matched, or None (a false
            positive).
        errors: against the matched instance; unmatched, against the nearest instance of the same
            object (by translation), or None when the frame holds none.
    """

    detection: Detection
    instance: int | None
    errors: PoseErrors | None


@dataclass
class InstanceScore:
    """One ground-truth instance and whether it was found.

    Attributes:
        name: its object.
        visible_fraction: from the ground truth.
        matched: a confident detection matched it.
        matched_any_confidence: some detection matched it when confidence is ignored.
        errors: of the matching confident detection (MSSD included), or None.
        distance: how far its centroid lies from the sensor (the frame's origin), frame units;
            None when not known.
    """

    name: str
    visible_fraction: float
    matched: bool
    matched_any_confidence: bool
    errors: PoseErrors | None = None
    distance: float | None = None


@dataclass
class FrameScore:
    """One detector's answer on one frame, scored.

    Attributes:
        instances: one per ground-truth instance, in the frame's order.
        detections: the confident detections in matching order (decreasing score).
        unconfident: the other detections, as returned.
        seconds: wall time of the detector's call.
        error: the exception's message when the detector raised (it then reported nothing).
    """

    instances: list[InstanceScore]
    detections: list[DetectionScore]
    unconfident: list[Detection] = field(default_factory=list)
    seconds: float = math.nan
    error: str | None = None

    @property
    def true_positives(self) -> int:
        return sum(score.instance is not None for score in self.detections)

    @property
    def false_positives(self) -> int:
        return sum(score.instance is None for score in self.detections)


def _greedy_match(
    detections: Sequence[Detection],
    instances: Sequence[Instance],
    objects: Mapping[str, ObjectModel],
    criteria: Criteria,
) -> list[tuple[Detection, int | None, PoseErrors | None]]:
    """Match detections (any order given) to instances greedily by decreasing score."""
    order = sorted(range(len(detections)), key=lambda k: -float(detections[k].score))
    unmatched = set(range(len(instances)))
    matches = []
    for k in order:
        detection = detections[k]
        model = objects.get(detection.object)
        best: tuple[float, int, PoseErrors] | None = None
        nearest: tuple[float, PoseErrors] | None = None
        for index, instance in enumerate(instances):
            if model is None or instance.name != detection.object:
                continue
            errors = pose_errors(
                detection.rotation, detection.translation, instance.rotation, instance.translation, model
            )
            if nearest is None or errors.translation_pct < nearest[0]:
                nearest = (errors.translation_pct, errors)
            correct = errors.rotation_deg < criteria.rotation_deg and (
                errors.translation_pct < criteria.translation_pct
            )
            if correct and index in unmatched and (best is None or errors.translation_pct < best[0]):
                best = (errors.translation_pct, index, errors)
        if best is None:
            matches.append((detection, None, None if nearest is None else nearest[1]))
            continue
        unmatched.discard(best[1])
        matches.append((detection, best[1], best[2]))
    return matches


def score_frame(
    detections: Sequence[Detection],
    instances: Sequence[Instance],
    objects: Mapping[str, ObjectModel],
    criteria: Criteria = Criteria(),
) -> FrameScore:
    """Match one frame's detections to its ground truth (see the module docstring for the rule).

    Args:
        detections: what a detector returned.
        instances: the frame's ground truth (:attr:`pipeline.data.scenes.Frame.instances`).
        objects: name -> model; detections of other objects are false positives.
        criteria: when a pose is correct.

    Returns:
        The scored frame (``seconds`` and ``error`` left unset).
    """
    confident = [detection for detection in detections if detection.confident]
    unconfident = [detection for detection in detections if not detection.confident]
    scored = []
    errors_of: dict[int, PoseErrors] = {}
    for detection, index, errors in _greedy_match(confident, instances, objects, criteria):
        if index is not None:
            instance = instances[index]
            errors = pose_errors(
                detection.rotation,
                detection.translation,
                instance.rotation,
                instance.translation,
                objects[detection.object],
                with_mssd=True,
            )
            errors_of[index] = errors
        scored.append(DetectionScore(detection, index, errors))
    if unconfident:
        found_any = {index for _, index, _ in _greedy_match(detections, instances, objects, criteria)}
    else:
        found_any = set(errors_of)
    instance_scores = [
        InstanceScore(
            instance.name,
            float(instance.visible_fraction),
            index in errors_of,
            index in found_any,
            errors_of.get(index),
            _distance(instance, objects.get(instance.name)),
        )
        for index, instance in enumerate(instances)
    ]
    return FrameScore(instance_scores, scored, unconfident)


def _distance(instance: Instance, model: ObjectModel | None) -> float:
    """How far the instance's centroid (its origin when the model is not known) lies from the
    sensor at the frame's origin."""
    centroid = np.zeros(3) if model is None else np.asarray(model.centroid, dtype=np.float64)
    return float(np.linalg.norm(centroid @ np.asarray(instance.rotation) + np.asarray(instance.translation)))


@dataclass
class DetectorResult:
    """One detector over the whole benchmark.

    Attributes:
        name: the detector's name.
        frames: one score per frame, in frame order.
        metrics: the summary (see :func:`summarize`).
    """

    name: str
    frames: list[FrameScore]
    metrics: dict = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return sum(frame.error is not None for frame in self.frames)

    @property
    def first_error(self) -> str | None:
        return next((frame.error for frame in self.frames if frame.error is not None), None)


@dataclass
class SceneBenchResults:
    """Everything :func:`run_scene_bench` measured.

    Attributes:
        detectors: names in the order given.
        results: name -> its result.
        criteria: what was counted as correct, and the bins.
        frame_count: frames scored.
        empty_frames: frames without any target instance.
    """

    detectors: list[str]
    results: dict[str, DetectorResult]
    criteria: Criteria
    frame_count: int
    empty_frames: int


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def summarize(frames: Sequence[FrameScore], criteria: Criteria = Criteria()) -> dict:
    """Summary of one detector's scored frames.

    Returns:
        ``frames``, ``failures``; ``instances`` (visible at least ``min_visible``) and ``recall``
        among them, ``recall_any_confidence``; ``instances_by_bin`` and ``recall_by_bin`` (lists,
        one per bin; None for an empty bin); ``instances_by_range`` and ``recall_by_range``
        (likewise, one per range group, instances of unknown distance left out); ``detections``
        (confident), ``true_positives``, ``precision``; medians over matched instances of
        ``rotation_deg``, ``translation_pct``, ``mssd_pct``; ``median_ms`` and ``p90_ms`` per
        frame; ``empty_frames`` and ``false_alarm_rate`` (the fraction of them with a confident
        detection). Ratios and medians of nothing are None.
    """
    counted = [
        instance
        for frame in frames
        for instance in frame.instances
        if instance.visible_fraction >= criteria.min_visible
    ]
    bins = len(criteria.bins) - 1
    in_bin = [[i for i in counted if criteria.bin_of(i.visible_fraction) == b] for b in range(bins)]
    placed = [i for i in counted if i.distance is not None]
    in_range = [
        [i for i in placed if criteria.range_bin_of(i.distance) == g]
        for g in range(len(criteria.range_bins) + 1)
    ]
    matched = [instance.errors for frame in frames for instance in frame.instances if instance.errors]
    detections = sum(len(frame.detections) for frame in frames)
    true_positives = sum(frame.true_positives for frame in frames)
    empty = [frame for frame in frames if not frame.instances]
    milliseconds = np.array([frame.seconds * 1e3 for frame in frames], dtype=np.float64)
    return {
        "frames": len(frames),
        "failures": sum(frame.error is not None for frame in frames),
        "instances": len(counted),
        "recall": _ratio(sum(i.matched for i in counted), len(counted)),
        "recall_any_confidence": _ratio(sum(i.matched_any_confidence for i in counted), len(counted)),
        "instances_by_bin": [len(members) for members in in_bin],
        "recall_by_bin": [_ratio(sum(i.matched for i in members), len(members)) for members in in_bin],
        "instances_by_range": [len(members) for members in in_range],
        "recall_by_range": [_ratio(sum(i.matched for i in members), len(members)) for members in in_range],
        "detections": detections,
        "true_positives": true_positives,
        "precision": _ratio(true_positives, detections),
        "rotation_median_deg": _median([errors.rotation_deg for errors in matched]),
        "translation_median_pct": _median([errors.translation_pct for errors in matched]),
        "mssd_median_pct": _median([errors.mssd_pct for errors in matched]),
        "median_ms": float(np.median(milliseconds)) if len(milliseconds) else None,
        "p90_ms": float(np.quantile(milliseconds, 0.9)) if len(milliseconds) else None,
        "empty_frames": len(empty),
        "false_alarm_rate": _ratio(sum(bool(frame.detections) for frame in empty), len(empty)),
        "by_object": _by_object(frames, counted),
    }


def _by_object(frames: Sequence[FrameScore], counted: Sequence[InstanceScore]) -> dict[str, dict]:
    """Per object: instances counted, recall (and ignoring confidence), confident detections
    and precision."""
    names = sorted({i.name for i in counted} | {d.detection.object for f in frames for d in f.detections})
    summary = {}
    for name in names:
        mine = [i for i in counted if i.name == name]
        reported = [d for frame in frames for d in frame.detections if d.detection.object == name]
        summary[name] = {
            "instances": len(mine),
            "recall": _ratio(sum(i.matched for i in mine), len(mine)),
            "recall_any_confidence": _ratio(sum(i.matched_any_confidence for i in mine), len(mine)),
            "detections": len(reported),
            "precision": _ratio(sum(d.instance is not None for d in reported), len(reported)),
        }
    return summary


def _call(detector: Detector, points: np.ndarray) -> tuple[list[Detection], float, str | None]:
    start = time.perf_counter()
    try:
        detections = list(detector(points))
        seconds = time.perf_counter() - start
        for detection in detections:
            if not isinstance(detection, Detection):
                raise TypeError(f"detector returned a {type(detection).__name__}, not a Detection")
            rotation = np.asarray(detection.rotation, dtype=np.float64)
            translation = np.asarray(detection.translation, dtype=np.float64)
            if rotation.shape != (3, 3) or translation.shape != (3,):
                raise ValueError(f"pose of shapes {rotation.shape} and {translation.shape}")
            if not (np.isfinite(rotation).all() and np.isfinite(translation).all()):
                raise ValueError("pose is not finite")
        return detections, seconds, None
    except Exception as error:  # a failing detector fails its frame, never the benchmark
        return [], time.perf_counter() - start, f"{type(error).__name__}: {error}"


def run_scene_bench(
    detectors: Mapping[str, Detector],
    frames: Iterable[Frame],
    objects: Mapping[str, ObjectModel],
    *,
    criteria: Criteria = Criteria(),
    warmup: int = 1,
    progress: Callable[[int], None] | None = None,
) -> SceneBenchResults:
    """Run every detector on every frame and score them.

    The detectors take turns frame by frame, so a machine that slows down during the run affects
    all of them alike. Each call is timed alone with ``time.perf_counter``; ``frame.points()`` is
    computed once per frame, outside the timing.

    Args:
        detectors: name -> callable ``points (N, 3) -> list[Detection]``.
        frames: the frames (e.g. :func:`scene_frames`); consumed once, one at a time.
        objects: name -> model of every target object.
        criteria: when a pose is correct, and the bins.
        warmup: untimed calls of each detector on the first frame before timing (builds lazily
            cached state such as model features); their failures are ignored.
        progress: called with the number of frames done after each frame.

    Returns:
        Per detector, every frame's score and the summary (``results[name].metrics``).
    """
    scores: dict[str, list[FrameScore]] = {name: [] for name in detectors}
    frame_count = empty_frames = 0
    for index, frame in enumerate(frames):
        points = frame.points()
        if index == 0:
            for detector in detectors.values():
                for _ in range(warmup):
                    _call(detector, points)
        for name, detector in detectors.items():
            detections, seconds, error = _call(detector, points)
            score = score_frame(detections, frame.instances, objects, criteria)
            score.seconds, score.error = seconds, error
            scores[name].append(score)
        frame_count += 1
        empty_frames += not frame.instances
        if progress is not None:
            progress(frame_count)
    results = {name: DetectorResult(name, frame_scores) for name, frame_scores in scores.items()}
    for result in results.values():
        result.metrics = summarize(result.frames, criteria)
    return SceneBenchResults(list(detectors), results, criteria, frame_count, empty_frames)


def format_table(results: SceneBenchResults) -> str:
    """A fixed-width text table: one row per detector.

    Columns: frames, failures, recall (visible ≥ ``min_visible``) overall and per visible-fraction
    bin, recall ignoring confidence, precision, medians of the matched instances' rotation error,
    translation error and MSSD, median and p90 ms per frame, false-alarm rate on frames without
    targets. Instance counts per bin follow the table.
    """
    criteria = results.criteria
    labels = criteria.bin_labels()
    header = [
        "detector",
        "frames",
        "fail",
        f"recall≥{criteria.min_visible:g} %",
        *(f"{label} %" for label in labels),
        "any-conf %",
        "precision %",
        "rot med °",
        "trans med %",
        "MSSD med %",
        "ms med",
        "ms p90",
        "false alarm %",
    ]
    body = []
    for name in results.detectors:
        m = results.results[name].metrics
        body.append(
            [
                name,
                cell_text(m["frames"], "{}"),
                cell_text(m["failures"], "{}"),
                cell_text(m["recall"], "{:.1%}"),
                *(cell_text(value, "{:.1%}") for value in m["recall_by_bin"]),
                cell_text(m["recall_any_confidence"], "{:.1%}"),
                cell_text(m["precision"], "{:.1%}"),
                cell_text(m["rotation_median_deg"], "{:.2f}"),
                cell_text(m["translation_median_pct"], "{:.2f}"),
                cell_text(m["mssd_median_pct"], "{:.2f}"),
                cell_text(m["median_ms"], "{:.1f}"),
                cell_text(m["p90_ms"], "{:.1f}"),
                cell_text(m["false_alarm_rate"], "{:.1%}"),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * width for width in widths)
    first = results.results[results.detectors[0]].metrics if results.detectors else None
    counts = (
        ", ".join(f"{label}: {count}" for label, count in zip(labels, first["instances_by_bin"], strict=True))
        if first
        else "-"
    )
    notes = [
        f"{results.frame_count} frames, {results.empty_frames} without targets; instances by visible "
        f"fraction: {counts}",
        f"correct: rotation < {criteria.rotation_deg:g}°, translation < {criteria.translation_pct:g} % of "
        "the diagonal (symmetry-aware); MSSD in % of the diameter; errors are medians over matches",
    ]
    by_range = [
        f"  {name}: "
        + ", ".join(
            f"{label} {cell_text(recall, '{:.1%}')} % of {count}"
            for label, recall, count in zip(
                criteria.range_labels(),
                results.results[name].metrics["recall_by_range"],
                results.results[name].metrics["instances_by_range"],
                strict=True,
            )
        )
        for name in results.detectors
    ]
    per_object = [
        f"  {name}: "
        + ", ".join(
            f"{item}: recall {cell_text(figures['recall'], '{:.1%}')} % (any confidence "
            f"{cell_text(figures['recall_any_confidence'], '{:.1%}')} %) of {figures['instances']}, "
            f"precision {cell_text(figures['precision'], '{:.1%}')} % of {figures['detections']}"
            for item, figures in sorted(results.results[name].metrics["by_object"].items())
        )
        for name in results.detectors
    ]
    return "\n".join(
        [
            line(header),
            rule,
            *(line(row) for row in body),
            "",
            *notes,
            "recall by the range of the instance's centroid:",
            *by_range,
            "per object:",
            *per_object,
        ]
    )


def _json_value(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value


def _errors_json(errors: PoseErrors | None) -> dict | None:
    if errors is None:
        return None
    return {
        "rotation_deg": _json_value(errors.rotation_deg),
        "translation_pct": _json_value(errors.translation_pct),
        "mssd_pct": _json_value(errors.mssd_pct),
    }


def results_json(results: SceneBenchResults) -> dict:
    """A JSON-ready dict: criteria, summaries, and per detector and frame the time, failure,
    instances (visible fraction, matched, errors) and reported detections (NaN/inf -> null)."""
    criteria = results.criteria
    return {
        "criteria": {
            "rotation_deg": criteria.rotation_deg,
            "translation_pct": criteria.translation_pct,
            "min_visible": criteria.min_visible,
            "bins": list(criteria.bins),
            "bin_labels": criteria.bin_labels(),
            "range_bins": list(criteria.range_bins),
            "range_labels": criteria.range_labels(),
        },
        "frame_count": results.frame_count,
        "empty_frames": results.empty_frames,
        "detectors": results.detectors,
        "summary": {
            name: {key: _json_value(value) for key, value in results.results[name].metrics.items()}
            for name in results.detectors
        },
        "frames": {
            name: [
                {
                    "ms": _json_value(frame.seconds * 1e3),
                    "error": frame.error,
                    "instances": [
                        {
                            "object": instance.name,
                            "visible_fraction": instance.visible_fraction,
                            "distance": _json_value(instance.distance),
                            "matched": instance.matched,
                            "matched_any_confidence": instance.matched_any_confidence,
                            "errors": _errors_json(instance.errors),
                        }
                        for instance in frame.instances
                    ],
                    "detections": [
                        {
                            "object": score.detection.object,
                            "score": _json_value(float(score.detection.score)),
                            "instance": score.instance,
                            "errors": _errors_json(score.errors),
                        }
                        for score in frame.detections
                    ],
                    "unconfident": len(frame.unconfident),
                }
                for frame in results.results[name].frames
            ]
            for name in results.detectors
        },
    }


DEFAULT_INTRINSICS = Intrinsics()  # VGA
BENCH_COUNTS = SceneCounts(target_copies=(1, 2))  # frames with targets hold at least one copy
DEFAULT_NOISE = NoiseModel()


def scene_frames(
    targets: Sequence,
    distractors: Sequence,
    count: int,
    seed: int,
    intrinsics: Intrinsics = DEFAULT_INTRINSICS,
    *,
    empty_fraction: float = 0.2,
    counts: SceneCounts = BENCH_COUNTS,
    noise: NoiseModel = DEFAULT_NOISE,
    layout: SceneLayout | None = None,
) -> Iterator[Frame]:
    """Seeded benchmark frames, built one at a time with :func:`pipeline.data.scenes.make_frame`.

    Frame ``i`` is drawn from its own generator, spawned from ``seed`` (numpy's ``SeedSequence``),
    so ``(seed, count)`` gives one set, bit for bit. ``round(empty_fraction * count)`` frames,
    chosen by the seed, hold only distractors (the false-alarm frames); the others hold
    ``counts.target_copies`` copies of every target.

    Args:
        targets: :class:`pipeline.data.scenes.SceneObject` targets (meshes in metres).
        distractors: :class:`pipeline.data.scenes.SceneObject` clutter.
        count: number of frames.
        seed: the set's seed.
        intrinsics: the camera.
        empty_fraction: share of frames without targets.
        counts: copies of each target and number of distractors per frame.
        noise: the sensor's errors.
        layout: the table and the spread of objects (default: :meth:`SceneLayout.for_size` of
            the largest target).

    Yields:
        Frames in order.
    """
    if layout is None:
        diagonals = [float(np.linalg.norm(item.mesh.extents)) for item in targets]
        layout = SceneLayout.for_size(max(diagonals, default=0.25))
    sequence = np.random.SeedSequence(seed)
    chooser, *frame_seeds = sequence.spawn(count + 1)
    n_empty = min(count, round(empty_fraction * count))
    empty = set(np.random.default_rng(chooser).choice(count, size=n_empty, replace=False).tolist())
    for index, frame_seed in enumerate(frame_seeds):
        yield make_frame(
            [] if index in empty else list(targets),
            list(distractors),
            np.random.default_rng(frame_seed),
            intrinsics,
            counts,
            noise,
            layout,
        )


# Clustering + FPFH baseline defaults (metres unless stated; see clustering_fpfh_detector).
VOXEL_M = 0.005
PLANE_DISTANCE_M = 0.01
PLANE_ITERATIONS = 1000
MIN_PLANE_FRACTION = 0.2
CLUSTER_EPS_M = 0.015
CLUSTER_MIN_POINTS = 10
MIN_CLUSTER_VOXELS = 30
MIN_EXTENT_FRACTION = 0.3
MAX_EXTENT_FRACTION = 1.5
FITNESS_DISTANCE_FRACTION = 0.02
# Decides only whether a baseline detector (clustering + FPFH, OpenCV PPF) calls a detection
# confident in the scene benchmark; the service's answers never read it. Set on synthetic frames
# (20 VGA frames of bunnies among a box, a cylinder and a capsule, DEFAULT_NOISE; see
# clustering_fpfh_detector), not on real scans. It is scale-free: fitness counts the points within
# FITNESS_DISTANCE_FRACTION of the object's own diagonal, and the benchmark's layout scales the
# camera's distance with the largest target's diagonal (SceneLayout.for_size), so a correct pose
# of any object misses only the points the sensor's noise throws past 2 % of its diagonal; it
# holds while that noise at the object's range stays well under 2 % of its diagonal (the
# bunny's 5 mm against 1-3 mm); for an object a few centimetres across it does not, and the
# baselines' confident flag is then to be measured again on its frames.
CONFIDENT_FITNESS = 0.9


def remove_support_plane(
    points: np.ndarray,
    voxel_m: float = VOXEL_M,
    distance_m: float = PLANE_DISTANCE_M,
    iterations: int = PLANE_ITERATIONS,
    min_fraction: float = MIN_PLANE_FRACTION,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Drop the dominant plane (the table) and everything on its far side.

    The plane is fitted by open3d's RANSAC ``segment_plane`` on the voxel-downsampled cloud; it
    counts as a support when it holds at least ``min_fraction`` of the voxels. Then only points
    more than ``distance_m`` above it, on the camera's side, are kept (which also drops the
    table's edges and anything seen below it).

    Args:
        points: (N, 3) sensor-frame points (metres).
        voxel_m: voxel of the downsampled cloud the plane is fitted to.
        distance_m: RANSAC inlier distance and the height above the plane that is kept.
        iterations: RANSAC iterations.
        min_fraction: least share of the voxels a support plane holds.
        seed: seeds open3d's random generator.

    Returns:
        (K, 3) the points above the plane (all of them without a support), and the plane's (4,)
        coefficients ``a x + b y + c z + d = 0`` with the camera on the positive side, or None.
    """
    import open3d as o3d

    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(axis=1)]
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)).voxel_down_sample(voxel_m)
    if len(cloud.points) < 3:
        return points, None
    o3d.utility.random.seed(int(seed))
    plane, inliers = cloud.segment_plane(distance_m, 3, iterations)
    if len(inliers) < min_fraction * len(cloud.points):
        return points, None
    plane = np.asarray(plane, dtype=np.float64) / np.linalg.norm(plane[:3])
    if plane[3] < 0:  # the camera (the origin) has signed distance d
        plane = -plane
    height = points @ plane[:3] + plane[3]
    return points[height > distance_m], plane


def euclidean_clusters(
    points: np.ndarray,
    voxel_m: float = VOXEL_M,
    eps_m: float = CLUSTER_EPS_M,
    min_points: int = CLUSTER_MIN_POINTS,
    min_voxels: int = MIN_CLUSTER_VOXELS,
) -> list[np.ndarray]:
    """Split a cloud into DBSCAN clusters (open3d ``cluster_dbscan``) of its voxels.

    Clustering runs on the voxel-downsampled cloud; every original point then joins the cluster
    of its nearest voxel (within ``eps_m``), so clusters keep the full resolution.

    Args:
        points: (N, 3) metres.
        voxel_m: voxel of the clustered cloud.
        eps_m: DBSCAN neighbourhood radius.
        min_points: DBSCAN's core-point neighbour count.
        min_voxels: smaller clusters are dropped.

    Returns:
        One (K_i, 3) float64 array per cluster, largest first.
    """
    import open3d as o3d
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        return []
    down = np.asarray(
        o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)).voxel_down_sample(voxel_m).points
    )
    labels = np.asarray(
        o3d.geometry.PointCloud(o3d.utility.Vector3dVector(down)).cluster_dbscan(eps_m, min_points)
    )
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, dtype=np.int64)
    kept = [label for label in np.argsort(-sizes, kind="stable") if sizes[label] >= min_voxels]
    if not kept:
        return []
    distance, nearest = cKDTree(down).query(points, k=1, distance_upper_bound=eps_m)
    point_labels = np.where(np.isfinite(distance), labels[np.minimum(nearest, len(down) - 1)], -1)
    return [points[point_labels == label] for label in kept]


def icp_fitness(
    points: np.ndarray, model: ObjectModel, rotation: np.ndarray, translation: np.ndarray, distance_m: float
) -> float:
    """Share of the observed points within ``distance_m`` of the model surface posed at
    ``(rotation, translation)``: open3d's registration fitness.

    Args:
        points: (N, 3) observed, sensor frame.
        rotation: (3, 3) and translation: (3,) the object pose.
    """
    import open3d as o3d

    from cloudpose.registration.refine import back_matrix

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    result = o3d.pipelines.registration.evaluate_registration(
        cloud, model.surface.cloud, distance_m, back_matrix(rotation, translation)
    )
    return float(result.fitness)


def clustering_fpfh_detector(
    objects: Mapping[str, ObjectModel],
    *,
    voxel_m: float = VOXEL_M,
    plane_distance_m: float = PLANE_DISTANCE_M,
    cluster_eps_m: float = CLUSTER_EPS_M,
    cluster_min_points: int = CLUSTER_MIN_POINTS,
    min_cluster_voxels: int = MIN_CLUSTER_VOXELS,
    min_extent_fraction: float = MIN_EXTENT_FRACTION,
    max_extent_fraction: float = MAX_EXTENT_FRACTION,
    fitness_distance_fraction: float = FITNESS_DISTANCE_FRACTION,
    confident_fitness: float = CONFIDENT_FITNESS,
    seed: int = 0,
) -> Detector:
    """A classical whole-frame baseline: segment, then register each segment to each object.

    1. :func:`remove_support_plane` (RANSAC plane on ``voxel_m`` voxels, inliers within
       ``plane_distance_m``; only what lies above it is kept);
    2. :func:`euclidean_clusters` (DBSCAN of the voxels, radius ``cluster_eps_m``,
       ``cluster_min_points`` neighbours; clusters under ``min_cluster_voxels`` voxels dropped);
    3. per cluster and object whose diameter the cluster's extent (its bounding-box diagonal) lies
       between ``min_extent_fraction`` and ``max_extent_fraction`` of (partial views are smaller
       than the object; clusters of touching objects larger):
       :func:`pipeline.evaluation.baselines.fpfh_ransac_icp`
       (FPFH + RANSAC global registration, point-to-plane ICP, the tutorial's parameters scaled to
       the object's diagonal) of the cluster against the object's surface;
    4. score = ICP fitness, the share of the cluster's points within ``fitness_distance_fraction``
       of the object's diagonal of its posed surface (:func:`icp_fitness`); each cluster yields
       its best-scoring object only, confident when the score is at least ``confident_fitness``
       (0.9: on 20 VGA frames of bunnies among a box, a cylinder and a capsule, correct poses
       fitted 0.975-0.999 of their points within 2 % of the diagonal, wrong ones mostly under
       0.8; small distractors that fit inside a patch of the bunny still reach ~0.97).

    Args:
        objects: name -> model of every object to look for.
        seed: seeds open3d's RANSAC (which runs in parallel threads, so runs repeat exactly only
            with one thread).

    Returns:
        The detector: ``points (N, 3) -> list[Detection]``, one per kept cluster.
    """
    from pipeline.evaluation.baselines import fpfh_ransac_icp

    def detect(points: np.ndarray) -> list[Detection]:
        above, _ = remove_support_plane(points, voxel_m, plane_distance_m, seed=seed)
        detections = []
        for cluster in euclidean_clusters(
            above, voxel_m, cluster_eps_m, cluster_min_points, min_cluster_voxels
        ):
            extent = float(np.linalg.norm(cluster.max(axis=0) - cluster.min(axis=0)))
            best: Detection | None = None
            for name, model in objects.items():
                if not min_extent_fraction * model.diameter <= extent <= max_extent_fraction * model.diameter:
                    continue
                rotation, translation = fpfh_ransac_icp(cluster, model.surface, seed)
                fitness = icp_fitness(
                    cluster, model, rotation, translation, fitness_distance_fraction * model.diagonal
                )
                if best is None or fitness > best.score:
                    best = Detection(name, rotation, translation, fitness, fitness >= confident_fitness)
            if best is not None:
                detections.append(best)
        return detections

    return detect


def ppf_available() -> bool:
    """Whether OpenCV's point-pair-feature module (``opencv-contrib-python-headless``) imports."""
    try:
        import cv2

        return hasattr(cv2, "ppf_match_3d")
    except ImportError:
        return False


PPF_SAMPLING_STEP = 0.025  # of the model's diameter, as OpenCV's sample
PPF_DISTANCE_STEP = 0.05
PPF_SCENE_SAMPLE_STEP = 1.0 / 40.0  # share of the scene points used as reference points
PPF_POSES = 5  # best-voted poses kept per object, before suppression


def ppf_detector(
    objects: Mapping[str, ObjectModel],
    *,
    voxel_m: float = VOXEL_M,
    plane_distance_m: float = PLANE_DISTANCE_M,
    poses: int = PPF_POSES,
    fitness_distance_fraction: float = FITNESS_DISTANCE_FRACTION,
    confident_fitness: float = CONFIDENT_FITNESS,
    seed: int = 0,
) -> Detector:
    """OpenCV's PPF3DDetector (Drost et al. 2010) per object on the plane-removed cloud.

    The plane-removed, ``voxel_m``-downsampled cloud gets normals (open3d, towards the camera);
    each object's trained detector proposes poses, which OpenCV's ICP refines; the ``poses`` best
    by votes are scored by :func:`icp_fitness` and kept unless a better one of the same object lies
    within half its diameter; confident when the fitness is at least ``confident_fitness``.

    Raises:
        RuntimeError: when ``cv2.ppf_match_3d`` does not import (install
            ``opencv-contrib-python-headless``; cloudpose does not depend on it).
    """
    if not ppf_available():
        raise RuntimeError(
            "ppf_detector needs OpenCV's contrib module cv2.ppf_match_3d "
            "(pip install opencv-contrib-python-headless); skipping it"
        )
    import cv2
    import open3d as o3d

    trained = {}
    for name, model in objects.items():
        detector = cv2.ppf_match_3d_PPF3DDetector(PPF_SAMPLING_STEP, PPF_DISTANCE_STEP)
        detector.trainModel(np.hstack([model.points, model.normals]).astype(np.float32))
        trained[name] = detector
    icp = cv2.ppf_match_3d_ICP(100, 0.005, 2.5, 8)

    def detect(points: np.ndarray) -> list[Detection]:
        above, _ = remove_support_plane(points, voxel_m, plane_distance_m, seed=seed)
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(above)).voxel_down_sample(voxel_m)
        if len(cloud.points) < 10:
            return []
        cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * voxel_m, max_nn=30))
        cloud.orient_normals_towards_camera_location(np.zeros(3))
        scene = np.hstack([np.asarray(cloud.points), np.asarray(cloud.normals)]).astype(np.float32)
        detections = []
        for name, detector in trained.items():
            model = objects[name]
            results = detector.match(scene, PPF_SCENE_SAMPLE_STEP, PPF_DISTANCE_STEP)[:poses]
            if not results:
                continue
            model_array = np.hstack([model.points, model.normals]).astype(np.float32)
            _, results = icp.registerModelToScene(model_array, scene, results)
            found: list[Detection] = []
            for result in results:
                matrix = np.asarray(result.pose, dtype=np.float64)  # column vectors, model -> scene
                rotation, translation = matrix[:3, :3].T, matrix[:3, 3].copy()
                # Fitness of the scene points within the posed object's bounding sphere.
                near = above[np.linalg.norm(above - translation, axis=1) <= 0.55 * model.diameter]
                fitness = (
                    icp_fitness(
                        near, model, rotation, translation, fitness_distance_fraction * model.diagonal
                    )
                    if len(near)
                    else 0.0
                )
                found.append(Detection(name, rotation, translation, fitness, fitness >= confident_fitness))
            found.sort(key=lambda detection: -detection.score)
            for candidate in found:
                if all(
                    np.linalg.norm(candidate.translation - kept.translation) > 0.5 * model.diameter
                    for kept in detections
                    if kept.object == name
                ):
                    detections.append(candidate)
        return detections

    return detect


# cloudpose's detector and the store's objects ----------------------------------------------------

# Distractors of the benchmark's frames: shapes that no object of the store, nor the store's
# tests, use (metres).
DISTRACTOR_SHAPES = ("capsule", "cone", "torus", "sphere", "wedge", "crate", "post")
# The same without the crate, whose boolean difference needs manifold3d (a development
# dependency): what ``cloudpose scene make`` puts on the table in any install.
PRIMITIVE_DISTRACTORS = tuple(name for name in DISTRACTOR_SHAPES if name != "crate")


def distractor_objects(names: Sequence[str] = DISTRACTOR_SHAPES) -> list[SceneObject]:
    """The benchmark's distractors (or those named), sized like small parts on a table."""
    import trimesh

    def crate() -> trimesh.Trimesh:
        # An open crate: its walls hide what stands behind them.
        outer = trimesh.creation.box(bounds=[[0.0, 0.0, 0.0], [0.24, 0.18, 0.14]])
        inner = trimesh.creation.box(bounds=[[0.01, 0.01, 0.01], [0.23, 0.17, 0.15]])
        return trimesh.boolean.difference([outer, inner], engine="manifold")

    shapes = {
        "crate": crate,
        "post": lambda: trimesh.creation.cylinder(radius=0.035, height=0.2, sections=8),  # tall, octagonal
        "capsule": lambda: trimesh.creation.capsule(height=0.09, radius=0.028, count=[8, 8]),
        "cone": lambda: trimesh.creation.cone(radius=0.045, height=0.1, sections=24),
        "torus": lambda: trimesh.creation.torus(
            major_radius=0.045, minor_radius=0.016, major_sections=24, minor_sections=12
        ),
        "sphere": lambda: trimesh.creation.icosphere(subdivisions=2, radius=0.04),
        "wedge": lambda: trimesh.creation.extrude_triangulation(
            np.array([[0.0, 0.0], [0.11, 0.0], [0.0, 0.05]]), np.array([[0, 1, 2]]), height=0.07
        ),
    }
    return [SceneObject(name, shapes[name]()) for name in names]


def store_targets(store, served: Mapping[str, object]) -> tuple[list[SceneObject], dict[str, ObjectModel]]:
    """Each served object with units as a scene target (its mesh file in metres) and its model for
    scoring, with its symmetry; objects without units cannot be put in a metric frame.

    Args:
        store: the :class:`cloudpose.store.package.ObjectStore` the objects were served from.
        served: the served objects by name (:class:`cloudpose.estimation.served.ServedObject`).
    """
    targets, models = [], {}
    for name, item in served.items():
        package = store.get(name)
        if package.metres_per_unit is None:
            continue
        scene_object = package_object(package)
        targets.append(scene_object)
        models[name] = ObjectModel.from_mesh(scene_object, symmetry=item.symmetry)
    return targets, models


def cloudpose_detector(served: Mapping[str, object], units: str = "m") -> Detector:
    """:func:`cloudpose.detection.detect.detect` as a benchmark detector (score: the answer's confidence)."""
    from cloudpose.detection.detect import detect

    def run(points: np.ndarray) -> list[Detection]:
        return bench_detections(detect(np.asarray(points, dtype=np.float64), served, units).detections)

    return run


def bench_detections(found: Iterable) -> list[Detection]:
    """:class:`cloudpose.detection.detect.Detection` s as the benchmark scores them (score: the
    confidence)."""
    return [
        Detection(
            item.object,
            item.pose.object_rotation,
            item.pose.object_translation,
            item.confidence(),
            bool(item.pose.found),
        )
        for item in found
    ]
