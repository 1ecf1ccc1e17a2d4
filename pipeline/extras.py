"""Which optional install a command needs, and the one line that says so when it is missing.

``make serve`` installs only the serving extras (onnxruntime, open3d, FastAPI); training,
export, the exam and the plots need the training extras (torch, onnx, matplotlib,
scikit-learn). A command that imports a missing package ends with one line naming the install
that brings it, never a traceback. The check lives in :class:`ExtrasGroup`, the command group
class of every ``cloudpose`` (sub)command group, so a new command is covered without a line
of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

REPOSITORY = Path(__file__).resolve().parents[1]
# Import names (not distribution names) of each extra of pyproject.toml.
TRAINING_MODULES = frozenset({"torch", "onnx", "onnxscript", "matplotlib", "sklearn"})
SERVING_MODULES = frozenset(
    {
        "onnxruntime",
        "fastapi",
        "uvicorn",
        "pydantic_settings",
        "multipart",
        "python_multipart",
        "orjson",
        "open3d",
        "small_gicp",
        "scipy",
        "pypcd4",
        "plyfile",
        "prometheus_fastapi_instrumentator",
        "pythonjsonlogger",
        "PIL",
    }
)
# cloudpose's own packages: a missing module among them is a bug, not a missing install.
OWN_PACKAGES = frozenset({"pipeline", "models", "service", "cloudpose"})


def install_script() -> str:
    """How to call the install script: relative from the repository root, absolute elsewhere."""
    script = REPOSITORY / "scripts" / "install.sh"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def missing_extra_message(error: ModuleNotFoundError, command: str) -> str | None:
    """The line that tells which install ``command`` needs for the module ``error`` names, or
    None when the module is one of cloudpose's own (a bug, to be shown as it is)."""
    name = error.name
    if name is None:  # some libraries re-raise the error with its message only
        found = re.search(r"No module named '([^']+)'", str(error))
        name = found.group(1) if found else ""
    top = name.split(".")[0]
    if not top or top in OWN_PACKAGES:
        return None
    script = install_script()
    if top in TRAINING_MODULES:
        return (
            f"error: {command} needs the training extras ({top} is not installed): run {script} train "
            "(it adds the CPU build of torch, onnx, matplotlib and scikit-learn to .venv)"
        )
    if top in SERVING_MODULES:
        return f"error: {command} needs the serving extras ({top} is not installed): run {script} serve"
    return f"error: {command} needs the Python package {top!r}, which is not installed: run {script} all"


class ExtrasGroup(TyperGroup):
    """A typer command group whose commands end with one line, not a traceback, when they import
    a package of an extra that is not installed."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as error:
            words = ctx.command_path.split()[1:]
            if ctx.invoked_subcommand:
                words.append(ctx.invoked_subcommand)
            message = missing_extra_message(error, " ".join(["cloudpose", *words]))
            if message is None:
                raise
            typer.echo(message, err=True)
            raise typer.Exit(1) from None
