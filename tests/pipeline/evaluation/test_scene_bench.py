"""The whole-frame benchmark: BOP-style matching (correct poses, greedy by score, duplicates,
symmetries, confidence), recall by visible fraction, timing, the table, and the clustering baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from cloudpose.geometry.rotations import axis_rotation
from cloudpose.geometry.symmetry import Symmetry
from pipeline.data.scenes import Instance, Intrinsics, SceneCounts, SceneObject, make_frame
from pipeline.evaluation import scene_bench
from pipeline.evaluation.scene_bench import (
    Criteria,
    Detection,
    DetectorResult,
    ObjectModel,
    SceneBenchResults,
    clustering_fpfh_detector,
    format_table,
    pose_errors,
    results_json,
    run_scene_bench,
    scene_frames,
    score_frame,
    summarize,
)
from tests.pipeline.data.test_scenes import small_bunny

SMALL = Intrinsics().scaled(0.25)  # 160 x 120, same field of view as VGA


@pytest.fixture(scope="module")
def bunny() -> SceneObject:
    return small_bunny()


@pytest.fixture(scope="module")
def distractors() -> list[SceneObject]:
    return [
        SceneObject("box", trimesh.creation.box(extents=(0.08, 0.06, 0.10))),
        SceneObject("cylinder", trimesh.creation.cylinder(radius=0.04, height=0.12, sections=24)),
    ]


@pytest.fixture(scope="module")
def objects(bunny) -> dict[str, ObjectModel]:
    return {"bunny": ObjectModel.from_mesh(bunny, count=2000)}


@pytest.fixture(scope="module")
def frames(bunny, distractors) -> list:
    """Four small frames, two of them without targets."""
    return list(scene_frames([bunny], distractors, 4, seed=1, intrinsics=SMALL, empty_fraction=0.5))


def oracle(frames, transform=None):
    """A detector that knows the ground truth of ``frames`` (looked up by the points it is given).

    ``transform(instance) -> list[Detection]`` turns each instance into detections; by default the
    true pose, score 1, confident.
    """
    truth = {frame.points().tobytes(): frame.instances for frame in frames}

    def exact(instance: Instance) -> list[Detection]:
        return [Detection(instance.name, instance.rotation, instance.translation, 1.0, True)]

    transform = transform or exact

    def detect(points: np.ndarray) -> list[Detection]:
        return [detection for instance in truth[points.tobytes()] for detection in transform(instance)]

    return detect


def instance(name: str, rotation, translation, visible_fraction: float = 1.0) -> Instance:
    mask = np.zeros((2, 2), dtype=bool)
    return Instance(
        name, np.asarray(rotation, float), np.asarray(translation, float), visible_fraction, mask, 0
    )


def box_model(extents, symmetry: Symmetry | None) -> ObjectModel:
    return ObjectModel.from_mesh(trimesh.creation.box(extents=extents), symmetry, count=2000)


def test_scene_frames_are_seeded_and_hold_empty_frames(bunny, distractors, frames):
    again = list(scene_frames([bunny], distractors, 4, seed=1, intrinsics=SMALL, empty_fraction=0.5))
    assert all(np.array_equal(a.depth, b.depth) for a, b in zip(frames, again, strict=True))
    assert sum(not frame.instances for frame in frames) == 2
    assert all(1 <= len(frame.instances) <= 2 for frame in frames if frame.instances)
    other = next(scene_frames([bunny], distractors, 4, seed=2, intrinsics=SMALL, empty_fraction=0.5))
    assert not np.array_equal(other.depth, frames[0].depth)


def test_perfect_detector_scores_one_and_zero_errors(frames, objects):
    results = run_scene_bench({"perfect": oracle(frames)}, frames, objects)
    metrics = results.results["perfect"].metrics
    assert results.frame_count == 4 and results.empty_frames == 2
    assert metrics["instances"] > 0
    assert metrics["recall"] == 1.0 and metrics["precision"] == 1.0
    assert metrics["rotation_median_deg"] < 1e-5
    assert metrics["translation_median_pct"] < 1e-9
    assert metrics["mssd_median_pct"] < 1e-9
    assert metrics["false_alarm_rate"] == 0.0 and metrics["failures"] == 0
    assert 0 < metrics["median_ms"] <= metrics["p90_ms"]
    assert sum(metrics["instances_by_bin"]) == metrics["instances"]


def test_poses_turned_by_ten_degrees_are_wrong(frames, objects):
    turn = axis_rotation(np.array([1.0, 2.0, 3.0]), np.deg2rad(10.0))

    def turned(instance: Instance) -> list[Detection]:
        return [Detection(instance.name, turn @ instance.rotation, instance.translation, 1.0, True)]

    metrics = run_scene_bench({"turned": oracle(frames, turned)}, frames, objects).results["turned"].metrics
    assert metrics["detections"] > 0
    assert metrics["recall"] == 0.0 and metrics["precision"] == 0.0
    assert metrics["rotation_median_deg"] is None  # nothing matched


def test_an_extra_wrong_detection_lowers_precision_and_raises_false_alarms(frames, objects):
    truth = {frame.points().tobytes(): frame.instances for frame in frames}

    def with_extra(points: np.ndarray) -> list[Detection]:
        right = [Detection(i.name, i.rotation, i.translation, 1.0, True) for i in truth[points.tobytes()]]
        wrong = Detection("bunny", np.eye(3), np.array([0.0, 0.0, 3.0]), 0.5, True)
        return [*right, wrong]

    metrics = run_scene_bench({"extra": with_extra}, frames, objects).results["extra"].metrics
    true_positives = sum(len(frame.instances) for frame in frames)
    assert metrics["recall"] == 1.0
    assert metrics["true_positives"] == true_positives
    assert metrics["precision"] == pytest.approx(true_positives / (true_positives + len(frames)))
    assert metrics["false_alarm_rate"] == 1.0


def test_per_object_figures_count_each_object_apart(frames, objects):
    truth = {frame.points().tobytes(): frame.instances for frame in frames}

    def with_a_ghost(points: np.ndarray) -> list[Detection]:
        right = [Detection(i.name, i.rotation, i.translation, 1.0, True) for i in truth[points.tobytes()]]
        return [*right, Detection("ghost", np.eye(3), np.array([0.0, 0.0, 3.0]), 0.5, True)]

    metrics = run_scene_bench({"ghost": with_a_ghost}, frames, objects).results["ghost"].metrics
    bunny, ghost = metrics["by_object"]["bunny"], metrics["by_object"]["ghost"]
    assert bunny["instances"] == metrics["instances"] and bunny["recall"] == 1.0
    assert bunny["precision"] == 1.0 and bunny["detections"] == metrics["true_positives"]
    # An object the frames never hold: every detection of it is wrong, and it has nothing to find.
    assert ghost == {
        "instances": 0,
        "recall": None,
        "recall_any_confidence": None,
        "detections": 4,
        "precision": 0.0,
    }


def test_a_duplicate_counts_once_and_the_higher_score_wins(frames, objects):
    nudge = np.array([0.001, 0.0, 0.0])  # still correct: 1 mm is under 2 % of the diagonal

    def twice(instance: Instance) -> list[Detection]:
        return [
            Detection(instance.name, instance.rotation, instance.translation, 0.5, True),
            Detection(instance.name, instance.rotation, instance.translation + nudge, 0.9, True),
        ]

    results = run_scene_bench({"twice": oracle(frames, twice)}, frames, objects)
    metrics = results.results["twice"].metrics
    assert metrics["recall"] == 1.0 and metrics["precision"] == 0.5
    nudge_pct = 0.1 / objects["bunny"].diagonal
    assert metrics["translation_median_pct"] == pytest.approx(nudge_pct)  # the 0.9 detection matched
    for frame in results.results["twice"].frames:
        assert frame.false_positives == frame.true_positives == len(frame.instances)


def test_unconfident_detections_are_kept_but_not_reported(frames, objects):
    def unsure(instance: Instance) -> list[Detection]:
        return [Detection(instance.name, instance.rotation, instance.translation, 0.3, False)]

    results = run_scene_bench({"unsure": oracle(frames, unsure)}, frames, objects)
    metrics = results.results["unsure"].metrics
    assert metrics["recall"] == 0.0 and metrics["detections"] == 0 and metrics["precision"] is None
    assert metrics["recall_any_confidence"] == 1.0
    kept = sum(len(frame.unconfident) for frame in results.results["unsure"].frames)
    assert kept == sum(len(frame.instances) for frame in frames)


def test_a_failing_detector_fails_its_frames_not_the_bench(frames, objects):
    def broken(points: np.ndarray) -> list[Detection]:
        raise RuntimeError("no luck")

    result = run_scene_bench({"broken": broken}, frames, objects).results["broken"]
    assert result.failures == 4 and result.first_error == "RuntimeError: no luck"
    assert result.metrics["recall"] == 0.0


def test_box_turned_by_a_symmetry_element_is_correct():
    half_turns = np.array(
        [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    )
    symmetric = box_model((0.08, 0.06, 0.10), Symmetry(half_turns))
    plain = box_model((0.08, 0.06, 0.10), None)
    gt_rotation = Rotation.from_rotvec([0.3, -0.2, 0.9]).as_matrix()
    gt_translation = np.array([0.05, -0.02, 0.9])
    flipped = half_turns[3] @ gt_rotation  # the box turned half-way about its own z axis

    errors = pose_errors(flipped, gt_translation, gt_rotation, gt_translation, symmetric, with_mssd=True)
    assert errors.rotation_deg < 1e-6 and errors.mssd_pct < 1e-9
    unaware = pose_errors(flipped, gt_translation, gt_rotation, gt_translation, plain, with_mssd=True)
    assert unaware.rotation_deg == pytest.approx(180.0)
    assert unaware.mssd_pct > 50.0  # corners swap across the box

    truth = [instance("box", gt_rotation, gt_translation)]
    detection = [Detection("box", flipped, gt_translation, 1.0)]
    assert score_frame(detection, truth, {"box": symmetric}).instances[0].matched
    assert not score_frame(detection, truth, {"box": plain}).instances[0].matched


def test_square_box_quarter_turn_is_correct_but_ten_degrees_off_is_not():
    quarter = axis_rotation(np.array([0.0, 0.0, 1.0]), np.pi / 2)
    group = np.stack([np.linalg.matrix_power(quarter, k) for k in range(4)])
    model = box_model((0.08, 0.08, 0.12), Symmetry(group))
    gt_rotation = Rotation.from_rotvec([-0.4, 0.1, 0.2]).as_matrix()
    gt_translation = np.array([0.0, 0.1, 0.8])
    turned = quarter @ gt_rotation
    off = axis_rotation(np.array([0.0, 0.0, 1.0]), np.deg2rad(100.0)) @ gt_rotation

    assert pose_errors(turned, gt_translation, gt_rotation, gt_translation, model).rotation_deg < 1e-6
    assert pose_errors(off, gt_translation, gt_rotation, gt_translation, model).rotation_deg == pytest.approx(
        10.0
    )
    truth = [instance("square", gt_rotation, gt_translation)]
    objects = {"square": model}
    assert (
        score_frame([Detection("square", turned, gt_translation, 1.0)], truth, objects).instances[0].matched
    )
    assert (
        not score_frame([Detection("square", off, gt_translation, 1.0)], truth, objects).instances[0].matched
    )


def test_cylinder_turned_about_its_axis_is_correct():
    half_turn = np.diag([1.0, -1.0, -1.0])  # flips the axis
    symmetry = Symmetry(np.stack([np.eye(3), half_turn]), axis=np.array([0.0, 0.0, 1.0]))
    mesh = trimesh.creation.cylinder(radius=0.04, height=0.12, sections=64)
    model = ObjectModel.from_mesh(mesh, symmetry, count=2000)
    gt_rotation = Rotation.from_rotvec([0.5, 0.2, -0.1]).as_matrix()
    gt_translation = np.array([0.1, 0.0, 1.0])
    spun = axis_rotation(np.array([0.0, 0.0, 1.0]), np.deg2rad(37.0)) @ half_turn @ gt_rotation
    errors = pose_errors(spun, gt_translation, gt_rotation, gt_translation, model, with_mssd=True)
    assert errors.rotation_deg < 1e-6
    assert errors.mssd_pct < 0.5  # the 1° search grid leaves at most half a degree at the rim


def test_mssd_of_a_shift_is_the_shift_over_the_diameter(objects):
    model = objects["bunny"]
    rotation = Rotation.from_rotvec([0.2, 0.4, -0.3]).as_matrix()
    translation = np.array([0.0, 0.0, 1.0])
    shift = np.array([0.003, 0.0, 0.004])  # 5 mm
    errors = pose_errors(rotation, translation + shift, rotation, translation, model, with_mssd=True)
    assert errors.mssd_pct == pytest.approx(0.5 / model.diameter)
    assert errors.translation_pct == pytest.approx(0.5 / model.diagonal)
    assert errors.rotation_deg < 1e-6


def test_visible_fraction_bins_count_instances_in_the_right_bins(objects):
    visible = [0.1, 0.3, 0.45, 0.5, 0.69, 0.7, 0.95, 1.0]
    rotation = np.eye(3)
    truth = [instance("bunny", rotation, [k * 1.0, 0.0, 1.0], fraction) for k, fraction in enumerate(visible)]
    found = [Detection("bunny", rotation, i.translation, 1.0) for i in truth if i.visible_fraction >= 0.7]
    found.append(Detection("bunny", rotation, truth[0].translation, 1.0))  # the 0.1-visible one
    metrics = summarize([score_frame(found, truth, objects)])
    assert metrics["instances"] == 7  # 0.1 is below min_visible
    assert metrics["instances_by_bin"] == [2, 2, 1, 2]
    assert metrics["recall_by_bin"] == [0.0, 0.0, 1.0, 1.0]
    assert metrics["recall"] == pytest.approx(3 / 7)
    assert metrics["precision"] == 1.0  # finding a barely visible instance is no false positive
    criteria = Criteria()
    assert [criteria.bin_of(v) for v in (0.2, 0.3, 0.9, 0.99, 1.0)] == [None, 0, 3, 3, 3]


def test_recall_by_range_groups_instances_by_how_far_their_centroid_lies(objects):
    rotation = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    centroid = np.asarray(objects["bunny"].centroid)
    # Centroids at these distances straight ahead of the sensor; the far ones are missed.
    distances = [0.5, 0.79, 0.8, 0.95, 1.0, 1.4]
    truth = [
        instance("bunny", rotation, np.array([0.0, 0.0, d]) - centroid @ rotation, 1.0) for d in distances
    ]
    found = [Detection("bunny", rotation, i.translation, 1.0) for i in truth[:3]]
    metrics = summarize([score_frame(found, truth, objects)])
    assert metrics["instances_by_range"] == [2, 2, 2]  # under 0.8 m, 0.8 to 1.0 m, 1.0 m and beyond
    assert metrics["recall_by_range"] == [1.0, 0.5, 0.0]
    assert Criteria().range_labels() == ["<0.8 m", "0.8-1 m", "≥1 m"]
    table = format_table(SceneBenchResults(["d"], {"d": DetectorResult("d", [], metrics)}, Criteria(), 1, 0))
    assert "<0.8 m 100.0 % of 2, 0.8-1 m 50.0 % of 2, ≥1 m 0.0 % of 2" in table


def test_format_table_and_json_name_every_detector_and_bin(frames, objects):
    detectors = {"perfect": oracle(frames), "nothing": lambda points: []}
    results = run_scene_bench(detectors, frames, objects)
    table = format_table(results)
    for text in ("perfect", "nothing", "[0.3,0.5)", "[0.5,0.7)", "[0.7,0.9)", "[0.9,1.0]", "precision"):
        assert text in table
    lines = table.splitlines()
    assert len(lines[0]) == len(lines[1])  # fixed width: the rule spans the header
    data = json.loads(json.dumps(results_json(results), allow_nan=False))
    assert data["summary"]["perfect"]["recall"] == 1.0
    assert data["summary"]["nothing"]["recall"] == 0.0
    assert len(data["frames"]["nothing"]) == 4


def test_clustering_fpfh_finds_an_isolated_bunny_on_a_clean_frame(bunny, objects):
    frame = make_frame(
        [bunny], [], np.random.default_rng(6), SMALL, SceneCounts(target_copies=(1, 1), distractors=(0, 0))
    )
    assert len(frame.instances) == 1 and frame.instances[0].visible_fraction > 0.9
    detections = clustering_fpfh_detector(objects)(frame.points())
    score = score_frame(
        detections, frame.instances, objects, Criteria(rotation_deg=15.0, translation_pct=10.0)
    )
    assert score.instances[0].matched


def test_clustering_fpfh_returns_well_formed_detections(bunny, distractors, objects):
    detector = clustering_fpfh_detector(objects)
    for frame in scene_frames([bunny], distractors, 2, seed=5, intrinsics=SMALL, empty_fraction=0.0):
        detections = detector(frame.points())
        assert detections
        for detection in detections:
            assert isinstance(detection, Detection) and detection.object == "bunny"
            assert detection.rotation.shape == (3, 3) and detection.translation.shape == (3,)
            np.testing.assert_allclose(detection.rotation @ detection.rotation.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(detection.rotation) == pytest.approx(1.0)
            assert 0.0 <= detection.score <= 1.0
            assert detection.confident == (detection.score >= scene_bench.CONFIDENT_FITNESS)


def test_support_plane_is_removed(bunny, distractors):
    frame = next(scene_frames([bunny], distractors, 1, seed=0, intrinsics=SMALL, empty_fraction=0.0))
    points = frame.points()
    above, plane = scene_bench.remove_support_plane(points)
    assert plane is not None
    assert plane @ [0.0, 0.0, 0.0, 1.0] > 0  # the camera is on the positive side
    table = frame.plane * np.sign(frame.plane[3])
    np.testing.assert_allclose(plane, table, atol=0.01)  # the table itself
    on_objects = frame.point_labels() != -1
    assert len(above) < on_objects.sum() + 0.05 * len(points)  # the table's points are gone
    assert len(above) > 0.5 * on_objects.sum()  # the objects' points mostly stay


def test_ppf_detector_explains_a_missing_opencv(objects):
    if scene_bench.ppf_available():
        pytest.skip("OpenCV's ppf_match_3d is installed")
    with pytest.raises(RuntimeError, match="opencv-contrib-python-headless"):
        scene_bench.ppf_detector(objects)


def test_box_with_its_origin_at_a_corner_turned_by_a_symmetry_element_is_correct():
    """A CAD file often puts its origin at a corner; a symmetry turns the box about its centroid, so
    the equivalent pose moves the file's origin but not the box."""
    half_turns = np.array(
        [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])]
    )
    mesh = trimesh.creation.box(extents=(0.08, 0.05, 0.03))
    mesh.apply_translation([0.04, 0.025, 0.015])  # origin at a corner
    model = ObjectModel.from_mesh(mesh, Symmetry(half_turns), count=2000)
    centroid = np.array([0.04, 0.025, 0.015])
    np.testing.assert_allclose(model.centroid, centroid, atol=1e-12)
    gt_rotation = Rotation.from_rotvec([0.3, -0.2, 0.9]).as_matrix()
    gt_translation = np.array([0.05, -0.02, 0.9])
    flipped = half_turns[1] @ gt_rotation
    # the same box: the file's origin moves to where the flip takes the corner
    moved = gt_translation + (centroid - centroid @ half_turns[1]) @ gt_rotation
    assert np.linalg.norm(moved - gt_translation) > 0.05

    errors = pose_errors(flipped, moved, gt_rotation, gt_translation, model, with_mssd=True)
    assert errors.rotation_deg < 1e-6 and errors.translation_pct < 1e-9 and errors.mssd_pct < 1e-9
    truth = [instance("box", gt_rotation, gt_translation)]
    assert score_frame([Detection("box", flipped, moved, 1.0)], truth, {"box": model}).instances[0].matched
    # the flipped rotation with the origin left in place is a box 6 cm away
    wrong = pose_errors(flipped, gt_translation, gt_rotation, gt_translation, model, with_mssd=True)
    assert wrong.translation_pct > 50.0 and wrong.mssd_pct > 50.0
    assert (
        not score_frame([Detection("box", flipped, gt_translation, 1.0)], truth, {"box": model})
        .instances[0]
        .matched
    )
