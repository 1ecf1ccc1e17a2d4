"""Tracking benchmark: a moving camera's frames, each frame's instances followed from the one before.

Each sequence (:func:`pipeline.data.scenes.frame_sequence`, seeded) runs the loop a client runs: the
first frame goes through detection (:func:`cloudpose.detection.detect.detect`), every later one through
tracking (:func:`cloudpose.detection.track.track`) from the frame before's confident poses; a frame where
tracking lost an instance, or had nothing to follow, is detected again at once (its answer is
detection's, and its time is both calls'). Every frame is scored as the scene benchmark scores one
(:func:`pipeline.evaluation.scene_bench.score_frame`: 5°, 2 % of the diagonal, symmetry-aware, instances at
least 30 % visible).

Reported (:func:`summarize`, :func:`format_table`): per kind of frame (tracked, detected) the count,
recall, precision and the median and p90 time; the loop's sustained frame rate (frames over the
total time of the sequences' calls); losses; and the rotation and translation errors of the
tracked poses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.scenes import CameraMotion, SceneLayout, SceneObject, frame_sequence
from pipeline.evaluation.scene_bench import (
    BENCH_COUNTS,
    DEFAULT_INTRINSICS,
    DEFAULT_NOISE,
    Criteria,
    FrameScore,
    ObjectModel,
    bench_detections,
    score_frame,
)

CRITERIA = Criteria()  # the scene benchmark's: 5 degrees, 2 % of the diagonal, 30 % visible


@dataclass
class TrackedFrame:
    """One frame of a sequence: how it was answered, in how long, and its score.

    Attributes:
        sequence: which sequence; index: the frame's place in it.
        tracked: the answer is tracking's (else detection's, alone or after a loss).
        lost: instances tracking lost in this frame (0 for a frame only detected).
        seconds: the frame's calls, together.
        score: the answer, scored against the frame's ground truth.
    """

    sequence: int
    index: int
    tracked: bool
    lost: int
    seconds: float
    score: FrameScore


def run_track_bench(
    served: Mapping[str, object],
    targets: Sequence[SceneObject],
    distractors: Sequence[SceneObject],
    models: Mapping[str, ObjectModel],
    sequences: int,
    length: int,
    seed: int,
    motion: CameraMotion | None = None,
    layout: SceneLayout | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[TrackedFrame]:
    """Run the detect-then-track loop on seeded sequences.

    Args:
        served: the objects, by name (:class:`cloudpose.estimation.served.ServedObject`).
        targets: their meshes in metres; distractors: clutter.
        models: name -> scoring model (:func:`pipeline.evaluation.scene_bench.store_targets`).
        sequences: how many; length: frames in each.
        seed: the set's seed (sequence ``i`` draws from its own spawned generator).
        motion: how the camera moves between frames (default: :class:`CameraMotion`'s).
        layout: the table and the spread (default: :meth:`SceneLayout.for_size` of the largest target).
        progress: told (sequences done, sequences) after each one.

    Returns:
        Every frame, in order.
    """
    from cloudpose.detection.detect import detect
    from cloudpose.detection.track import PreviousPose, track

    motion = CameraMotion() if motion is None else motion
    if layout is None:
        layout = SceneLayout.for_size(max(float(np.linalg.norm(item.mesh.extents)) for item in targets))
    frames: list[TrackedFrame] = []
    for sequence, sequence_seed in enumerate(np.random.SeedSequence(seed).spawn(sequences)):
        rng = np.random.default_rng(sequence_seed)
        previous: list[PreviousPose] = []
        shots = frame_sequence(
            list(targets), list(distractors), rng, length, DEFAULT_INTRINSICS, BENCH_COUNTS, DEFAULT_NOISE,
            layout, motion,
        )  # fmt: skip
        for index, frame in enumerate(shots):
            points = frame.points().astype(np.float64)
            started = time.perf_counter()
            lost, answer, tracked = 0, [], False
            if previous:
                report = track(points, served, previous, "m")
                lost, answer, tracked = (
                    report.lost,
                    [item for item in report.tracks if item is not None],
                    True,
                )
            if not previous or lost:
                answer, tracked = list(detect(points, served, "m").detections), False
            seconds = time.perf_counter() - started
            score = score_frame(bench_detections(answer), frame.instances, models, CRITERIA)
            frames.append(TrackedFrame(sequence, index, tracked, lost, seconds, score))
            previous = [
                PreviousPose(item.object, item.pose.rotation, item.pose.translation)
                for item in answer
                if item.pose.found
            ]
        if progress is not None:
            progress(sequence + 1, sequences)
    return frames


def _rates(frames: Sequence[TrackedFrame], criteria: Criteria = CRITERIA) -> dict:
    counted = [
        item
        for frame in frames
        for item in frame.score.instances
        if item.visible_fraction >= criteria.min_visible
    ]
    found = sum(item.matched for item in counted)
    reported = [item for frame in frames for item in frame.score.detections]
    correct = sum(item.instance is not None for item in reported)
    milliseconds = np.array([frame.seconds * 1000 for frame in frames]) if frames else np.zeros(0)
    return {
        "frames": len(frames),
        "instances": len(counted),
        "recall": found / len(counted) if counted else None,
        "precision": correct / len(reported) if reported else None,
        "median_ms": float(np.median(milliseconds)) if len(milliseconds) else None,
        "p90_ms": float(np.percentile(milliseconds, 90)) if len(milliseconds) else None,
    }


def summarize(frames: Sequence[TrackedFrame]) -> dict:
    """The benchmark's figures (see the module docstring); None where nothing was counted."""
    tracked = [frame for frame in frames if frame.tracked]
    errors = [
        item.errors for frame in tracked for item in frame.score.detections if item.instance is not None
    ]
    total_s = sum(frame.seconds for frame in frames)
    return {
        "all": _rates(frames),
        "tracked": _rates(tracked),
        "detected": _rates([frame for frame in frames if not frame.tracked]),
        "frames_per_second": len(frames) / total_s if total_s else None,
        "losses": sum(frame.lost for frame in frames),
        "rotation_median_deg": float(np.median([e.rotation_deg for e in errors])) if errors else None,
        "translation_median_pct": float(np.median([e.translation_pct for e in errors])) if errors else None,
    }


def format_table(summary: dict, title: str) -> str:
    """The summary as a Markdown table."""

    def cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    lines = [
        title,
        "| frames | count | recall % | precision % | median ms | p90 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("tracked", "detected", "all"):
        rates = summary[kind]
        lines.append(
            f"| {kind} | {rates['frames']} | {cell(rates['recall'], 100)} | {cell(rates['precision'], 100)} "
            f"| {cell(rates['median_ms'], digits=0)} | {cell(rates['p90_ms'], digits=0)} |"
        )
    lines.append(
        f"sustained: {cell(summary['frames_per_second'])} frames/s; tracks lost: {summary['losses']}; "
        f"tracked poses: rotation median {cell(summary['rotation_median_deg'], digits=2)}°, translation "
        f"median {cell(summary['translation_median_pct'], digits=2)} % of the diagonal"
    )
    return "\n".join(lines)
