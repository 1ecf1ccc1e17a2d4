"""Real laser scans: a right pose comes back found, fast, at every size, and another object's scan
does not.

The scans are ``../shared/real/dragon/scans/*.npy`` beside the repository (read-only, never
copied): single views of the Stanford dragon from a Cyberware laser scanner, metres, each in its
scanner's frame, with ``poses.json`` (column vectors, scan -> mesh). They lie about 0.1 % of the
mesh's diagonal off the (smoothed, VRIP-merged) mesh, which synthetic clouds never do. Skipped
when the folder is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cloudpose.estimation.inference import DEFAULT_SURFACE_TOLERANCE
from cloudpose.estimation.served import ServedObject
from cloudpose.store.package import ObjectStore
from pipeline.objects.adding import add_object, surface_tolerance
from pipeline.training.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
DRAGON = REPO_ROOT / ".." / "shared" / "real" / "dragon"
SCANS = ("dragonStandRight_0", "dragonStandRight_72", "dragonStandRight_240")
# A search that stops at the first start screens its alternatives at most once (about 20 poses);
# the wide rounds screen 400 and more.
FIRST_ANSWER_HYPOTHESES = 30

pytestmark = pytest.mark.skipif(
    not (DRAGON / "poses.json").is_file(), reason=f"the real dragon scans are not here ({DRAGON})"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ObjectStore:
    """The shipped bunny and the dragon, added from its mesh as a user would (no training)."""
    store = ObjectStore(tmp_path_factory.mktemp("real") / "objects")
    store.root.mkdir()
    shutil.copytree(BUNNY, store.root / "bunny")
    add_object(
        "dragon",
        DRAGON / "dragon_vrip_res3.ply",
        store=store,
        units="m",
        train=False,
        bench_count=0,
        runs_dir=tmp_path_factory.mktemp("runs"),
    )
    return store


@pytest.fixture(scope="module")
def dragon(store: ObjectStore) -> ServedObject:
    return ServedObject.from_package(store.get("dragon"))


@pytest.fixture(scope="module")
def bunny(store: ObjectStore) -> ServedObject:
    return ServedObject.from_package(store.get("bunny"))


def posed_scan(name: str, seed: int, size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real scan moved by a random rigid motion (row vectors: posed = scan @ A + b), and the
    true back transform into the mesh's frame: canonical = posed @ rotation + translation."""
    transform = np.asarray(json.loads((DRAGON / "poses.json").read_text())["poses"][name])
    scan = np.load(DRAGON / "scans" / f"{name}.npy").astype(np.float64)
    rng = np.random.default_rng(seed)
    turn = Rotation.random(random_state=seed).as_matrix()
    shift = rng.uniform(-0.5, 0.5, 3)
    posed = scan @ turn + shift
    if size is not None:
        posed = posed[rng.choice(len(posed), size, replace=False)]
    rotation = turn.T @ transform[:3, :3].T
    return posed, rotation, transform[:3, 3] - shift @ rotation


def angle_deg(rotation_a: np.ndarray, rotation_b: np.ndarray) -> float:
    return float(np.degrees(Rotation.from_matrix(rotation_a.T @ rotation_b).magnitude()))


@pytest.mark.parametrize("size", [1024, 4096, None], ids=["1024", "4096", "full"])
@pytest.mark.parametrize("name", SCANS)
def test_a_real_scan_comes_back_found_and_right_without_the_wide_search(
    dragon: ServedObject, name: str, size: int | None
) -> None:
    posed, rotation, translation = posed_scan(name, seed=len(name), size=size)
    (answer,) = dragon.estimate([posed], units="m")
    assert answer.found, answer.reason
    assert angle_deg(answer.rotation, rotation) < 1.0
    recovered = posed @ answer.rotation + answer.translation
    truth = posed @ rotation + translation
    assert np.abs(recovered - truth).max() < 0.002  # metres: 2 mm on a 0.27 m object
    assert answer.confidence["explained"] is True
    assert answer.confidence["hypotheses"] <= FIRST_ANSWER_HYPOTHESES


@pytest.mark.parametrize("size", [1024, None], ids=["1024", "full"])
def test_a_real_dragon_scan_is_not_the_bunny(bunny: ServedObject, size: int | None) -> None:
    posed, _, _ = posed_scan("dragonStandRight_120", seed=7, size=size)
    (answer,) = bunny.estimate([posed], units="m")
    assert answer.found is False
    assert answer.reason


def test_a_bunny_cloud_is_not_the_dragon(dragon: ServedObject, store: ObjectStore) -> None:
    example = json.loads((BUNNY / "example.json").read_text())
    metres = np.asarray(example["points"]) * store.get("bunny").metres_per_unit
    (answer,) = dragon.estimate([metres], units="m")
    assert answer.found is False
    assert answer.reason


def test_the_dragon_package_holds_its_surface_tolerance(store: ObjectStore) -> None:
    package = store.get("dragon")
    assert package.surface_tolerance == pytest.approx(DEFAULT_SURFACE_TOLERANCE * package.diagonal)
    assert package.tuning["surface_tolerance_source"].startswith("default")


@pytest.mark.parametrize(
    ("text", "metres_per_unit", "expected"),
    [
        ("0.5mm", 1.0, 0.0005),  # a mesh in metres
        ("0.5mm", 0.001, 0.5),  # a mesh in millimetres
        ("0.02 in", 0.001, 0.508),
        ("0.3%", 0.001, 0.3),  # of a 100-unit diagonal
        ("0.25", None, 0.25),  # the file's own units, even without a named unit
    ],
)
def test_surface_tolerance_is_read_in_the_mesh_units(text: str, metres_per_unit, expected: float) -> None:
    value, source = surface_tolerance(text, metres_per_unit, diagonal=100.0)
    assert value == pytest.approx(expected)
    assert source == f"given: {text}"


@pytest.mark.parametrize(
    ("text", "metres_per_unit", "detail"),
    [
        ("-1mm", 1.0, "give a positive length"),
        ("0", 1.0, "give a positive length"),
        ("abc", 1.0, "give a positive length"),
        ("1 parsec", 1.0, "give a positive length"),
        ("0.5mm", None, "the mesh was added without units"),
        ("20%", 1.0, "give at most 10 %"),
    ],
)
def test_surface_tolerance_refuses_what_it_cannot_use(text: str, metres_per_unit, detail: str) -> None:
    with pytest.raises(ConfigError, match=detail):
        surface_tolerance(text, metres_per_unit, diagonal=100.0)
