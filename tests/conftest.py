"""Shared fixtures: the session's own object stores, and one small model trained and exported for
real, reused by the whole session."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudpose.store.package import SHIPPED_STORE

SMALL_N = 64
# The packages of data/objects that ship with cloudpose; anything else there is a user's.
SHIPPED_OBJECTS = ("bunny",)


@pytest.fixture(scope="session", autouse=True)
def user_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's store for the whole session: an empty folder of its own (``CLOUDPOSE_STORE``,
    and the data folder it would default to), so no test reads the objects a user has added, and
    none writes among them. Servers and commands the tests start inherit it."""
    root = tmp_path_factory.mktemp("user")
    patch = pytest.MonkeyPatch()
    patch.setenv("CLOUDPOSE_STORE", str(root / "objects"))
    patch.setenv("XDG_DATA_HOME", str(root / "data"))
    patch.delenv("CLOUDPOSE_ONLY_STORE", raising=False)
    yield root / "objects"
    patch.undo()


def _copy_package(package: Path, store: Path, name: str) -> Path:
    target = store / name
    shutil.copytree(package, target)
    descriptor = target / "object.json"
    descriptor.write_text(json.dumps({**json.loads(descriptor.read_text()), "name": name}, indent=2))
    return target


@pytest.fixture(scope="session")
def added_object(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, object, str], tuple]:
    """``added_object(name, mesh, suffix)``: a mesh in millimetres (a ``trimesh.Trimesh``) written
    as a ``suffix`` file, added without training to a store of its own as a user adds it, and
    served; returns the :class:`cloudpose.estimation.served.ServedObject` and its
    :class:`pipeline.data.scenes.SceneObject` (the mesh in metres, as frames place it)."""
    from cloudpose.estimation.served import ServedObject
    from cloudpose.store.package import ObjectStore
    from pipeline.data.scenes import package_object
    from pipeline.objects.adding import add_object

    def add(name: str, mesh, suffix: str) -> tuple:
        folder = tmp_path_factory.mktemp(name)
        mesh.export(folder / f"{name}{suffix}")
        store = ObjectStore(folder / "store")
        add_object(
            name, folder / f"{name}{suffix}", store=store, units="mm", train=False, bench_count=0,
            runs_dir=folder / "runs",
        )  # fmt: skip
        package = store.get(name)
        return ServedObject.from_package(package), package_object(package)

    return add


@pytest.fixture(scope="session")
def added_part(added_object) -> Callable[[str], tuple]:
    """``added_part(name)``: a part of the scene benchmark (``benchmarks/make_scene_parts.py``:
    crank, tee, flange) added as ``added_object`` adds a mesh; the same pair it returns."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "make_scene_parts.py"
    spec = importlib.util.spec_from_file_location("make_scene_parts", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda name: added_object(name, module.parts()[name], ".stl")


@pytest.fixture(scope="session")
def copy_package() -> Callable[[Path, Path, str], Path]:
    """``copy_package(package, store, name)``: a copy of a package under another name in
    ``store`` (a user's object, made in no time); returns its folder."""
    return _copy_package


@pytest.fixture(scope="session")
def shipped_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding a copy of the shipped objects alone, whatever else data/objects holds
    (objects a user added there with ``--store data/objects``). Tests only read it."""
    root = tmp_path_factory.mktemp("shipped") / "objects"
    for name in SHIPPED_OBJECTS:
        shutil.copytree(SHIPPED_STORE / name, root / name)
    return root


@dataclass
class ExportedModel:
    """A model trained with the real pipeline and exported to ONNX.

    Attributes:
        run_dir: training run folder (checkpoint.pt, metrics.csv, summary.json).
        model_path: exported model.onnx (model.json and template.npy beside it).
        n_points: N of its template.
    """

    run_dir: Path
    model_path: Path
    n_points: int


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """Train the exam-setting linear model on N = 64 points until it is exact, then export it."""
    from pipeline.training.config import load_config
    from pipeline.training.export import export_model
    from pipeline.training.train import train

    root = tmp_path_factory.mktemp("model")
    cfg = load_config(
        None,
        {"n_points": SMALL_N, "steps": 600, "val_every": 100, "val_size": 500, "out_dir": str(root / "run")},
    )
    result = train(cfg)
    assert result.reached_target, result.validation
    exported = export_model(result.checkpoint, root / "export")
    return ExportedModel(run_dir=root / "run", model_path=exported.model_path, n_points=SMALL_N)


@pytest.fixture(scope="session")
def order_free_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """A tiny order-free (PointNet) model, trained briefly for real and exported with its surface.

    Its network is far from accurate; refinement and hypotheses carry the pose, which is what
    the tests of the order-free path check.
    """
    from pipeline.training.config import load_config
    from pipeline.training.export import export_model
    from pipeline.training.train import train

    root = tmp_path_factory.mktemp("order_free")
    cfg = load_config(
        None,
        {
            "model_kind": "pointnet",
            "activation": "relu",
            "widths": [16, 32],
            "head": [32],
            "points_min": 64,
            "points_max": 128,
            "input_points": 256,
            "view_bank_size": 8,
            "batch_size": 8,
            "steps": 30,
            "val_every": 15,
            "val_size": 32,
            "out_dir": str(root / "run"),
        },
    )
    result = train(cfg)
    exported = export_model(result.checkpoint, root / "export")
    return ExportedModel(run_dir=root / "run", model_path=exported.model_path, n_points=256)
