from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipeline.data.mesh import DEFAULT_MESH, MeshError, load_mesh, sample_surface, surface_centroid


def test_the_bundled_bunny_is_the_npm_mesh_in_its_canonical_frame() -> None:
    mesh = load_mesh()
    assert mesh.vertices.shape == (1839, 3) and mesh.faces.shape == (3674, 3)
    assert np.abs(surface_centroid(mesh.vertices, mesh.faces)).max() < 1e-9
    # The file is stored centred already (data/README.md), so the shift is below print precision.
    assert np.abs(mesh.offset).max() < 1e-5
    assert mesh.diagonal == pytest.approx(15.7572, abs=1e-3)


@pytest.mark.parametrize("suffix", [".obj", ".stl", ".off", ".ply"])
def test_other_meshes_load_and_are_centred(tmp_path: Path, suffix: str) -> None:
    box = trimesh.creation.box(extents=(2.0, 4.0, 6.0))
    box.apply_translation((10.0, -3.0, 1.0))
    path = tmp_path / f"box{suffix}"
    box.export(path)
    mesh = load_mesh(path)
    np.testing.assert_allclose(mesh.offset, (10.0, -3.0, 1.0), atol=1e-6)
    assert mesh.diagonal == pytest.approx(np.sqrt(4 + 16 + 36))


def test_bad_mesh_files_raise_mesh_errors(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="not found"):
        load_mesh(tmp_path / "missing.ply")
    other = tmp_path / "cloud.xyz"
    other.write_text("1 2 3\n")
    with pytest.raises(MeshError, match="unsupported mesh format"):
        load_mesh(other)
    corrupt = tmp_path / "corrupt.ply"
    corrupt.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nend_header\n\x00\x01")
    with pytest.raises(MeshError):
        load_mesh(corrupt)


def test_surface_samples_are_seeded_and_lie_on_the_surface(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(2.0, 4.0, 6.0))
    path = tmp_path / "box.stl"
    box.export(path)
    mesh = load_mesh(path)
    first = sample_surface(mesh, 2000, np.random.default_rng(0))
    np.testing.assert_array_equal(first, sample_surface(mesh, 2000, np.random.default_rng(0)))
    assert not np.array_equal(first, sample_surface(mesh, 2000, np.random.default_rng(1)))
    # On a box's surface one coordinate sits on a face: |x| = 1, |y| = 2 or |z| = 3.
    on_face = np.isclose(np.abs(first), [1.0, 2.0, 3.0], atol=1e-9).any(axis=1)
    assert on_face.all()
    # Area-weighted: the two z faces (2 x 4 each) hold 16 of the 88 units of area.
    z_share = np.isclose(np.abs(first[:, 2]), 3.0).mean()
    assert z_share == pytest.approx(16 / 88, abs=0.025)


def test_default_mesh_path_points_at_the_data_folder() -> None:
    assert DEFAULT_MESH.name == "bunny.ply" and DEFAULT_MESH.parent.name == "data"
