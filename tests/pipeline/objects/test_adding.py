"""Adding an object: mesh checks, near symmetries, view offsets, and one tiny add -> serve -> pose."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh

from cloudpose.geometry.symmetry import Symmetry
from pipeline.data.mesh import MeshError, load_mesh, sample_surface
from pipeline.objects.adding import check_mesh, find_near_symmetries, measure_view_offset

REPO_ROOT = Path(__file__).resolve().parents[3]


def box_mesh(tmp_path: Path, extents=(80.0, 50.0, 30.0), name: str = "box.stl") -> Path:
    path = tmp_path / name
    trimesh.creation.box(extents=extents).export(path)
    return path


def test_a_closed_box_passes_the_checks(tmp_path: Path) -> None:
    mesh, report = check_mesh(box_mesh(tmp_path), unit_m=1e-3, units="mm")
    assert report.watertight and report.degenerate_faces == 0 and report.duplicate_faces == 0
    assert report.faces == 12 and report.vertices == 8
    assert report.extent == pytest.approx([80.0, 50.0, 30.0])
    assert report.warnings == []


def test_an_open_mesh_with_degenerate_and_duplicate_faces_is_reported(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    faces = np.concatenate([box.faces[1:], box.faces[1:2], [[0, 0, 1]]])  # one face gone, one twice
    path = tmp_path / "open.ply"
    trimesh.Trimesh(box.vertices, faces, process=False).export(path)
    _, report = check_mesh(path)
    assert not report.watertight
    assert report.degenerate_faces == 1 and report.duplicate_faces == 1
    assert any("not watertight" in warning for warning in report.warnings)
    assert "1 degenerate (zero-area) triangles are ignored" in report.warnings
    assert "1 duplicate triangles" in report.warnings


def test_implausible_units_are_flagged(tmp_path: Path) -> None:
    path = box_mesh(tmp_path)  # 80 x 50 x 30: millimetres, not metres
    _, report = check_mesh(path, unit_m=1.0, units="m")
    assert any("unusual size for a part: check --units" in warning for warning in report.warnings)
    _, report = check_mesh(path, unit_m=1e-3, units="mm")
    assert report.warnings == []


def test_cad_files_get_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "part.step"
    path.write_text("ISO-10303-21;\n")
    with pytest.raises(MeshError, match="is a CAD \\(B-rep\\) file: export it"):
        load_mesh(path)


def test_a_glb_mesh_loads(tmp_path: Path) -> None:
    path = tmp_path / "box.glb"
    trimesh.creation.box(extents=(1.0, 2.0, 3.0)).export(path)
    assert load_mesh(path).diagonal == pytest.approx(np.sqrt(14.0))


def test_near_symmetries_of_a_nearly_symmetric_part_but_not_of_an_exact_one(tmp_path: Path) -> None:
    # A slab with a small bump on top: the half turns about its long and short axes nearly map it
    # onto itself; the plain slab's half turns are exact symmetries, so none is "near".
    slab = trimesh.creation.box(extents=(60.0, 20.0, 6.0))
    bump = trimesh.creation.box(extents=(6.0, 6.0, 3.0))
    bump.apply_translation((20.0, 0.0, 4.5))
    path = tmp_path / "slab_bump.stl"
    trimesh.util.concatenate([slab, bump]).export(path)
    mesh = load_mesh(path)
    near = find_near_symmetries(mesh, Symmetry.identity())
    assert len(near) >= 2
    for turn in near:
        np.testing.assert_allclose(turn @ turn.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(turn) == pytest.approx(1.0)
    plain = load_mesh(box_mesh(tmp_path, (60.0, 20.0, 6.0), "slab.stl"))
    group = Symmetry(
        np.stack([np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])])
    )
    assert find_near_symmetries(plain, group) == []


def test_view_offset_is_positive_and_below_half_a_diagonal() -> None:
    offset = measure_view_offset(load_mesh(), views=20)
    assert 0.05 < offset < 0.5


def test_a_sphere_like_pebble_has_a_smaller_view_offset_than_a_flat_plate(tmp_path: Path) -> None:
    sphere = tmp_path / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=3, radius=10.0).export(sphere)
    plate = box_mesh(tmp_path, (40.0, 40.0, 2.0), "plate.stl")
    # A view of a sphere sees a cap whose centroid sits well in front of the centre; a plate's
    # views lie on one face, close to the centre.
    assert measure_view_offset(load_mesh(sphere), views=20) > measure_view_offset(load_mesh(plate), views=20)


def cloudpose(*args: str) -> subprocess.CompletedProcess:
    from tests.service.test_uvicorn import cloudpose_command

    command = [*cloudpose_command(), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_object_add_trains_serves_and_poses_end_to_end(tmp_path: Path) -> None:
    """``cloudpose object add --train --time-budget-s 20`` -> ``cloudpose serve`` -> POST a cloud."""
    pytest.importorskip("torch")
    import httpx

    from tests.service.test_uvicorn import cloudpose_command, free_port, running_server

    mesh_path = tmp_path / "lever_like.stl"
    # A plate with a boss and a lug off its axes: no symmetry, no near symmetry.
    slab = trimesh.creation.box(extents=(60.0, 20.0, 6.0))
    boss = trimesh.creation.cylinder(radius=8.0, height=10.0)
    boss.apply_translation((-22.0, 4.0, 2.0))
    lug = trimesh.creation.box(extents=(10.0, 6.0, 12.0))
    lug.apply_translation((18.0, -7.0, -3.0))
    trimesh.util.concatenate([slab, boss, lug]).export(mesh_path)
    store, runs = tmp_path / "store", tmp_path / "runs"
    common = ("--store", str(store))
    added = cloudpose("object", "add", "part", str(mesh_path), "--units", "mm", "--train",
                      "--time-budget-s", "20", "--bench-count", "2", "--runs-dir", str(runs),
                      *common)  # fmt: skip
    assert added.returncode == 0, added.stderr
    summary = json.loads(added.stdout)
    assert summary["object"] == "part" and summary["training"]["steps"] > 0
    assert {row["set"] for row in summary["bench"]} >= {"shuffled", "partial"}
    # Without a terminal, the long stages report in lines (a bar on a terminal).
    assert "train: " in added.stderr and " s elapsed" in added.stderr
    assert "bench: 12/12 clouds (100%)" in added.stderr
    package = store / "part"
    for name in ("object.json", "surface.npy", "model.onnx", "model.json", "PROVENANCE.md", "mesh.stl"):
        assert (package / name).is_file(), name
    assert "cloudpose object add part" in (package / "PROVENANCE.md").read_text()

    again = cloudpose("object", "add", "part", str(mesh_path), "--no-train", *common)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    listed = cloudpose("object", "list", *common)
    assert listed.returncode == 0 and listed.stdout.startswith("part ")

    mesh = load_mesh(mesh_path)
    rng = np.random.default_rng(5)
    from scipy.spatial.transform import Rotation

    rotation = Rotation.random(random_state=rng).as_matrix()
    file_points = sample_surface(mesh, 1500, rng) + mesh.offset  # the file's own coordinates
    observed = file_points @ rotation + np.array([100.0, -40.0, 250.0])
    command = [*cloudpose_command(), "serve", "--port", str(port := free_port()), *common]
    with running_server(command, port, tmp_path / "serve.log") as base_url:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            assert client.get("/v1/objects").json()["default"] == "part"  # the only object
            response = client.post("/v1/objects/part/pose", json={"points": observed.tolist()})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["found"] is True and body["object"] == "part", body.get("reason")
            landed = observed @ np.array(body["rotation"]) + np.array(body["translation"])
            off = np.abs(landed - file_points).max(axis=0)
            assert off.max() < 0.01 * mesh.diagonal, (off, body["fit"], body.get("warnings"))
    shutil.rmtree(store)


def test_the_add_recipe_is_the_shipped_models_scale_free_recipe() -> None:
    import dataclasses

    import yaml

    from pipeline.objects.adding import TRAIN_RECIPE

    shipped = yaml.safe_load((Path(__file__).resolve().parents[3] / "configs" / "pointnet.yaml").read_text())
    recipe = TRAIN_RECIPE.to_config()
    budget_fields = ("steps", "schedule_by", "time_budget_s", "out_dir")
    assert {key: value for key, value in recipe.items() if key not in budget_fields} == {
        key: value for key, value in shipped.items() if key in recipe and key not in budget_fields
    }
    assert recipe["schedule_by"] == "time" and "default recipe" in TRAIN_RECIPE.SOURCE
    with pytest.raises(dataclasses.FrozenInstanceError):
        TRAIN_RECIPE.lr = 1.0  # type: ignore[misc]
