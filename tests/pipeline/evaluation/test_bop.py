"""The BOP format: a dataset written in its layout reads back (poses, camera, 16-bit depth), the
results CSV is the challenge's, scores survive the CSV, the ground truth scores recall 1, and a
folder that is not a BOP dataset gets one clear error."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cloudpose.estimation.served import ServedObject
from cloudpose.store.package import ObjectStore
from pipeline.cli.app import app
from pipeline.data.bop import (
    RESULTS_HEADER,
    BopDataset,
    BopError,
    BopEstimate,
    read_dataset,
    read_results,
    write_dataset,
    write_results,
)
from pipeline.data.scenes import Frame, SceneObject
from pipeline.evaluation import bop
from pipeline.evaluation.scene_bench import cloudpose_detector, distractor_objects, scene_frames
from pipeline.objects.adding import add_object
from tests.pipeline.data.test_scenes import small_bunny

runner = CliRunner()


@pytest.fixture(scope="module")
def bunny() -> SceneObject:
    return small_bunny()


@pytest.fixture(scope="module")
def frames(bunny) -> list[Frame]:
    """Three VGA frames, each with two bunnies among a sphere and a cone."""
    clutter = distractor_objects(("sphere", "cone"))
    return list(scene_frames([bunny], clutter, 3, seed=3, empty_fraction=0.0))


@pytest.fixture(scope="module")
def root(frames, bunny, tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("bop") / "dataset", frames, [bunny])


@pytest.fixture(scope="module")
def dataset(root) -> BopDataset:
    return read_dataset(root)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> bop.BopRun:
    """cloudpose's detector over the dataset, its object added as ``bench --bop`` adds it."""
    folder = tmp_path_factory.mktemp("store")
    store = ObjectStore(folder / "objects")
    model = dataset.models[1]
    add_object(
        model.name, model.path, store=store, units="mm", train=False, bench_count=0, runs_dir=folder / "runs"
    )
    served = {model.name: ServedObject.from_package(store.get(model.name))}
    return bop.run_bop_bench(dataset, cloudpose_detector(served))


def truth_estimates(dataset: BopDataset, time_s: float = 0.25) -> list[BopEstimate]:
    return [
        BopEstimate(image.scene_id, image.im_id, item.obj_id, 1.0, item.rotation, item.translation_mm, time_s)
        for image in dataset.images
        for item in image.instances
    ]


def test_the_reader_gives_back_the_written_poses_camera_and_depth(dataset, frames, bunny) -> None:
    assert list(dataset.models) == [1] and dataset.models[1].name == "obj_000001"
    vertices_mm = np.asarray(bunny.mesh.vertices) * 1000.0
    gaps = vertices_mm[:, None] - vertices_mm[None]  # (V, V, 3)
    assert dataset.models[1].diameter_mm == pytest.approx(np.sqrt((gaps**2).sum(-1).max()), rel=1e-9)
    assert [(image.scene_id, image.im_id) for image in dataset.images] == [(1, 0), (1, 1), (1, 2)]
    for image, frame in zip(dataset.images, frames, strict=True):
        camera = frame.intrinsics
        expected = [[camera.fx, 0, camera.cx], [0, camera.fy, camera.cy], [0, 0, 1]]
        np.testing.assert_array_equal(image.camera.matrix, expected)
        assert image.camera.depth_scale == pytest.approx(1.0)  # mm per unit
        assert (image.width, image.height) == (camera.width, camera.height)
        assert Image.open(image.depth_path).mode.startswith("I;16")
        np.testing.assert_allclose(image.points(), frame.points(), atol=1e-6)
        assert len(image.instances) == len(frame.instances) == 2
        for read, instance in zip(image.instances, frame.instances, strict=True):
            # BOP's column vectors in mm describe the pose cloudpose's rows in metres do.
            bop_posed = vertices_mm @ read.rotation.T + read.translation_mm  # x_cam = R x + t, per row
            cloudpose_posed = (
                np.asarray(bunny.mesh.vertices) @ instance.rotation + instance.translation
            ) * 1e3
            np.testing.assert_allclose(bop_posed, cloudpose_posed, atol=1e-9)
            assert read.visible_fraction == pytest.approx(instance.visible_fraction)


def test_ground_truth_as_results_scores_recall_one_and_a_shift_scores_by_its_size(dataset, tmp_path) -> None:
    truth = read_results(write_results(tmp_path / "truth.csv", truth_estimates(dataset)))
    perfect = bop.score_estimates(dataset, truth).summary()
    assert perfect == {"instances": 6, "ar_mssd": 1.0, "ar_mspd": 1.0, "ar": 1.0, "add_recall": 1.0}

    diameter = dataset.models[1].diameter_mm
    shifted = [
        dataclasses.replace(item, translation_mm=item.translation_mm + [0.22 * diameter, 0.0, 0.0])
        for item in truth
    ]
    scores = bop.score_estimates(dataset, shifted)
    # Every vertex moves 0.22 diameters: correct at MSSD thresholds 0.25-0.5 (6 of 10), never for ADD.
    assert scores.average_recall("mssd") == pytest.approx(0.6)
    assert scores.average_recall("add") == 0.0

    # The rotation given in cloudpose's row convention (not transposed) is a different pose.
    rows = [dataclasses.replace(item, rotation=item.rotation.T) for item in truth]
    assert bop.score_estimates(dataset, rows).average_recall("mssd") < 0.5

    # Only the best-scored estimate per instance counts: a worse, higher-scored one takes its place.
    doubled = [dataclasses.replace(item, score=2.0) for item in shifted] + truth
    assert bop.score_estimates(dataset, doubled).average_recall("mssd") == pytest.approx(0.6)


def test_detections_written_and_read_back_score_as_scored_directly(run, dataset, tmp_path) -> None:
    assert not run.failures and run.estimates
    paths = bop.write_outputs(run, tmp_path)
    assert {path.name for path in paths.values()} == {
        "cloudpose_bop.csv",
        "bop_scores.txt",
        "bop_scores.json",
    }
    read = read_results(paths["results"])
    assert len(read) == len(run.estimates)
    for before, after in zip(run.estimates, read, strict=True):
        np.testing.assert_array_equal(before.rotation, after.rotation)
        np.testing.assert_array_equal(before.translation_mm, after.translation_mm)
        assert (before.score, before.time_s) == (after.score, after.time_s)
    again = bop.score_estimates(dataset, read)
    assert again.summary() == run.scores.summary()
    for metric in bop.METRICS:
        np.testing.assert_array_equal(again.recall(metric), run.scores.recall(metric))
    # Synthetic frames (three VGA frames, seed 3): cloudpose found all six bunnies within 5 % of
    # the diameter; most of a wrong convention or unit would score nothing.
    assert run.scores.average_recall("mssd") >= 0.8
    assert "obj_000001" in paths["table"].read_text()


def test_the_results_csv_is_what_the_bop_toolkit_reads(run, tmp_path) -> None:
    path = write_results(tmp_path / "cloudpose_bop.csv", run.estimates)
    lines = path.read_text().splitlines()
    assert lines[0] == "scene_id,im_id,obj_id,score,R,t,time" == ",".join(RESULTS_HEADER)
    times: dict[tuple[int, int], float] = {}
    for line in lines[1:]:
        fields = line.split(",")
        assert len(fields) == 7
        scene_id, im_id, obj_id = (int(value) for value in fields[:3])
        rotation = np.array([float(value) for value in fields[4].split(" ")]).reshape(3, 3)
        translation_mm = np.array([float(value) for value in fields[5].split(" ")])
        assert translation_mm.shape == (3,) and obj_id == 1 and float(fields[3]) > 0
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        assert 300.0 < translation_mm[2] < 3000.0  # millimetres: the table lies 0.3-3 m away
        times.setdefault((scene_id, im_id), float(fields[6]))
        assert float(fields[6]) == times[(scene_id, im_id)] >= 0.0  # one time per image


def test_a_folder_that_is_not_a_bop_dataset_gets_one_clear_error(root, tmp_path) -> None:
    missing = shutil.copytree(root, tmp_path / "missing")
    (missing / "test" / "000001" / "scene_gt.json").unlink()
    with pytest.raises(BopError, match=r"scene_gt\.json is missing"):
        read_dataset(missing)

    eight_bit = shutil.copytree(root, tmp_path / "eight_bit")
    depth = eight_bit / "test" / "000001" / "depth" / "000001.png"
    Image.fromarray(np.zeros((480, 640), dtype=np.uint8)).save(depth)
    with pytest.raises(BopError, match="000001.png is a PNG of mode L, not 16-bit depth"):
        read_dataset(eight_bit)

    for folder, expected in ((missing, "scene_gt.json is missing"), (eight_bit, "mode L, not 16-bit")):
        result = runner.invoke(app, ["bench", "--bop", str(folder), "--out", str(tmp_path / "out")])
        assert result.exit_code == 1
        assert result.stderr.startswith("error: ") and expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output

    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("scene,image\n1,2\n")
    with pytest.raises(BopError, match="must start with the header"):
        read_results(bad_csv)


def test_bench_bop_writes_the_results_file_and_the_table(root, tmp_path) -> None:
    out, store = tmp_path / "out", tmp_path / "store"
    result = runner.invoke(app, ["bench", "--bop", str(root), "--store", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "AR_MSSD" in result.stdout and "obj_000001" in result.stdout
    assert ObjectStore(store).names() == ["obj_000001"]  # kept in --store, for the next run
    estimates = read_results(out / "cloudpose_bop.csv")
    assert {(item.scene_id, item.im_id) for item in estimates} <= {(1, 0), (1, 1), (1, 2)}
    assert (out / "bop_scores.json").is_file() and (out / "bop_scores.txt").is_file()


def test_symmetries_with_offsets_are_equivalent_poses(tmp_path) -> None:
    import trimesh

    from pipeline.data.bop import BopGroundTruth, BopModel

    # A box centred at (50, 0, 0) mm, symmetric by half a turn about z through its centre, and a
    # cylinder about z through the same centre (BOP's symmetries carry such offsets).
    path = tmp_path / "obj_000001.ply"
    trimesh.creation.box(extents=(40.0, 20.0, 10.0)).apply_translation([50.0, 0.0, 0.0]).export(path)
    half_turn = np.diag([-1.0, -1.0, 1.0])
    discrete = np.eye(4)
    discrete[:3, :3], discrete[:3, 3] = half_turn, [100.0, 0.0, 0.0]  # offset - R @ offset
    box = bop.ScoringModel.from_bop(BopModel(1, path, 46.0, discrete[None]))
    truth = BopGroundTruth(1, np.eye(3), np.array([0.0, 0.0, 800.0]), 1.0)
    flipped = BopEstimate(1, 0, 1, 1.0, half_turn, half_turn @ [-50.0, 0.0, 0.0] + [50.0, 0.0, 800.0])
    camera = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
    errors = bop.pose_errors(flipped, truth, box, camera)
    assert errors["mssd"] == pytest.approx(0.0, abs=1e-9) and errors["mspd"] == pytest.approx(0.0, abs=1e-9)
    assert errors["add"] == pytest.approx(0.0, abs=1e-9)  # ADD-S: the object has symmetries
    plain = bop.ScoringModel.from_bop(BopModel(1, path, 46.0))
    # Without the symmetry a half turn moves a corner (20, 10) across the centre: 2 |(20, 10)|.
    assert bop.pose_errors(flipped, truth, plain, camera)["mssd"] == pytest.approx(2 * np.hypot(20.0, 10.0))

    axis = {"axis": np.array([0.0, 0.0, 1.0]), "offset": np.array([50.0, 0.0, 0.0])}
    turned = np.array([[np.cos(0.7), -np.sin(0.7), 0.0], [np.sin(0.7), np.cos(0.7), 0.0], [0.0, 0.0, 1.0]])
    cylinder = bop.ScoringModel.from_bop(BopModel(1, path, 46.0, symmetries_continuous=(axis,)))
    estimate = BopEstimate(1, 0, 1, 1.0, turned, turned @ [-50.0, 0.0, 0.0] + [50.0, 0.0, 800.0])
    # Steps of 2 pi / 315: the nearest is at most half a step away, 0.57 degrees at 22 mm.
    assert bop.pose_errors(estimate, truth, cylinder, camera)["mssd"] < 22.4 * np.deg2rad(0.58)
