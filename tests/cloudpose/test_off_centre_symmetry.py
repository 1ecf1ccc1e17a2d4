"""An object whose mesh file has its origin off its centroid (a CAD box with its origin at a corner)
and that has symmetries: the symmetries turn it about its centroid, so poses a symmetry apart move
the file's origin but not the object. Detection must take them for one instance, and the benchmark
must score them alike."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import trimesh

from cloudpose.detection.detect import Detection, _same_instance, detect
from pipeline.data.scenes import Intrinsics, SceneCounts, SceneLayout, make_frame
from pipeline.evaluation.scene_bench import ObjectModel, bench_detections, score_frame

EXTENTS_MM = (80.0, 50.0, 30.0)


@pytest.fixture(scope="module")
def box(added_object):
    """An 80 x 50 x 30 mm box whose file origin is a corner, added without training and served."""
    mesh = trimesh.creation.box(extents=EXTENTS_MM)
    mesh.apply_translation(np.array(EXTENTS_MM) / 2)
    served, scene_box = added_object("box", mesh, ".stl")
    assert served.symmetry.order == 4  # the three half-turns about its centroid
    return served, scene_box


@pytest.fixture(scope="module")
def found(box):
    served, scene_box = box
    counts = SceneCounts(target_copies=(1, 1), distractors=(0, 0))
    layout = SceneLayout(touching=0.0, distance_m=(0.7, 0.7))
    frame = make_frame([scene_box], [], np.random.default_rng(3), Intrinsics(), counts, layout=layout)
    report = detect(frame.points().astype(np.float64), {"box": served}, "m")
    return frame, report


def test_a_box_with_its_origin_at_a_corner_is_found_once_and_scored_right(box, found) -> None:
    served, scene_box = box
    frame, report = found
    confident = [item for item in report.detections if item.pose.found]
    assert len(confident) == 1
    model = ObjectModel.from_mesh(scene_box, symmetry=served.symmetry, count=2000)
    score = score_frame(bench_detections(confident), frame.instances, {"box": model})
    assert score.instances[0].matched


def test_poses_a_symmetry_apart_are_one_instance_and_a_box_aside_is_not(box, found) -> None:
    served, _ = box
    _, report = found
    first = next(item for item in report.detections if item.pose.found)
    pose = first.pose
    centre = served.centroid / pose.scale  # the file's frame, metres
    sizes = {"box": served.diagonal / pose.scale}
    for turn in served.symmetry.rotations[1:]:
        rotation = turn @ pose.object_rotation
        moved = pose.object_translation + (centre - centre @ turn) @ pose.object_rotation
        assert np.linalg.norm(moved - pose.object_translation) > 0.02  # the file's origin moved ...
        twin = dataclasses.replace(pose, object_rotation=rotation, object_translation=moved)
        assert _same_instance(first, Detection("box", twin, first.n_points, 1.0), {"box": served}, sizes)
        # ... and the turn with the origin left in place is a box elsewhere
        aside = dataclasses.replace(pose, object_rotation=rotation)
        assert not _same_instance(first, Detection("box", aside, first.n_points, 1.0), {"box": served}, sizes)
