import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cloudpose.geometry.rotations import geodesic_deg as rotation_error_deg
from models.geometry import rotation_error_deg as torch_rotation_error_deg
from pipeline.data.benchsets import Case, make_set
from pipeline.data.mesh import Mesh, load_mesh
from pipeline.evaluation.bench import format_table, run_bench, write_results
from pipeline.training.accuracy import pose_metrics


@pytest.fixture(scope="module")
def bunny() -> Mesh:
    return load_mesh()


@pytest.fixture(scope="module")
def sets(bunny: Mesh) -> dict[str, list[Case]]:
    return {
        "small": make_set("small", bunny, count=24, seed=0),
        "shuffled": make_set("shuffled", bunny, 8, 0),
    }


def oracle_for(sets: dict[str, list[Case]]):
    """A method that knows the answer for every cloud of the sets."""
    truth = {case.observed.tobytes(): case for cases in sets.values() for case in cases}

    def oracle(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        case = truth[observed.tobytes()]
        return case.object_rotation, case.object_translation

    return oracle


def identity(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.eye(3), np.zeros(3)


def slow_identity(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    time.sleep(0.002)
    return identity(observed)


def broken(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(observed) == 100:
        raise RuntimeError("no pose found")
    return np.eye(3), np.full(3, np.nan)


def test_bench_scores_oracle_identity_and_failures(bunny: Mesh, sets) -> None:
    methods = {
        "oracle": oracle_for(sets),
        "identity": identity,
        "broken": broken,
        "fpfh_ransac_icp": slow_identity,
    }
    lines: list[str] = []
    results = run_bench(methods, sets, bunny.diagonal, progress=lines.append)
    assert len(lines) == 8
    for name, cases in sets.items():
        oracle = results.cells["oracle", name].metrics
        assert oracle["count"] == len(cases) and oracle["failures"] == 0
        assert oracle["rotation_p99_deg"] < 1e-5 and oracle["translation_median_pct"] < 1e-9
        assert oracle["success_5deg"] == oracle["success_1deg"] == 1.0
        assert oracle["time_ratio"] < 1.0

        guess = results.cells["identity", name].metrics
        assert guess["success_5deg"] <= 0.05 and guess["rotation_median_deg"] > 60
        assert guess["translation_median_pct"] > 1.0

        failed = results.cells["broken", name]
        assert failed.failures == len(cases) and failed.metrics["failures"] == len(cases)
        assert (failed.rotation_error_deg == 180).all() and failed.metrics["success_5deg"] == 0
        assert failed.first_error is not None
        assert results.cells["fpfh_ransac_icp", name].metrics["time_ratio"] == pytest.approx(1.0)
        assert results.cells["fpfh_ransac_icp", name].metrics["median_ms"] >= 2.0
    assert "RuntimeError: no pose found" in results.cells["broken", "small"].first_error
    assert "not finite" in results.cells["broken", "shuffled"].first_error


def test_summary_matches_the_shared_metrics(bunny: Mesh, sets) -> None:
    cases = sets["small"]
    rng = np.random.default_rng(0)
    nudges = [np.linalg.qr(np.eye(3) + rng.normal(0, 0.02 * (i % 5), (3, 3)))[0] for i in range(len(cases))]
    nudges = [q * np.sign(np.linalg.det(q)) for q in nudges]
    answers = {
        case.observed.tobytes(): (case.object_rotation @ q, case.object_translation + rng.normal(0, 0.05, 3))
        for case, q in zip(cases, nudges, strict=True)
    }
    results = run_bench({"near": lambda x: answers[x.tobytes()]}, {"small": cases}, bunny.diagonal)
    ours = results.cells["near", "small"].metrics
    shared = pose_metrics(
        torch.tensor(np.array([answers[c.observed.tobytes()][0] for c in cases])),
        torch.tensor(np.array([answers[c.observed.tobytes()][1] for c in cases])),
        torch.tensor(np.array([c.object_rotation for c in cases])),
        torch.tensor(np.array([c.object_translation for c in cases])),
        bunny.diagonal,
    )
    for key in (
        "rotation_median_deg",
        "rotation_p90_deg",
        "rotation_p99_deg",
        "translation_median_pct",
        "success_1deg",
        "success_5deg",
    ):
        assert ours[key] == pytest.approx(shared[key], rel=1e-9, abs=1e-12), key
    assert ours["time_ratio"] is None  # no reference method in this run


def test_rotation_error_is_accurate_for_tiny_angles() -> None:
    for angle_deg in (1e-6, 1e-3, 1.0, 90.0, 179.0):
        theta = np.deg2rad(angle_deg)
        rotation = np.array(
            [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
        )
        assert rotation_error_deg(rotation, np.eye(3)) == pytest.approx(angle_deg, rel=1e-6)
        reference = torch_rotation_error_deg(
            torch.tensor(rotation)[None], torch.eye(3, dtype=torch.float64)[None]
        )
        assert rotation_error_deg(rotation, np.eye(3)) == pytest.approx(float(reference[0]), rel=1e-9)


def test_table_and_files(bunny: Mesh, sets, tmp_path: Path) -> None:
    methods = {"oracle": oracle_for(sets), "identity": identity, "fpfh_ransac_icp": slow_identity}
    results = run_bench(methods, sets, bunny.diagonal)
    table = format_table(results)
    for column in ("method", "set", "fail", "rot med °", "rot p90 °", "rot p99 °", "trans med %", "<5° %"):
        assert column in table
    for column in ("<1° %", "ms med", "× ref"):
        assert column in table
    for name in [*methods, *sets]:
        assert name in table
    assert len(table.splitlines()) == 2 + len(methods) * len(sets) + 2

    paths = write_results(results, tmp_path / "out")
    stored = json.loads(paths["json"].read_text())
    assert {(row["method"], row["set"]) for row in stored["summary"]} == {
        (m, s) for m in methods for s in sets
    }
    assert len(stored["cases"]["oracle"]["small"]["rotation_error_deg"]) == len(sets["small"])
    for kind in ("cdf", "time"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["table"].read_text().startswith("method")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


def test_failures_survive_the_json(bunny: Mesh, sets, tmp_path: Path) -> None:
    results = run_bench({"broken": broken}, {"small": sets["small"][:3]}, bunny.diagonal)
    stored = json.loads(write_results(results, tmp_path)["json"].read_text())
    row = stored["summary"][0]
    assert row["failures"] == 3 and row["translation_median_pct"] is None
    assert stored["cases"]["broken"]["small"]["translation_error_pct"] == [None, None, None]
    assert "inf" in format_table(results)


def test_methods_take_turns_case_by_case(bunny: Mesh, sets) -> None:
    calls: list[tuple[str, int]] = []

    def recording(name: str):
        def method(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls.append((name, len(observed)))
            return identity(observed)

        return method

    cases = {"shuffled": sets["shuffled"][:3]}
    run_bench({"a": recording("a"), "b": recording("b")}, cases, bunny.diagonal, warmup=0)
    # Each case goes to every method before the next case, so both see the same machine state.
    assert [name for name, _ in calls] == ["a", "b"] * 3


def test_symmetric_objects_are_scored_against_the_nearest_equivalent_pose(tmp_path: Path) -> None:
    """A box answered in one of its symmetric poses scores 0° (and ADD-S 0); scored against the
    one true pose it would score 180°. ``found`` answers are counted, wrong ones separately."""
    import trimesh

    from cloudpose.geometry.symmetry import Symmetry
    from pipeline.evaluation.bench import Scoring

    path = tmp_path / "box.stl"
    trimesh.creation.box(extents=(8.0, 5.0, 3.0)).export(path)
    box = load_mesh(path)
    cases = make_set("shuffled", box, 6, seed=1)
    half_turn = np.diag([1.0, -1.0, -1.0])
    group = Symmetry(np.stack([np.eye(3), half_turn, np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]))
    truth = {id(case.observed): case for case in cases}

    def turned(observed: np.ndarray):
        case = truth[id(observed)]
        return half_turn @ case.object_rotation, case.object_translation, True

    def wrong_but_found(observed: np.ndarray):
        case = truth[id(observed)]
        quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        return quarter @ case.object_rotation, case.object_translation, True

    points = box.vertices[:8]
    scoring = Scoring(box.diagonal, symmetry=group, model_points=points, diameter=box.diagonal)
    methods = {"turned": turned, "wrong": wrong_but_found}
    results = run_bench(methods, {"shuffled": cases}, scoring, reference="turned")
    turned_metrics = results.cells["turned", "shuffled"].metrics
    assert turned_metrics["rotation_median_deg"] == pytest.approx(0.0, abs=1e-6)
    assert turned_metrics["add_s_median_pct"] == pytest.approx(0.0, abs=1e-6)
    assert turned_metrics["found_rate"] == 1.0 and turned_metrics["found_wrong"] == 0.0
    wrong = results.cells["wrong", "shuffled"].metrics
    assert wrong["rotation_median_deg"] == pytest.approx(90.0, abs=1e-6)
    assert wrong["found_wrong"] == 1.0 and wrong["add_s_median_pct"] > 1.0
    plain = run_bench({"turned": turned}, {"shuffled": cases}, box.diagonal, reference="turned")
    assert plain.cells["turned", "shuffled"].metrics["rotation_median_deg"] == pytest.approx(180.0, abs=1e-6)
