"""Frame-wide point-pair votes: a posed object votes its own pose to the top, beside clutter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from cloudpose.detection.detect import DETECTION_PARAMS, RangeImage, _unverified, detect, open_frame
from cloudpose.detection.votes import VOTE_PARAMS, FrameVotes, fit_all_to_frame, fit_to_frame, ppf_model
from cloudpose.estimation.ppf import THREAD_REFERENCES, VOTE_THREADS
from cloudpose.estimation.served import ServedObject
from cloudpose.geometry.rotations import geodesic_deg
from cloudpose.store.package import SHIPPED_STORE, ObjectStore
from pipeline.data.scenes import Intrinsics, SceneCounts, SceneLayout, make_frame


@pytest.fixture(scope="module")
def bunny() -> ServedObject:
    return ServedObject.from_package(ObjectStore(SHIPPED_STORE).get("bunny"))


def facing_view(served: ServedObject, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """The object's surface points at the pose (metres) whose normals face a sensor at the origin."""
    surface = served.estimator.surface
    scale = served.scale_for("m")
    points = (surface.points + served.centroid) / scale @ rotation + translation
    normals = surface.normals @ rotation
    return points[np.einsum("ij,ij->i", normals, -points) > 0]


def test_a_posed_object_votes_its_own_pose_into_the_top_cluster(bunny: ServedObject) -> None:
    rng = np.random.default_rng(3)
    rotation = Rotation.random(random_state=4).as_matrix()
    translation = np.array([0.05, -0.02, 0.8])
    view = facing_view(bunny, rotation, translation)
    clutter = rng.uniform([-0.4, -0.3, 0.9], [0.4, 0.3, 1.0], size=(3000, 3))  # a wall of noise behind
    scale = bunny.scale_for("m")
    frame = FrameVotes(np.concatenate([view, clutter]), np.zeros(3), ppf_model(bunny).step / scale)

    hypotheses = frame.hypotheses(bunny, scale)

    assert hypotheses, "no hypothesis"
    top_rotation, top_translation, votes = hypotheses[0]
    assert votes == max(item[2] for item in hypotheses)
    # A cluster holds poses within PPFSettings.cluster_degrees (20) of its head.
    print("top rotation error", geodesic_deg(top_rotation, rotation))
    assert geodesic_deg(top_rotation, rotation) < 20.0
    assert np.linalg.norm(top_translation - translation) < 0.05 * bunny.diagonal / scale


def test_a_frame_of_clutter_alone_gives_no_strong_hypothesis(bunny: ServedObject) -> None:
    rotation = Rotation.random(random_state=5).as_matrix()
    view = facing_view(bunny, rotation, np.array([0.0, 0.0, 0.8]))
    scale = bunny.scale_for("m")
    step = ppf_model(bunny).step / scale
    with_object = FrameVotes(view, np.zeros(3), step).hypotheses(bunny, scale)
    clutter = np.random.default_rng(6).uniform([-0.1, -0.1, 0.7], [0.1, 0.1, 0.9], size=(len(view), 3))
    without = FrameVotes(clutter, np.zeros(3), step).hypotheses(bunny, scale)
    # Random points agree on no pose: their best cluster gets a fraction of the object's votes.
    assert (without[0][2] if without else 0) < 0.5 * with_object[0][2]


def test_fitting_a_vote_to_the_frame_brings_it_home_and_scores_a_wrong_turn_lower(
    bunny: ServedObject,
) -> None:
    scale = bunny.scale_for("m")
    rotation = Rotation.random(random_state=9).as_matrix()
    translation = np.array([0.02, 0.01, 0.7])
    view = facing_view(bunny, rotation, translation)
    search, _, _ = open_frame(view, {"bunny": bunny}, "m", None, 0)
    tree = cKDTree(view)  # a bunny alone: its own support planes are no table
    nudge = Rotation.from_rotvec(np.radians(6.0) * np.array([0.6, 0.0, 0.8])).as_matrix()
    centre = bunny.centroid / scale
    off = (
        rotation @ nudge,
        translation + centre @ rotation - centre @ (rotation @ nudge) + [0.004, 0.0, 0.0],
    )

    score, fitted_rotation, fitted_translation = fit_to_frame(search, tree, "bunny", off)
    turned = Rotation.from_rotvec(np.radians(90.0) * np.array([0.0, 1.0, 0.0])).as_matrix()
    wrong, _, _ = fit_to_frame(search, tree, "bunny", (rotation @ turned, translation))

    print(
        "fitted",
        geodesic_deg(fitted_rotation, rotation),
        "from",
        geodesic_deg(off[0], rotation),
        "scores",
        score,
        wrong,
    )
    assert geodesic_deg(fitted_rotation, rotation) < 0.7 * geodesic_deg(off[0], rotation)
    assert (
        np.linalg.norm(centre @ fitted_rotation + fitted_translation - (centre @ rotation + translation))
        < 0.002
    )
    assert score > 0.9 > wrong + 0.2


def test_a_right_pose_is_scored_by_what_the_sensor_would_see_of_it(added_part) -> None:
    # The tee's bore faces the sensor behind the pipe's near wall: its points cannot be seen, and
    # a score that counted them (every point whose normal faces the sensor) held this right pose
    # to 0.54, below wrong poses of flatter objects on flat clutter (0.8 on the parts frames).
    served, scene_tee = added_part("tee")  # the parts benchmark's pipe tee
    alone = SceneCounts(target_copies=(1, 1), distractors=(0, 0))
    at = SceneLayout(touching=0.0, distance_m=(0.7, 0.7))
    frame = make_frame([scene_tee], [], np.random.default_rng(5), Intrinsics(), alone, layout=at)
    search, on_plane, _ = open_frame(frame.points().astype(np.float64), {"tee": served}, "m", None, 0)
    off = search.points[~on_plane]
    truth = frame.instances[0]

    score, rotation, _ = fit_to_frame(search, cKDTree(off), "tee", (truth.rotation, truth.translation))

    print("score of the right pose", score, "moved", served.symmetry.error_deg(rotation, truth.rotation))
    assert score > 0.85
    # A few coarse steps on noisy returns: the right pose stays within what the search refines.
    assert served.symmetry.error_deg(rotation, truth.rotation) < 2.5


def test_the_points_no_detection_explains_vote_again_and_find_the_instance_left(added_part) -> None:
    # With one hypothesis an object, the frame's votes pose only the tee with the most votes;
    # the points left then vote alone, and the other tee leads its own hypotheses.
    served, scene_tee = added_part("tee")
    two = SceneCounts(target_copies=(2, 2), distractors=(0, 0))
    at = SceneLayout(touching=0.0, distance_m=(0.6, 0.9))
    frame = make_frame([scene_tee], [], np.random.default_rng(8), Intrinsics(), two, layout=at)
    points = frame.points().astype(np.float64)
    assert all(instance.visible_fraction > 0.7 for instance in frame.instances)
    one = dataclasses.replace(VOTE_PARAMS, kept=1)
    votes_only = dataclasses.replace(DETECTION_PARAMS, segments_after_votes=False, leftover_votes=False)

    def right(detections) -> int:
        return sum(
            any(
                served.symmetry.error_deg(found.pose.object_rotation, truth.rotation) < 5.0
                and np.linalg.norm(found.pose.object_translation - truth.translation) < 0.01
                for found in detections
                if found.pose.found
            )
            for truth in frame.instances
        )

    first = detect(points, {"tee": served}, "m", params=votes_only, votes=one)
    again = detect(
        points, {"tee": served}, "m", params=dataclasses.replace(votes_only, leftover_votes=True), votes=one
    )

    print(
        "right after the first votes",
        right(first.detections),
        "and after the leftovers",
        right(again.detections),
    )
    assert right(first.detections) == 1
    assert right(again.detections) == 2


def test_reference_points_voting_in_threads_give_the_votes_of_one_thread(bunny: ServedObject) -> None:
    rng = np.random.default_rng(11)
    rotation = Rotation.random(random_state=12).as_matrix()
    view = facing_view(bunny, rotation, np.array([0.0, 0.02, 0.8]))
    clutter = rng.uniform([-0.3, -0.2, 0.85], [0.3, 0.2, 0.95], size=(4000, 3))
    scale = bunny.scale_for("m")
    model = ppf_model(bunny)
    points, normals, references = FrameVotes(
        np.concatenate([view, clutter]), np.zeros(3), model.step / scale
    ).grid(0)
    assert len(references) >= 2 * THREAD_REFERENCES, "too few references to split"
    threads = model.threads
    try:
        model.threads = 1
        alone = model._votes(points * scale, normals, references)
        model.threads = 2
        split = model._votes(points * scale, normals, references)
    finally:
        model.threads = threads
    print("references", len(references), "threads here", VOTE_THREADS, "votes", int(alone[1].sum()))
    np.testing.assert_array_equal(split[1], alone[1])
    np.testing.assert_array_equal(split[0], alone[0])


def test_hypotheses_fitted_together_are_fitted_as_each_would_be_alone(bunny: ServedObject) -> None:
    rotation = Rotation.random(random_state=9).as_matrix()
    translation = np.array([0.02, 0.01, 0.7])
    view = facing_view(bunny, rotation, translation)
    search, _, _ = open_frame(view, {"bunny": bunny}, "m", None, 0)
    tree = cKDTree(view)
    turns = Rotation.from_rotvec(np.radians([[5.0, 0, 0], [0, 8.0, 0], [0, 0, 90.0], [40.0, 30.0, 0]]))
    poses = [
        (rotation @ turn, translation + [0.003 * k, 0.0, 0.0]) for k, turn in enumerate(turns.as_matrix())
    ]
    poses.append((rotation, translation + [0.0, 0.0, 2.0]))  # nowhere near the frame's points

    together = fit_all_to_frame(search, tree, "bunny", poses)
    alone = [fit_to_frame(search, tree, "bunny", pose) for pose in poses]

    print("scores", [round(item[0], 3) for item in together])
    assert len({round(item[0], 3) for item in together}) > 2  # the poses fit differently
    for (score, fitted, moved), (score_alone, fitted_alone, moved_alone) in zip(together, alone, strict=True):
        assert score == pytest.approx(score_alone, abs=1e-9)
        np.testing.assert_allclose(fitted, fitted_alone, atol=1e-9)
        np.testing.assert_allclose(moved, moved_alone, atol=1e-9)
    assert together[-1][0] == 0.0


def test_the_settles_turns_scored_together_are_scored_as_each_would_be_alone(added_part) -> None:
    served, scene_tee = added_part("tee")
    alone = SceneCounts(target_copies=(1, 1), distractors=(0, 0))
    at = SceneLayout(touching=0.0, distance_m=(0.7, 0.7))
    frame = make_frame([scene_tee], [], np.random.default_rng(5), Intrinsics(), alone, layout=at)
    search, _, _ = open_frame(frame.points().astype(np.float64), {"tee": served}, "m", None, 0)
    truth = frame.instances[0]
    scale = served.scale_for("m")
    spins = Rotation.from_rotvec(np.radians([0.0, 3.0, 20.0, 90.0, 180.0])[:, None] * [0.0, 0.0, 1.0])
    poses = [_unverified(truth.rotation @ spin, truth.translation, scale) for spin in spins.as_matrix()]

    together = search._turn_scores("tee", poses)
    each = [float(search._closeness("tee", item)[1].sum()) for item in poses]

    print("turn scores", np.round(together, 2))
    assert together[0] > together[3]  # the right pose is borne out best
    np.testing.assert_allclose(together, each, rtol=1e-9, atol=1e-9)


def test_the_range_image_keeps_the_nearest_return_of_each_direction_and_each_set() -> None:
    rng = np.random.default_rng(21)
    points = rng.uniform([-0.2, -0.2, 0.5], [0.2, 0.2, 1.5], size=(5000, 3))
    groups = rng.integers(0, 4, len(points))
    image = RangeImage(points, np.zeros(3), cell=0.02)
    keys, ranges = image._cells(points)
    nearest: dict[tuple[int, int], int] = {}
    for index, (group, key) in enumerate(zip(groups.tolist(), keys.tolist(), strict=True)):
        if (group, key) not in nearest or ranges[index] < ranges[nearest[group, key]]:
            nearest[group, key] = index

    cells, cell_ranges, chosen = image.nearest_in_groups(points, groups)

    assert len(chosen) == len(nearest) < len(points)  # cells hold several points
    assert sorted(chosen.tolist()) == sorted(nearest.values())
    np.testing.assert_array_equal(cells, keys[chosen])
    np.testing.assert_array_equal(cell_ranges, ranges[chosen])
    one_set = image.nearest_of(points[groups == 0])[2]
    assert sorted(np.flatnonzero(groups == 0)[one_set].tolist()) == sorted(
        index for (group, _), index in nearest.items() if group == 0
    )


def test_votes_split_over_threads_still_run_in_a_forked_child(bunny: ServedObject) -> None:
    # A server that forks its workers after voting once: the child must get threads of its own.
    import multiprocessing

    scale = bunny.scale_for("m")
    model = ppf_model(bunny)
    view = facing_view(bunny, Rotation.random(random_state=13).as_matrix(), np.array([0.0, 0.0, 0.8]))
    clutter = np.random.default_rng(14).uniform([-0.3, -0.2, 0.85], [0.3, 0.2, 0.95], size=(4000, 3))
    points, normals, references = FrameVotes(
        np.concatenate([view, clutter]), np.zeros(3), model.step / scale
    ).grid(0)
    threads = model.threads
    model.threads = 2
    try:
        here = model._votes(points * scale, normals, references)[1]  # the parent's pool has run
        results = multiprocessing.get_context("fork").Queue()

        def child() -> None:
            results.put(model._votes(points * scale, normals, references)[1].tolist())

        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(timeout=60)
        alive = process.is_alive()
        if alive:
            process.kill()
    finally:
        model.threads = threads
    assert not alive, "the forked child's votes never finished"
    assert process.exitcode == 0
    assert results.get(timeout=5) == here.tolist()


def test_a_place_whose_search_was_left_ambiguous_is_not_searched_again(added_part) -> None:
    # A vote's whole search that ends ambiguous at a place marks it: another start of the same
    # object there would search the same points again and settle nothing. Elsewhere, and for
    # another object, the search goes on.
    served, scene_tee = added_part("tee")
    alone = SceneCounts(target_copies=(1, 1), distractors=(0, 0))
    at = SceneLayout(touching=0.0, distance_m=(0.6, 0.9))
    frame = make_frame([scene_tee], [], np.random.default_rng(8), Intrinsics(), alone, layout=at)
    truth = frame.instances[0]
    params = dataclasses.replace(DETECTION_PARAMS, ambiguous_reach=0.15)
    points = frame.points().astype(np.float64)
    centre = served.centroid / served.scale_for("m") @ truth.rotation + truth.translation
    size = served.diagonal / served.scale_for("m")

    def search_with(ambiguous: list) -> tuple[bool, int]:
        search, on_plane, _ = open_frame(points, {"tee": served}, "m", None, 0, params=params)
        search.ambiguous.extend(ambiguous)
        found = search.pose_from(np.flatnonzero(~on_plane), "tee", (truth.rotation, truth.translation))
        return found, search.poses

    assert search_with([("tee", centre + [0.1 * size, 0.0, 0.0])]) == (False, 0)
    assert search_with([("tee", centre + [0.5 * size, 0.0, 0.0]), ("crank", centre)]) == (True, 1)
