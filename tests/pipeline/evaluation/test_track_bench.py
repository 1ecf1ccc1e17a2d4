"""The tracking benchmark runs the client's loop (detect, then track) and scores every frame."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudpose.estimation.served import ObjectRegistry
from cloudpose.settings import Settings
from cloudpose.store.package import ObjectStore
from pipeline.evaluation import scene_bench, track_bench


@pytest.fixture(scope="module")
def frames(shipped_store: Path) -> list[track_bench.TrackedFrame]:
    registry = ObjectRegistry.load(Settings(store=shipped_store))
    targets, models = scene_bench.store_targets(ObjectStore(shipped_store), registry.objects)
    return track_bench.run_track_bench(
        registry.objects, targets, scene_bench.distractor_objects(), models, sequences=1, length=3, seed=4
    )


def test_the_first_frame_is_detected_and_the_others_tracked(frames) -> None:
    assert [(frame.index, frame.tracked) for frame in frames] == [(0, False), (1, True), (2, True)]
    assert all(frame.lost == 0 for frame in frames)
    for frame in frames[1:]:  # every instance at least 30 % visible is followed
        counted = [item for item in frame.score.instances if item.visible_fraction >= 0.3]
        assert counted and all(item.matched for item in counted)


def test_the_summary_counts_what_the_frames_hold(frames) -> None:
    summary = track_bench.summarize(frames)
    assert summary["all"]["frames"] == 3 and summary["tracked"]["frames"] == 2
    assert summary["tracked"]["recall"] == 1.0 and summary["tracked"]["precision"] == 1.0
    assert summary["frames_per_second"] == pytest.approx(3 / sum(frame.seconds for frame in frames))
    table = track_bench.format_table(summary, "title")
    assert table.splitlines()[0] == "title" and "| tracked | 2 | 100.0 | 100.0 |" in table
