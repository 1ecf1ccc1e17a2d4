"""benchmarks/make_objects.py: the bring-your-own-object meshes are what their docstring promises."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import trimesh

from pipeline.data.mesh import load_mesh, surface_centroid

pytest.importorskip("manifold3d", reason="make_objects cuts its holes with manifold3d")

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "make_objects.py"
# The brief's dimensions in mm; the lever's y extent follows from its bend (see the script).
SPEC_EXTENTS_MM = {
    "bracket": (60.0, 40.0, 40.0),
    "hex_nut": (2 * 19.0 / np.sqrt(3.0), 19.0, 10.0),
    "box": (80.0, 50.0, 30.0),
    "cylinder": (40.0, 40.0, 90.0),
}
# Euler characteristic 2 - 2 * genus: one tunnel per through-hole.
EULER_NUMBERS = {
    "bracket": -4,
    "hex_nut": 0,
    "lever": -2,
    "pebble": 2,
    "box": 2,
    "cylinder": 2,
    "far_origin": 2,
}


@pytest.fixture(scope="module")
def make_objects_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_objects", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def objects(make_objects_module: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_objects_module.make_objects(tmp_path_factory.mktemp("objects"))


def _load(path: Path) -> trimesh.Trimesh:
    mesh = trimesh.load(path, force="mesh")
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) > 0
    return mesh


def _extent(mesh: trimesh.Trimesh) -> np.ndarray:
    return mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)


def test_every_file_is_a_closed_small_mesh_with_its_holes(objects: dict[str, Path]) -> None:
    assert set(objects) == set(EULER_NUMBERS)
    for name, path in objects.items():
        mesh = _load(path)
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0, name
        assert mesh.euler_number == EULER_NUMBERS[name], name
        assert path.stat().st_size < 2 * 1024 * 1024, name


def test_extents_match_the_spec_in_millimetres(
    objects: dict[str, Path], make_objects_module: ModuleType
) -> None:
    for name, spec in SPEC_EXTENTS_MM.items():
        np.testing.assert_allclose(_extent(_load(objects[name])), spec, atol=1.0, err_msg=name)
    lever = _extent(_load(objects["lever"]))
    assert lever[0] == pytest.approx(150.0, abs=1.0) and lever[2] == pytest.approx(12.0, abs=1e-6)
    np.testing.assert_allclose(lever, make_objects_module.EXPECTED_EXTENTS_MM["lever"], atol=1.0)
    assert _extent(_load(objects["pebble"])).max() == pytest.approx(60.0, abs=1.0)


def test_origins_are_off_the_centroid_and_far_origin_is_ten_diagonals_out(objects: dict[str, Path]) -> None:
    for name, path in objects.items():
        mesh = load_mesh(path)  # the project's own reader, which re-centres on the surface centroid
        assert np.linalg.norm(mesh.offset) > 0.1 * mesh.diagonal, name
    far = load_mesh(objects["far_origin"])
    assert np.linalg.norm(far.offset) == pytest.approx(10 * far.diagonal, rel=1e-4)
    # It is the pebble, only moved.
    pebble = load_mesh(objects["pebble"])
    np.testing.assert_array_equal(far.faces, pebble.faces)
    np.testing.assert_allclose(far.vertices, pebble.vertices, atol=1e-5)
    assert np.abs(surface_centroid(far.vertices, far.faces)).max() < 1e-6


def test_two_runs_write_identical_bytes(
    objects: dict[str, Path], make_objects_module: ModuleType, tmp_path: Path
) -> None:
    again = make_objects_module.make_objects(tmp_path)
    for name, path in objects.items():
        assert again[name].read_bytes() == path.read_bytes(), name
