"""Which objects a segment is posed as: a smaller object on the table is not pruned because a
larger one explains its points as well (the larger one puts surface where the sensor saw none)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cloudpose.detection.detect import frame_segments, open_frame
from pipeline.data.scenes import Intrinsics, SceneCounts, SceneLayout, make_frame
from tests.service import test_detect

OBJECTS_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_objects.py"
bunny = test_detect.bunny  # the served bunny


@pytest.fixture(scope="module")
def pebble(added_object):
    """The benchmark's pebble (60 mm, organic, no symmetry), added without training and served."""
    spec = importlib.util.spec_from_file_location("make_objects", OBJECTS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return added_object("pebble", module.pebble(), ".ply")


def test_a_pebble_is_posed_as_a_pebble_though_the_bunny_explains_its_points(bunny, pebble) -> None:
    served, scene_pebble = pebble
    objects = {"bunny": bunny, "pebble": served}
    counts = SceneCounts(target_copies=(1, 1), distractors=(0, 0))
    layout = SceneLayout(touching=0.0, distance_m=(0.8, 0.8))
    frame = make_frame([scene_pebble], [], np.random.default_rng(1), Intrinsics(), counts, layout=layout)
    points = frame.points().astype(np.float64)
    search, on_plane, voxel = open_frame(points, objects, "m", None, 0)
    segments = frame_segments(points, on_plane, voxel, search.params, search.sensor, search.pitch)
    segment = points[segments[0]]
    screened = {
        name: search._screen(name, segment, search._resting_starts(name, segment)) for name in objects
    }
    assert screened["bunny"][0] > screened["pebble"][0]  # on the points alone the bunny wins ...
    assert screened["bunny"][1] < screened["pebble"][1]  # ... but puts surface where there is none
    assert "pebble" in [name for name, _ in search._candidates(segment)]
