"""benchmarks/honesty.py: a tiny run prints sane tables, and on its data the found verdict finds
the right fits and refuses the dragon's turned fits (the point of the honesty model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest

from tests.benchmarks.conftest import REAL, loaded_script, markdown_table, number

pytestmark = pytest.mark.skipif(
    not (REAL / "dragon" / "poses.json").is_file(), reason=f"no real data at {REAL} (../shared/real)"
)


@pytest.fixture(scope="module")
def honesty() -> Iterator[ModuleType]:
    with loaded_script("honesty") as module:
        yield module


@pytest.fixture(scope="module")
def tiny_run(honesty: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    folder = tmp_path_factory.mktemp("honesty")
    markdown_path, json_path = folder / "honesty.md", folder / "honesty.json"
    argv = ["--real", str(REAL), "--scans", "2", "--poses-per-scan", "1", "--sizes", "1024"]
    argv += ["--objects", "lever", "--sets", "shuffled,partial", "--count", "3", "--other-count", "2"]
    argv += ["--markdown", str(markdown_path), "--out-json", str(json_path)]
    assert honesty.main(argv) == 0
    return markdown_path.read_text(), json.loads(json_path.read_text())


def test_posed_scan_has_the_internal_pose(honesty: ModuleType) -> None:
    """observed = (canonical_file - centroid) @ R + t: the README's convention, in the internal frame."""
    scan = honesty.load_scans(REAL / "dragon", 1)[0]
    centroid = np.array([0.01, -0.1, 0.02])
    observed, rotation, translation = honesty.posed_scan(scan, 0, 3, 7, centroid)
    canonical_file = scan.points @ scan.rotation.T + scan.translation
    np.testing.assert_allclose((canonical_file - centroid) @ rotation + translation, observed, atol=1e-9)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-8)


def test_tiny_run_tables(honesty: ModuleType, tiny_run: tuple[str, dict]) -> None:
    markdown, report = tiny_run
    rows = {
        (row[0], row[1]): dict(zip(honesty.TABLE_HEADER, row, strict=True))
        for row in markdown_table(markdown, "By data")
    }
    datas = {data for data, _ in rows}
    assert datas == {"real dragon 1024", "synthetic lever"}
    kinds = {kind for _, kind in rows}
    assert {"right", "turned", "shifted"} <= kinds
    assert ("synthetic lever", "near-symmetric") in rows  # the lever has near symmetries
    assert ("real dragon 1024", "other object (dragon -> bunny)") in rows
    assert ("real dragon 1024", "other object (bunny -> dragon)") in rows
    assert ("synthetic lever", "other object (bunny -> lever)") in rows
    for key, row in rows.items():
        fits, dropped = number(row["fits"]), number(row["dropped"])
        assert fits >= 0 and dropped >= 0
        if fits == 0:
            continue
        assert 0 <= number(row["found %"]) <= 100, key
        for quantity in ("fitness", "RMSE %", "ratio"):
            values = [number(row[f"{quantity} {q}"]) for q in ("p10", "med", "p90")]
            assert values == sorted(values) and values[0] >= 0, (key, quantity)
        assert number(row["fitness p90"]) <= 1.0
    right = rows[("real dragon 1024", "right")]
    assert number(right["fits"]) + number(right["dropped"]) == 2  # 2 scans, 1 pose, 1 size
    assert number(right["RMSE % med"]) < 0.3  # the README: about 0.1 % of the diagonal
    assert (
        number(rows[("synthetic lever", "right")]["fits"])
        + number(rows[("synthetic lever", "right")]["dropped"])
        == 6
    )  # 2 sets x 3 cases

    summary = {
        row[0]: dict(zip(honesty.SUMMARY_HEADER, row, strict=True))
        for row in markdown_table(markdown, "Summary")
    }
    assert set(summary) == {"real", "synthetic"}
    for row in summary.values():
        for key in ("right found %", "wrong found %", "its found %"):
            assert 0 <= number(row[key]) <= 100, key
        assert row["worst wrong kind"] in honesty.KIND_ORDER[1:]

    margins = {row[0]: row for row in markdown_table(markdown, "Margin")}
    assert set(margins) == datas
    for row in margins.values():
        assert number(row[2]) > 0 and number(row[5]) == honesty.EXPLAINED_RATIO

    fits = report["fits"]
    assert len(fits) == sum(number(row["fits"]) + number(row["dropped"]) for row in rows.values())
    for fit in fits:
        assert 0 <= fit["fitness"] <= 1 and 0 <= fit["confidence"] <= 1
        assert fit["found"] == (fit["confidence"] >= honesty.FOUND_CONFIDENCE and fit["explained"])
        if fit["ratio"] is not None:
            assert fit["explained"] == (fit["ratio"] <= honesty.EXPLAINED_RATIO)


def test_verdict_finds_right_fits_and_refuses_turned_dragons(tiny_run: tuple[str, dict]) -> None:
    """The honesty property: right fits are found; the dragon's turned fits (real scans) are not."""
    fits = tiny_run[1]["fits"]
    right = [fit for fit in fits if fit["kind"] == "right" and fit["kept"]]
    assert len(right) >= 6
    assert [fit for fit in right if not fit["found"]] == []
    turned = [
        fit for fit in fits if fit["data"] == "real dragon 1024" and fit["kind"] == "turned" and fit["kept"]
    ]
    assert turned, "no turned fit of the dragon stayed wrong: nothing to check"
    assert [fit for fit in turned if fit["found"]] == []
    other = [
        fit for fit in fits if fit["data"] == "real dragon 1024" and fit["kind"].startswith("other object")
    ]
    assert other and not any(fit["found"] for fit in other)
