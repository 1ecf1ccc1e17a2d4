"""benchmarks/real_scans.py: the real-dragon benchmark runs end to end against a real uvicorn and
prints sane tables (no accuracy bars: measuring them is the benchmark's job)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.benchmarks.conftest import REAL, loaded_script, markdown_table, number

pytestmark = pytest.mark.skipif(
    not (REAL / "dragon" / "poses.json").is_file(), reason=f"no real data at {REAL} (../shared/real)"
)


@pytest.fixture(scope="module")
def real_scans() -> Iterator[ModuleType]:
    with loaded_script("real_scans") as module:
        yield module


def test_true_answer_brings_a_posed_scan_back(real_scans: ModuleType) -> None:
    """posed @ R_gt + t_gt is the scan in the mesh's frame, scan @ T3.T + t (the README's convention)."""
    scans = real_scans.load_scans(REAL / "dragon", limit=2)
    for index, scan in enumerate(scans):
        posed = real_scans.pose_scan(scan, index, 3, seed=5)
        np.testing.assert_allclose(
            posed.posed @ posed.rotation + posed.translation, scan.canonical(), atol=1e-9
        )
        np.testing.assert_allclose(
            posed.rotation @ posed.rotation.T, np.eye(3), atol=1e-8
        )  # poses.json: 10 decimals
        assert np.linalg.det(posed.rotation) == pytest.approx(1.0)
        again = real_scans.pose_scan(scan, index, 3, seed=5)
        np.testing.assert_array_equal(again.posed, posed.posed)
        cloud = real_scans.cloud_of_size(posed, "1024", seed=5)
        assert cloud.shape == (1024, 3) and len(np.unique(cloud, axis=0)) == 1024


def test_small_run_prints_sane_tables(real_scans: ModuleType, tmp_path: Path) -> None:
    markdown_path, json_path = tmp_path / "real.md", tmp_path / "real.json"
    argv = ["--real", str(REAL), "--scans", "3", "--poses-per-scan", "1", "--sizes", "1024"]
    argv += ["--cross-count", "2", "--markdown", str(markdown_path), "--out-json", str(json_path)]
    assert real_scans.main(argv) == 0
    markdown = markdown_path.read_text()

    sizes = markdown_table(markdown, "Dragon scans")
    per_scan = markdown_table(markdown, "Per scan")
    assert [row[0] for row in per_scan] == [
        "dragonStandRight_0",
        "dragonStandRight_24",
        "dragonStandRight_48",
    ]
    for row in per_scan:
        found, right = (number(value) for value in row[2].split(" / "))
        assert 0 <= found <= 100 and 0 <= right <= 100
    assert [row[0] for row in sizes] == ["1024"]
    row = dict(zip(real_scans.SIZE_HEADER, sizes[0], strict=True))
    assert number(row["clouds"]) == 3
    assert number(row["points (median)"]) == 1024
    rotations = [number(row[key]) for key in ("rot median (deg)", "rot p90 (deg)", "rot p99 (deg)")]
    assert all(0 <= value <= 180 for value in rotations) and rotations == sorted(rotations)
    assert number(row["transl median (mm)"]) >= 0
    shares = [key for key in real_scans.SIZE_HEADER if key.endswith("%")]
    assert len(shares) == 5
    for key in shares:
        assert 0 <= number(row[key]) <= 100, key
    found, right = number(row["found %"]), number(row["< 5 deg %"])
    assert number(row["found & right %"]) + number(row["wrong & found %"]) == pytest.approx(found, abs=0.15)
    assert number(row["found & right %"]) + number(row["right, not found %"]) == pytest.approx(
        right, abs=0.15
    )
    for key in ("server p50 (ms)", "server p90 (ms)", "client p50 (ms)"):
        assert number(row[key]) > 0, key

    cross = markdown_table(markdown, "Cross-object checks")
    sent = {(route, what): (number(clouds), number(found)) for route, what, clouds, found, *_ in cross}
    assert sent[("/v1/objects/bunny/pose", "posed dragon scans, 1024")][0] == 3
    for what in ("bunny samples, 1024 pts", "bunny samples, 4096 pts", "bunny single views"):
        assert sent[("/v1/objects/dragon/pose", what)][0] == 2
        assert sent[("/v1/objects/bunny/pose (control)", what)][0] == 2
    assert all(0 <= found <= 100 for _, found in sent.values())
    assert "## Most common reasons" in markdown

    report = json.loads(json_path.read_text())
    assert len(report["rows"]) == 3 and len(report["cross_rows"]) == 3 + 2 * 6
    assert len(report["ground_truth"]) == 3
    assert all(check["aligned_median_mm"] < 1.0 for check in report["ground_truth"])
    for cloud in report["rows"] + report["cross_rows"]:
        assert cloud["status"] == 200, cloud["reason"]
        assert cloud["server_time_ms"] > 0 and cloud["client_time_ms"] > 0
        assert cloud["found"] == (cloud["reason"] is None) or cloud["found"] is False
    for cloud in report["rows"]:
        assert 0 <= cloud["rotation_error_deg"] <= 180 and cloud["translation_error_mm"] >= 0
