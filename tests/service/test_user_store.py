"""The user's store: objects added without ``--store`` go to ``CLOUDPOSE_STORE`` (else the user's
data folder), never into the repository; the commands and the service use the shipped objects and
the user's together, a shipped object is read-only, ``--store DIR`` is used alone, and a running
service picks up added and removed packages by itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from cloudpose.store.package import (
    SHIPPED_STORE,
    LayeredStore,
    ObjectStore,
    StoreError,
    open_store,
    user_store_path,
)
from pipeline.cli.app import SERVING_HINT
from tests.service.test_uvicorn import cloudpose_command, free_port, running_server

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNNY = SHIPPED_STORE / "bunny"
# How long a running service may take to see a change of its store (it looks every 0.2 s here).
PICK_UP_S = 30.0
# The user's objects of these tests, named unlike anything a user may have put in data/objects.
MINE = "test-user-bracket"


def served_with(*names: str) -> list[str]:
    """What the commands and the service see by default: the shipped objects (whatever
    data/objects holds) and the user's."""
    return sorted({*ObjectStore(SHIPPED_STORE).names(), *names})


def cloudpose(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cloudpose_command(), *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="module")
def box_mesh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("meshes") / "bracket.stl"
    trimesh.creation.box(extents=(40.0, 30.0, 20.0)).export(path)
    return path


def test_the_shipped_objects_and_the_users_are_one_store(
    tmp_path: Path, shipped_store: Path, copy_package
) -> None:
    user = tmp_path / "mine"
    store = LayeredStore(user, shipped=shipped_store)
    assert store.names() == ["bunny"] and store.is_shipped("bunny")
    assert store.get("bunny").path == shipped_store / "bunny"

    copy_package(BUNNY, user, "rabbit")
    assert store.names() == ["bunny", "rabbit"] and not store.is_shipped("rabbit")
    assert store.get("rabbit").path == user / "rabbit"
    with pytest.raises(StoreError) as refused:
        store.remove("bunny")
    assert str(refused.value) == (
        f"object 'bunny' ships with cloudpose ({shipped_store}) and cannot be removed; "
        f"your objects are in {user}"
    )
    with pytest.raises(StoreError) as refused:
        store.write("bunny", {}, {})
    assert str(refused.value) == (
        f"object 'bunny' ships with cloudpose ({shipped_store}) and is read-only: add yours under "
        "another name, or name a store of your own with --store DIR"
    )
    assert (shipped_store / "bunny" / "object.json").is_file()
    store.remove("rabbit")
    assert store.names() == ["bunny"] and not (user / "rabbit").exists()

    # A user package of a shipped name (copied in by hand) shadows the shipped one.
    copy_package(BUNNY, user, "bunny")
    assert store.get("bunny").path == user / "bunny" and not store.is_shipped("bunny")
    store.remove("bunny")
    assert store.get("bunny").path == shipped_store / "bunny"


def test_where_the_users_store_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDPOSE_STORE", str(tmp_path / "mine"))
    assert user_store_path() == tmp_path / "mine"
    opened = open_store()
    assert isinstance(opened, LayeredStore) and opened.root == tmp_path / "mine"
    assert opened.shipped.root == SHIPPED_STORE
    assert type(open_store(tmp_path / "alone")) is ObjectStore
    monkeypatch.delenv("CLOUDPOSE_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_store_path() == tmp_path / "data" / "cloudpose" / "objects"


def test_the_signature_changes_with_every_package_written_or_removed(tmp_path: Path, copy_package) -> None:
    store = ObjectStore(tmp_path / "store")
    empty = store.signature()
    assert store.signature() == empty  # looking changes nothing
    copy_package(BUNNY, tmp_path, "staged")
    added = store.write("rabbit", *package_parts(tmp_path / "staged"))
    assert store.signature() != empty
    before = store.signature()
    store.write("rabbit", *package_parts(added.path))  # the same bytes, renamed into place anew
    assert store.signature() != before
    store.remove("rabbit")
    assert store.signature() == empty


def package_parts(path: Path) -> tuple[dict, dict[str, bytes]]:
    meta = json.loads((path / "object.json").read_text())
    files = {entry.name: entry.read_bytes() for entry in path.iterdir() if entry.name != "object.json"}
    return {key: value for key, value in meta.items() if key not in ("format", "name")}, files


def test_object_commands_work_on_the_users_store(tmp_path: Path, box_mesh: Path) -> None:
    mine = tmp_path / "mine"
    env = {"CLOUDPOSE_STORE": str(mine)}
    added = cloudpose(
        "object", "add", MINE, str(box_mesh), "--units", "mm", "--no-train", "--bench-count", "0",
        "--runs-dir", str(tmp_path / "runs"), env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["package"] == str(mine / MINE)
    assert added.stderr.strip().splitlines()[-1] == SERVING_HINT
    assert not (SHIPPED_STORE / MINE).exists()

    listed = cloudpose("object", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert sorted(lines) == served_with(MINE)
    assert not lines[MINE].endswith("[shipped]") and lines["bunny"].endswith("  [shipped]")
    shown = cloudpose("object", "show", "bunny", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "bunny"

    removed = cloudpose("object", "remove", "bunny", env=env)
    assert removed.returncode == 1
    assert removed.stderr.strip() == (
        f"error: object 'bunny' ships with cloudpose ({SHIPPED_STORE}) and cannot be removed; "
        f"your objects are in {mine}"
    )
    again = cloudpose(
        "object", "add", "bunny", str(box_mesh), "--no-train", "--bench-count", "0",
        "--runs-dir", str(tmp_path / "runs"), env=env,
    )  # fmt: skip
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.strip().startswith("error: object 'bunny' ships with cloudpose")
    assert cloudpose("object", "remove", MINE, env=env).returncode == 0
    assert ObjectStore(mine).names() == []


def objects_served(url: str) -> list[str]:
    return httpx.get(f"{url}/health", timeout=10).json()["objects"]


def wait_for(url: str, expected: list[str], log_path: Path) -> None:
    deadline = time.monotonic() + PICK_UP_S
    while objects_served(url) != expected:
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """``cloudpose serve`` of the shipped objects and an empty user store, looking at the stores
    every 0.2 s: its URL, its log and the environment that names the user's store."""
    env = {
        "CLOUDPOSE_STORE": str(tmp_path / "mine"),
        "CLOUDPOSE_WATCH_STORE_S": "0.2",
        "CLOUDPOSE_HARD_PROCESSES": "false",
    }
    port = free_port()
    log_path = tmp_path / "server.log"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with running_server([*cloudpose_command(), "serve", "--port", str(port)], port, log_path) as url:
            yield url, log_path, env


def test_a_running_service_picks_up_added_and_removed_objects(
    served: tuple[str, Path, dict[str, str]], box_mesh: Path, tmp_path: Path
) -> None:
    url, log_path, env = served
    assert objects_served(url) == served_with()
    added = cloudpose(
        "object", "add", MINE, str(box_mesh), "--units", "mm", "--no-train", "--bench-count", "0",
        "--runs-dir", str(tmp_path / "runs"), env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    wait_for(url, served_with(MINE), log_path)
    mesh = trimesh.load(box_mesh, force="mesh")
    points, _ = trimesh.sample.sample_surface(mesh, 1500, seed=3)
    observed = points @ Rotation.random(random_state=4).as_matrix() + [100.0, -40.0, 250.0]
    answer = httpx.post(f"{url}/v1/objects/{MINE}/pose", json={"points": observed.tolist()}, timeout=60)
    assert answer.status_code == 200 and answer.json()["found"] is True, answer.text

    # A broken package is refused, once, and the objects before it keep serving.
    mine = Path(env["CLOUDPOSE_STORE"])
    staged = mine / ".broken.new"
    shutil.copytree(mine / MINE, staged)
    (staged / "object.json").write_text(
        json.dumps({**json.loads((staged / "object.json").read_text()), "name": "broken"})
    )
    surface = staged / "surface.npy"
    surface.write_bytes(surface.read_bytes()[:-8] + bytes(8))  # no longer its recorded hash
    os.replace(staged, mine / "broken")  # whole, as packages are written
    deadline = time.monotonic() + PICK_UP_S
    while "reload refused" not in log_path.read_text():
        assert time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)  # five more looks at the unchanged store: refused once, not at every look
    assert log_path.read_text().count("reload refused") == 1
    assert objects_served(url) == served_with(MINE)
    retired = mine / ".broken.old"
    os.replace(mine / "broken", retired)
    shutil.rmtree(retired)

    removed = cloudpose("object", "remove", MINE, env=env)
    assert removed.returncode == 0, removed.stderr
    wait_for(url, served_with(), log_path)


def test_serve_with_a_store_serves_that_store_alone(
    tmp_path: Path, shipped_store: Path, copy_package, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    copy_package(BUNNY, mine, "rabbit")
    monkeypatch.setenv("CLOUDPOSE_STORE", str(mine))
    monkeypatch.setenv("CLOUDPOSE_HARD_PROCESSES", "false")
    port = free_port()
    command = [*cloudpose_command(), "serve", "--port", str(port), "--store", str(shipped_store)]
    with running_server(command, port, tmp_path / "alone.log") as url:
        assert objects_served(url) == ["bunny"]
    port = free_port()
    command = [*cloudpose_command(), "serve", "--port", str(port)]
    with running_server(command, port, tmp_path / "both.log") as url:
        assert objects_served(url) == served_with("rabbit")
        # An object of the user's store answers like any other.
        example = json.loads((BUNNY / "example.json").read_text())
        answer = httpx.post(f"{url}/v1/objects/rabbit/pose", json={"points": example["points"]}, timeout=60)
        assert answer.status_code == 200 and answer.json()["found"] is True, answer.text
