"""Every ``cloudpose`` command under the serving install alone (what ``make serve`` installs).

The serving install is real: a fresh virtual environment with ``pip install -e .[serve]``, so
torch, onnx, matplotlib and scikit-learn are missing exactly as after ``make serve``. From pip's
cache it takes about a minute, which the CI budget affords; blocking imports inside the full
environment instead would be cheaper, but would miss what the serving install really lacks or
brings (a module that only the training extras pull in by chance, say).

Each command must work (exit 0) or end with one ``error:`` line that names the install script
and exit 1, never with a traceback. The commands are enumerated from the typer app, so a new
command without an invocation here fails the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main

from pipeline.cli.app import app
from tests.service.test_uvicorn import free_port, running_server

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = REPO_ROOT / "data" / "objects" / "bunny" / "example.xyz"
MESH = REPO_ROOT / "data" / "bunny.ply"
TRAINING_MODULES = ("torch", "onnx", "onnxscript", "matplotlib", "sklearn")

# Per command: the invocations to run, in order, in a scratch folder outside the repository
# ("{run}" is a folder there). A command that does work gets arguments that make it work.
INVOCATIONS: dict[str, list[list[str]]] = {
    "train": [["train", "--steps", "5", "--out-dir", "{run}"]],
    "export": [["export", "{run}"]],
    "eval": [["eval", "--count", "3"]],
    "synth": [["synth", "--out", "set.npz", "--count", "2", "--n-points", "16"]],
    "serve": [],  # started and asked for /health: see test_serve_runs_with_the_serving_install
    "predict": [["predict", str(EXAMPLE), "--out", "aligned.ply", "--render", "fit.png"]],
    "detect": [["detect", str(EXAMPLE), "--units", "m", "--max-instances", "1"]],
    "prune": [["prune", "{run}", "--sparsity", "0.5", "--finetune-steps", "1", "--count", "5"]],
    "bench": [["bench", "--count", "1", "--sets", "small", "--out", "bench"]],
    "exam": [["exam"]],
    "object add": [
        ["object", "add", "trained", str(MESH), "--store", "store", "--train", "--time-budget-s", "1"],
        ["object", "add", "searched", str(MESH), "--no-train", "--bench-count", "1", "--store", "store"],
    ],
    "object list": [["object", "list"]],
    "object show": [["object", "show", "bunny"]],
    "object remove": [
        ["object", "add", "removed", str(MESH), "--no-train", "--bench-count", "0", "--store", "store"],
        ["object", "remove", "removed", "--store", "store"],
    ],
    "scene make": [["scene", "make", "frames", "--scale", "0.25"]],
    "lenet train": [["lenet", "train", "--limit", "20", "--epochs", "1", "--out", "lenet"]],
    "plot elu": [["plot", "elu", "--out", "elu.png"]],
}


def command_paths(command, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every leaf command of a click group, as ``"object add"``."""
    if hasattr(command, "commands"):
        return [
            path for name, sub in command.commands.items() for path in command_paths(sub, (*prefix, name))
        ]
    return [" ".join(prefix)]


@pytest.fixture(scope="module")
def serve_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding cloudpose with the serving extras only; its bin folder."""
    root = tmp_path_factory.mktemp("serve_only")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    installed = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            f"{REPO_ROOT}[serve]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    print(f"\nserving install in {time.perf_counter() - started:.0f} s")
    missing = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print([m for m in "
            + repr(TRAINING_MODULES)
            + " if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert missing.stdout.strip() == "[]", f"the serving install brings training modules: {missing.stdout}"
    return python.parent


def run_cloudpose(bin_dir: Path, arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "cloudpose"), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), "COLUMNS": "200"},
    )


def test_every_command_has_an_invocation() -> None:
    assert sorted(command_paths(typer.main.get_command(app))) == sorted(INVOCATIONS)


@pytest.mark.parametrize("path", sorted(name for name, runs in INVOCATIONS.items() if runs))
def test_command_works_or_names_the_install(path: str, serve_only: Path, tmp_path: Path) -> None:
    for arguments in INVOCATIONS[path]:
        arguments = [argument.format(run=tmp_path / "run") for argument in arguments]
        result = run_cloudpose(serve_only, arguments, tmp_path)
        command = "cloudpose " + " ".join(arguments)
        shown = f"{command}\nstdout: {result.stdout[-1500:]}\nstderr: {result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr + result.stdout, shown
        if result.returncode == 0:
            continue
        assert result.returncode == 1, shown
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], shown
        assert f"error: cloudpose {path} " in errors[0] and "install.sh" in errors[0], shown


def test_what_the_serving_install_does_and_does_not_do(serve_only: Path, tmp_path: Path) -> None:
    """The commands a served install needs work; training says what to install, first thing."""
    predicted = run_cloudpose(serve_only, ["predict", str(EXAMPLE), "--render", "fit.png"], tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trained = run_cloudpose(serve_only, ["train", "--steps", "5", "--out-dir", "run"], tmp_path)
    assert trained.returncode == 1 and trained.stdout == ""
    assert trained.stderr.strip().splitlines() == [
        f"error: cloudpose train needs the training extras (torch is not installed): run "
        f"{REPO_ROOT / 'scripts' / 'install.sh'} train (it adds the CPU build of torch, onnx, matplotlib "
        "and scikit-learn to .venv)"
    ]
    plotted = run_cloudpose(serve_only, ["plot", "elu"], tmp_path)
    assert plotted.returncode == 1 and plotted.stderr.startswith(
        "error: cloudpose plot elu needs the training"
    )
    adding = ["object", "add", "x", str(MESH), "--store", "store", "--train"]
    added = run_cloudpose(serve_only, adding, tmp_path)
    assert added.returncode == 1 and "or add without --train" in added.stderr
    assert not (tmp_path / "store").exists()  # refused before any work


def test_the_serving_install_detects_the_bunny_in_its_example_frame(serve_only: Path, tmp_path: Path) -> None:
    """What the README shows a new user works with ``make serve``'s install alone: its objects'
    resting poses (trimesh's stable poses, which need networkx) start the frame's search."""
    frame = REPO_ROOT / "data" / "objects" / "bunny" / "example_frame.npy"
    result = run_cloudpose(serve_only, ["detect", str(frame), "--units", "m"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    detections = json.loads(result.stdout)["detections"]
    assert [(item["object"], item["confident"]) for item in detections] == [("bunny", True)]


def test_serve_runs_with_the_serving_install(serve_only: Path, tmp_path: Path) -> None:
    port = free_port()
    command = [str(serve_only / "cloudpose"), "serve", "--port", str(port)]
    with running_server(command, port, tmp_path / "serve.log") as base_url:
        assert base_url.endswith(str(port))
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_the_install_script_named_in_the_message_exists() -> None:
    assert shutil.which(str(REPO_ROOT / "scripts" / "install.sh"))
