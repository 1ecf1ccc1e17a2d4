"""The scene benchmark's target parts (benchmarks/make_scene_parts.py): closed meshes of the
documented sizes, written the same way every time, with the symmetries they are made to have."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipeline.data.mesh import Mesh, surface_centroid
from pipeline.data.symmetry_search import find_symmetry

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "make_scene_parts.py"
EXTENTS_MM = {"crank": (132.0, 55.0, 30.0), "tee": (120.0, 36.0, 78.0), "flange": (110.0, 110.0, 30.0)}
ROTATIONS = {"crank": 1, "tee": 2, "flange": 6}


@pytest.fixture(scope="module")
def parts() -> dict[str, trimesh.Trimesh]:
    spec = importlib.util.spec_from_file_location("make_scene_parts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parts()


def test_parts_are_closed_meshes_of_the_documented_size(parts) -> None:
    assert set(parts) == set(EXTENTS_MM)
    for name, mesh in parts.items():
        assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0, name
        np.testing.assert_allclose(mesh.extents, EXTENTS_MM[name], atol=0.05, err_msg=name)


def test_parts_have_the_symmetries_they_are_made_with(parts) -> None:
    for name, mesh in parts.items():
        vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
        offset = surface_centroid(vertices, faces)
        canonical = Mesh(vertices - offset, faces, name, "", offset)
        assert find_symmetry(canonical).order == ROTATIONS[name], name


def test_two_runs_write_identical_files(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / folder)], check=True, capture_output=True)
    for name in EXTENTS_MM:
        assert (tmp_path / "a" / f"{name}.stl").read_bytes() == (tmp_path / "b" / f"{name}.stl").read_bytes()
