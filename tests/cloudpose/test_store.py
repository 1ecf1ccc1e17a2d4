"""The object store and its package format: names, units, atomic writes, every read error."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cloudpose.store.package import (
    DESCRIPTOR,
    OBJECT_FORMAT,
    ObjectStore,
    StoreError,
    check_name,
    metres_per_unit,
    read_package,
    write_package,
)
from pipeline.objects.adding import SURFACE_POINTS, add_object
from pipeline.training.config import ConfigError

pytest.importorskip("manifold3d", reason="make_objects cuts its holes with manifold3d")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_objects.py"
NAME_DETAIL = (
    "invalid object name {name!r}: use lower-case letters, digits, '-' and '_' "
    "(starting with a letter or digit, at most 63 characters)"
)
# What add_object writes into a package made without a network.
PACKAGE_FILES = {"object.json", "surface.npy", "mesh.stl", "example.json", "example.xyz", "PROVENANCE.md"}
BOX_EXTENT_MM = [80.0, 50.0, 30.0]


@pytest.fixture(scope="module")
def meshes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec = importlib.util.spec_from_file_location("make_objects", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_objects(tmp_path_factory.mktemp("meshes"))


@pytest.fixture(scope="module")
def box_source(meshes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search-only package of the box, made once; tests that change it work on a copy."""
    store = ObjectStore(tmp_path_factory.mktemp("box_store"))
    result = add_object(
        "box",
        meshes["box"],
        store=store,
        units="mm",
        train=False,
        bench_count=0,
        runs_dir=tmp_path_factory.mktemp("runs"),
    )
    return result.package.path


@pytest.fixture()
def package_dir(box_source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "store" / "box"
    shutil.copytree(box_source, target)
    return target


def package_files(path: Path) -> dict[str, bytes]:
    return {entry.name: entry.read_bytes() for entry in path.iterdir() if entry.name != DESCRIPTOR}


def descriptor(path: Path) -> dict:
    return json.loads((path / DESCRIPTOR).read_text())


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Names and units


@pytest.mark.parametrize("name", ["box", "a", "0", "hex_nut", "m12-nut_2", "a" * 63])
def test_valid_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Box", "-box", "_box", "a" * 64, "hex nut", "a/b", "../box", ".box", "box.stl", "café", "\nbox"],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(StoreError) as error:
        check_name(name)
    assert str(error.value) == NAME_DETAIL.format(name=name)


def test_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(StoreError) as error:
        check_name("box\n")
    assert str(error.value) == NAME_DETAIL.format(name="box\n")


@pytest.mark.parametrize("name", [None, 12])
def test_non_string_names_are_refused(name: object) -> None:
    with pytest.raises(StoreError) as error:
        check_name(name)
    assert str(error.value) == NAME_DETAIL.format(name=name)


@pytest.mark.parametrize(
    ("units", "expected"),
    [("mm", 1e-3), ("cm", 1e-2), ("m", 1.0), ("in", 0.0254), ("ft", 0.3048), ("um", 1e-6), (" MM ", 1e-3)],
)
def test_metres_per_unit(units: str, expected: float) -> None:
    assert metres_per_unit(units) == expected


@pytest.mark.parametrize("units", ["furlong", "", "millimetre", "mm2"])
def test_unknown_unit(units: str) -> None:
    with pytest.raises(StoreError) as error:
        metres_per_unit(units)
    assert str(error.value) == f"unknown unit {units!r}; use one of um, mm, cm, dm, m, in, ft"


# ---------------------------------------------------------------------------------------------
# A package written by add_object, through the store


def test_add_object_package_reads_back(meshes: dict[str, Path], tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    assert store.names() == []  # the folder does not exist yet
    result = add_object(
        "box", meshes["box"], store=store, units="mm", train=False, bench_count=0, runs_dir=tmp_path / "runs"
    )
    assert result.training is None and result.bench is None
    assert store.names() == ["box"]
    assert "box" in store and "nope" not in store
    assert {entry.name for entry in (store.root / "box").iterdir()} == PACKAGE_FILES
    assert not (tmp_path / "runs").exists()  # no training, no run folder

    package = store.get("box")
    assert package.path == store.root / "box"
    assert package.name == "box"
    assert package.units == "mm"
    assert package.metres_per_unit == 1e-3
    np.testing.assert_allclose(package.centroid, [40.0, 25.0, 15.0], atol=1e-9)
    assert package.diagonal == pytest.approx(np.linalg.norm(BOX_EXTENT_MM), rel=1e-12)
    assert package.mesh_path == store.root / "box" / "mesh.stl"
    assert package.mesh_path.read_bytes() == meshes["box"].read_bytes()
    assert package.model_path is None
    assert set(package.tuning) == {
        "view_offset",
        "near_symmetries",
        "ambiguous_views",
        "surface_tolerance",
        "surface_tolerance_source",
    }
    assert package.surface_tolerance == pytest.approx(0.003 * package.diagonal)  # the default
    assert package.tuning["ambiguous_views"] > 0  # a box seen on two faces fits other poses too
    surface = package.surface()
    assert surface.shape == (SURFACE_POINTS, 6)
    np.testing.assert_allclose(np.linalg.norm(surface[:, 3:], axis=1), 1.0, atol=1e-6)
    # Internal frame: the box's surface, centred on its centroid.
    assert np.abs(surface[:, :3]).max(axis=0) == pytest.approx([40.0, 25.0, 15.0], abs=1e-6)

    assert [item.name for item in store.packages()] == ["box"]
    described = package.describe()
    assert set(described) == {
        "name", "units", "metres_per_unit", "size", "mesh", "symmetry", "model_id", "trained", "bench"
    }  # fmt: skip
    assert described["name"] == "box"
    assert described["units"] == "mm"
    assert described["metres_per_unit"] == 1e-3
    assert described["size"]["extent"] == pytest.approx(BOX_EXTENT_MM, abs=1e-9)
    assert described["size"]["diagonal"] == pytest.approx(np.linalg.norm(BOX_EXTENT_MM), rel=1e-12)
    assert described["size"]["diameter"] == pytest.approx(np.linalg.norm(BOX_EXTENT_MM), rel=1e-9)
    assert described["size"]["centroid"] == pytest.approx([40.0, 25.0, 15.0], abs=1e-9)
    assert described["mesh"] == {
        "source": str(meshes["box"]),
        "sha256": hashlib.sha256(meshes["box"].read_bytes()).hexdigest(),
        "faces": 12,
        "vertices": 8,
        "watertight": True,
    }
    assert described["symmetry"]["kind"] == "discrete"
    assert described["symmetry"]["order"] == 4
    assert len(described["symmetry"]["rotations"]) == 4
    assert described["model_id"] is None
    assert described["trained"] is False
    assert described["bench"] is None


def test_names_skip_folders_that_are_not_packages(package_dir: Path) -> None:
    root = package_dir.parent
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    shutil.copytree(package_dir, root / ".staged")  # a package-looking temporary folder
    (root / "notes.txt").write_text("not a package")
    store = ObjectStore(root)
    assert store.names() == ["box"]
    assert "empty" not in store


def test_get_unknown_name_lists_known(package_dir: Path) -> None:
    store = ObjectStore(package_dir.parent)
    with pytest.raises(StoreError) as error:
        store.get("nope")
    assert str(error.value) == f"no object 'nope' in {store.root} (known: box)"


def test_remove(package_dir: Path) -> None:
    store = ObjectStore(package_dir.parent)
    store.remove("box")
    assert store.names() == []
    assert list(store.root.iterdir()) == []  # no retired folder left behind
    with pytest.raises(StoreError) as error:
        store.get("box")
    assert str(error.value) == f"no object 'box' in {store.root} (known: none)"
    with pytest.raises(StoreError) as error:
        store.remove("box")
    assert str(error.value) == f"no object 'box' in {store.root} (known: none)"


def test_get_and_remove_stay_inside_the_store(package_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(package_dir, outside)
    store = ObjectStore(package_dir.parent)
    with pytest.raises(StoreError):
        store.get("../outside")
    with pytest.raises(StoreError):
        store.remove("./../outside")
    assert (outside / DESCRIPTOR).is_file()


def test_rewrite_replaces_the_package_whole(package_dir: Path) -> None:
    store = ObjectStore(package_dir.parent)
    meta = descriptor(package_dir)
    files = package_files(package_dir)
    store.write("box", {**meta, "tuning": {"view_offset": 0.5}}, {**files, "stale.txt": b"old"})
    assert (package_dir / "stale.txt").read_bytes() == b"old"
    assert store.get("box").tuning == {"view_offset": 0.5}

    rewritten = store.write("box", meta, files)
    assert rewritten.path == package_dir
    assert {entry.name for entry in package_dir.iterdir()} == PACKAGE_FILES
    assert rewritten.tuning == meta["tuning"]
    assert [entry.name for entry in store.root.iterdir()] == ["box"]  # no .box.new-/.box.old- left


def test_write_fills_in_format_and_name(package_dir: Path, tmp_path: Path) -> None:
    meta = {**descriptor(package_dir), "name": "something else"}
    del meta["format"]
    target = write_package(tmp_path / "other", "copy", meta, package_files(package_dir))
    assert target == tmp_path / "other" / "copy"
    written = descriptor(target)
    assert written["format"] == OBJECT_FORMAT
    assert written["name"] == "copy"
    assert read_package(target).name == "copy"


def test_failed_rewrite_keeps_the_old_package(package_dir: Path) -> None:
    store = ObjectStore(package_dir.parent)
    before = {entry.name: entry.read_bytes() for entry in package_dir.iterdir()}
    files = package_files(package_dir)
    del files["surface.npy"]
    with pytest.raises(StoreError) as error:
        store.write("box", descriptor(package_dir), files)
    assert re.fullmatch(
        re.escape(str(store.root)) + r"/\.box\.new-[^/]+/surface\.npy is missing", str(error.value)
    ), str(error.value)
    assert {entry.name: entry.read_bytes() for entry in package_dir.iterdir()} == before
    assert [entry.name for entry in store.root.iterdir()] == ["box"]  # the staging folder is gone


def test_write_refuses_an_invalid_name(package_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as error:
        write_package(tmp_path / "other", "Bad Name", descriptor(package_dir), package_files(package_dir))
    assert str(error.value) == NAME_DETAIL.format(name="Bad Name")
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------------------------------------
# read_package and surface() errors


def test_read_package_without_descriptor(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as error:
        read_package(tmp_path)
    assert str(error.value) == f"{tmp_path} is not an object package: object.json is missing"


@pytest.mark.parametrize("content", [b'{"format": "cloudpose-object/1", ', b"\xff\xfe\x00", b""])
def test_read_package_descriptor_not_json(package_dir: Path, content: bytes) -> None:
    (package_dir / DESCRIPTOR).write_bytes(content)
    with pytest.raises(StoreError) as error:
        read_package(package_dir)
    assert str(error.value) == f"{package_dir / DESCRIPTOR} is not valid JSON"


@pytest.mark.parametrize("content", [["cloudpose-object/1"], {"format": "cloudpose-object/2"}, {}, "text"])
def test_read_package_wrong_format(package_dir: Path, content: object) -> None:
    if isinstance(content, dict) and content:
        content = {**descriptor(package_dir), **content}
    (package_dir / DESCRIPTOR).write_text(json.dumps(content))
    with pytest.raises(StoreError) as error:
        read_package(package_dir)
    assert str(error.value) == f"{package_dir / DESCRIPTOR} is not a cloudpose-object/1 file"


def test_read_package_missing_fields(package_dir: Path) -> None:
    meta = descriptor(package_dir)
    del meta["symmetry"], meta["tuning"]
    (package_dir / DESCRIPTOR).write_text(json.dumps(meta))
    with pytest.raises(StoreError) as error:
        read_package(package_dir)
    assert str(error.value) == f"{package_dir / DESCRIPTOR} lacks symmetry, tuning"


def test_read_package_missing_surface(package_dir: Path) -> None:
    (package_dir / "surface.npy").unlink()
    with pytest.raises(StoreError) as error:
        read_package(package_dir)
    assert str(error.value) == f"{package_dir / 'surface.npy'} is missing"


def test_read_package_missing_model(package_dir: Path) -> None:
    meta = descriptor(package_dir)
    meta["model"] = {"file": "model.onnx", "sidecar": "model.json", "model_id": "box-x"}
    (package_dir / DESCRIPTOR).write_text(json.dumps(meta))
    with pytest.raises(StoreError) as error:
        read_package(package_dir)
    assert str(error.value) == f"{package_dir / 'model.onnx'} is missing"


def test_surface_hash_mismatch(package_dir: Path) -> None:
    package = read_package(package_dir)  # the descriptor is checked here, the surface's hash later
    surface = np.load(package_dir / "surface.npy")
    surface[0, 0] += 1.0
    np.save(package_dir / "surface.npy", surface)
    with pytest.raises(StoreError) as error:
        package.surface()
    assert str(error.value) == f"{package_dir / 'surface.npy'} does not match the hash in object.json"


def rehash_surface(package_dir: Path, data: bytes) -> None:
    """Replace the surface and record its hash, so only the content can be wrong."""
    (package_dir / "surface.npy").write_bytes(data)
    meta = descriptor(package_dir)
    meta["surface"]["sha256"] = hashlib.sha256(data).hexdigest()
    (package_dir / DESCRIPTOR).write_text(json.dumps(meta))


def test_surface_corrupt(package_dir: Path) -> None:
    rehash_surface(package_dir, b"not an npy file")
    with pytest.raises(StoreError) as error:
        read_package(package_dir).surface()
    assert str(error.value) == f"surface {package_dir / 'surface.npy'} is corrupt"


@pytest.mark.parametrize("shape", [(10, 3), (10, 6, 1), (60,)])
def test_surface_wrong_shape(package_dir: Path, shape: tuple[int, ...]) -> None:
    rehash_surface(package_dir, npy_bytes(np.zeros(shape)))
    with pytest.raises(StoreError) as error:
        read_package(package_dir).surface()
    assert str(error.value) == f"surface {package_dir / 'surface.npy'} must have shape (M, 6), got {shape}"


# ---------------------------------------------------------------------------------------------
# add_object's refusals


def test_add_object_refuses_an_existing_name(
    meshes: dict[str, Path], package_dir: Path, tmp_path: Path
) -> None:
    store = ObjectStore(package_dir.parent)
    before = (package_dir / DESCRIPTOR).read_bytes()
    runs_dir = tmp_path / "runs"
    with pytest.raises(StoreError) as error:
        add_object(
            "box", meshes["pebble"], store=store, units="mm", train=False, bench_count=0, runs_dir=runs_dir
        )
    assert str(error.value) == (
        f"object 'box' already exists (package or training run {runs_dir / 'box'}): pass --resume to "
        "continue its training, --retrain to train it again, or `cloudpose object remove` first"
    )
    assert (package_dir / DESCRIPTOR).read_bytes() == before


def test_add_object_refuses_a_name_with_a_training_run(meshes: dict[str, Path], tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    runs_dir = tmp_path / "runs"
    (runs_dir / "box").mkdir(parents=True)
    (runs_dir / "box" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(StoreError) as error:
        add_object("box", meshes["box"], store=store, train=False, bench_count=0, runs_dir=runs_dir)
    assert "--resume" in str(error.value) and "--retrain" in str(error.value)
    assert str(error.value).startswith(
        f"object 'box' already exists (package or training run {runs_dir / 'box'})"
    )
    assert store.names() == []


def test_add_object_retrain_without_training_rewrites(
    meshes: dict[str, Path], package_dir: Path, tmp_path: Path
) -> None:
    store = ObjectStore(package_dir.parent)
    result = add_object(
        "box",
        meshes["pebble"],
        store=store,
        mode="retrain",
        units="cm",
        train=False,
        bench_count=0,
        runs_dir=tmp_path / "runs",
    )
    assert result.package.units == "cm"
    assert result.package.metres_per_unit == 1e-2
    assert {entry.name for entry in package_dir.iterdir()} == PACKAGE_FILES - {"mesh.stl"} | {"mesh.ply"}
    assert [entry.name for entry in store.root.iterdir()] == ["box"]


def test_add_object_refuses_a_bad_name_and_mode(meshes: dict[str, Path], tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    with pytest.raises(StoreError) as error:
        add_object("Box", meshes["box"], store=store, train=False, bench_count=0, runs_dir=tmp_path)
    assert str(error.value) == NAME_DETAIL.format(name="Box")
    with pytest.raises(ConfigError) as config_error:
        add_object(
            "box", meshes["box"], store=store, mode="again", train=False, bench_count=0, runs_dir=tmp_path
        )
    assert str(config_error.value) == "mode must be new, resume or retrain, got 'again'"
    assert not store.root.exists()
