"""The layer contracts of ``.importlinter`` hold, and they do catch a forbidden import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file(), reason="import-linter is not installed")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_the_layer_contracts_hold() -> None:
    result = lint(REPOSITORY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].split("\n")[0].replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("service/compute.py", "import pipeline.training.config", "never each other"),
        ("pipeline/evaluation/bench.py", "import service.app", "never each other"),
        ("cloudpose/registration/refine.py", "import torch", "cloudpose never imports FastAPI"),
        ("cloudpose/io/clouds.py", "import fastapi", "cloudpose never imports FastAPI"),
        ("service/compute.py", "import torch", "The serving path (service/) never imports torch"),
        ("models/geometry.py", "import cloudpose.store.package", "models/ holds torch modules only"),
        ("cloudpose/geometry/symmetry.py", "import cloudpose.detection.detect", "The library's layers"),
        ("service/bodies.py", "import service.app", "No import circles"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    copy = tmp_path / "repo"
    for name in ("cloudpose", "service", "pipeline", "models"):
        shutil.copytree(REPOSITORY / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "web"))
    shutil.copy(REPOSITORY / ".importlinter", copy / ".importlinter")
    path = copy / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    result = lint(copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken
