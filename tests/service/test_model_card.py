"""The model card: ``GET /v1/model`` and ``GET /v1/objects/NAME`` show the served figures (network
and refinement, from the package's recorded bench) and when they were measured, beside the
network's figures alone, each labelled; the figures are those the package records."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloudpose import wire
from cloudpose.settings import Settings
from service.app import create_app

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"


def by_set(rows: list[dict], method: str) -> dict[str, dict]:
    """A recorded bench's rows of one method, by set, without the method and set keys."""
    return {
        row["set"]: {key: value for key, value in row.items() if key not in ("method", "set")}
        for row in rows
        if row["method"] == method
    }


def described(store: Path, path: str = "/v1/model") -> dict:
    with TestClient(create_app(Settings(store=store))) as client:
        response = client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def package() -> dict:
    return json.loads((BUNNY / "object.json").read_text())


@pytest.fixture(scope="module")
def sidecar() -> dict:
    return json.loads((BUNNY / "model.json").read_text())


@pytest.fixture
def store_copy(tmp_path: Path) -> Path:
    """A store holding a copy of the shipped bunny package."""
    shutil.copytree(BUNNY, tmp_path / "store" / "bunny")
    return tmp_path / "store"


def test_model_card_shows_the_served_figures_beside_the_network_alone(
    package: dict, sidecar: dict, shipped_store: Path
) -> None:
    with TestClient(create_app(Settings(store=shipped_store))) as client:
        model = client.get("/v1/model").json()
        one = client.get("/v1/objects/bunny").json()
        listed = client.get("/v1/objects").json()
    wire.ModelDescription.model_validate(model)
    wire.ObjectDescription.model_validate(one)
    wire.ObjectList.model_validate(listed)
    card = model["metrics"]
    assert card == one["metrics"] == listed["objects"][0]["metrics"] == model["object"]["metrics"]

    served = card["served"]
    assert served["what"].startswith("network + refinement, as /v1/pose answers")
    assert served["measured"] == package["bench"]["measured"]
    assert served["command"] == package["bench"]["command"]
    assert served["seed"] == package["bench"]["seed"]
    assert served["sets"] == by_set(package["bench"]["rows"], "network+refine")
    assert set(served["sets"]) == {"shuffled", "resampled", "small", "noisy", "partial", "partial_noisy"}

    network = card["network_only"]
    assert "without refinement" in network["what"] and "not what /v1/pose answers" in network["what"]
    validation = dict(network["validation"])
    assert validation.pop("what") == "the network alone on its validation set, at the end of training"
    assert validation.pop("measured") is None  # training does not record when it validated
    assert validation == sidecar["training"]["validation"]
    assert network["bench"]["sets"] == by_set(package["bench"]["rows"], "network")
    assert network["bench"]["measured"] == package["bench"]["measured"]
    # The labels are not swapped: refinement is what takes the network's tens of degrees below one.
    for name, figures in served["sets"].items():
        assert figures["rotation_median_deg"] < 1.0 < network["bench"]["sets"][name]["rotation_median_deg"]
    assert validation["rotation_median_deg"] > 1.0


def test_openapi_documents_the_card(shipped_store: Path) -> None:
    with TestClient(create_app(Settings(store=shipped_store))) as client:
        document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path, model in (
        ("/v1/model", "ModelDescription"),
        ("/v1/objects/{name}", "ObjectDescription"),
        ("/v1/objects", "ObjectList"),
    ):
        schema = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}, path
    card = document["components"]["schemas"]["ModelCard"]
    assert set(card["required"]) == {"served", "network_only"}


def test_a_package_without_a_bench_says_how_to_measure_it(store_copy: Path, sidecar: dict) -> None:
    descriptor = store_copy / "bunny" / "object.json"
    meta = json.loads(descriptor.read_text())
    meta["bench"] = None
    descriptor.write_text(json.dumps(meta, indent=2))
    card = described(store_copy)["metrics"]
    served = card["served"]
    assert served["sets"] is None and served["measured"] is None and served["command"] is None
    assert served["note"] == "not measured yet: `cloudpose bench --object bunny --record` measures it"
    assert card["network_only"]["bench"] is None
    assert card["network_only"]["validation"]["count"] == sidecar["training"]["validation"]["count"]


def test_a_recorded_bench_carries_when_it_was_measured(store_copy: Path) -> None:
    from cloudpose.store.package import ObjectStore
    from pipeline.evaluation.bench_cli import bench_object
    from pipeline.objects.adding import record_bench

    store = ObjectStore(store_copy)
    results = bench_object(
        store.get("bunny"),
        count=2,
        seed=3,
        set_names=("shuffled",),
        method_names=("network", "network+refine"),
    )
    before = time.strftime(ISO_UTC, time.gmtime())
    record_bench(
        store, "bunny", results, "cloudpose bench --object bunny --count 2 --sets shuffled --record", 3
    )
    after = time.strftime(ISO_UTC, time.gmtime())

    meta = json.loads((store_copy / "bunny" / "object.json").read_text())
    measured = meta["bench"]["measured"]
    assert before <= measured <= after  # ISO 8601 in UTC sorts as time does
    assert f"seed 3, measured {measured}):" in (store_copy / "bunny" / "PROVENANCE.md").read_text()

    card = described(store_copy, "/v1/objects/bunny")["metrics"]
    assert card["served"]["measured"] == card["network_only"]["bench"]["measured"] == measured
    assert card["served"]["command"] == "cloudpose bench --object bunny --count 2 --sets shuffled --record"
    assert card["served"]["sets"] == by_set(meta["bench"]["rows"], "network+refine")
    assert set(card["served"]["sets"]) == {"shuffled"}
    assert card["served"]["sets"]["shuffled"]["count"] == 2
    assert card["network_only"]["bench"]["sets"] == by_set(meta["bench"]["rows"], "network")


def test_an_exam_setting_model_is_served_by_its_network_alone(exported_model) -> None:
    sidecar = json.loads(exported_model.model_path.with_suffix(".json").read_text())
    with TestClient(create_app(Settings(model_path=exported_model.model_path))) as client:
        model = client.get("/v1/model").json()
    wire.ModelDescription.model_validate(model)
    served = model["metrics"]["served"]
    assert served["what"] == "the network alone, as /v1/pose answers: an exam-setting model is not refined"
    assert served["sets"] is None
    validation = {
        key: value for key, value in served["validation"].items() if key not in ("what", "measured")
    }
    assert validation == sidecar["training"]["validation"]
    assert model["metrics"]["network_only"]["validation"] == served["validation"]


def test_a_package_without_a_network_names_its_rows_for_the_search(tmp_path: Path) -> None:
    import trimesh

    from cloudpose.store.package import ObjectStore
    from pipeline.evaluation.bench_cli import bench_object
    from pipeline.objects.adding import add_object
    from pipeline.training.config import ConfigError

    mesh_path = tmp_path / "block.stl"
    trimesh.creation.box(extents=(40.0, 30.0, 20.0)).export(mesh_path)
    store = ObjectStore(tmp_path / "store")
    added = add_object(
        "block", mesh_path, store=store, units="mm", train=False, bench_count=1, runs_dir=tmp_path / "runs"
    )
    meta = added.package.meta
    assert {row["method"] for row in meta["bench"]["rows"]} == {"search+refine"}  # no network ran
    assert meta["bench"]["command"] == "cloudpose bench --object block --count 1 --methods search+refine"
    assert "| search+refine | shuffled |" in (added.package.path / "PROVENANCE.md").read_text()
    card = described(store.root, "/v1/objects/block")["metrics"]
    assert card["served"]["what"].startswith("registration search alone (the object has no network)")
    assert "method search+refine" in card["served"]["what"]
    assert card["served"]["sets"] == by_set(meta["bench"]["rows"], "search+refine")

    # `cloudpose bench --object` with its default methods: each row names what ran.
    results = bench_object(
        store.get("block"), count=1, set_names=("shuffled",), method_names=("network", "network+refine")
    )
    assert [row["method"] for row in results.rows()] == ["principal_axes", "search+refine"]
    same = bench_object(store.get("block"), count=1, set_names=("shuffled",), method_names=("search+refine",))
    assert [row["method"] for row in same.rows()] == ["search+refine"]
    with pytest.raises(ConfigError, match="has a network: its methods are network and network\\+refine"):
        bench_object(
            ObjectStore(BUNNY.parent).get("bunny"),
            count=1,
            set_names=("shuffled",),
            method_names=("search+refine",),
        )

    # A package benched before the rows were named for what ran still shows its figures.
    legacy = [{**row, "method": "network+refine"} for row in meta["bench"]["rows"]]
    descriptor = store.root / "block" / "object.json"
    old = json.loads(descriptor.read_text())
    old["bench"]["rows"] = legacy
    descriptor.write_text(json.dumps(old))
    card = described(store.root, "/v1/objects/block")["metrics"]
    assert card["served"]["sets"] == by_set(legacy, "network+refine")
