"""What the benchmark scripts' tests share: the real data's place, and a script loaded as a module."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL = REPO_ROOT.parent / "shared" / "real"


@contextmanager
def loaded_script(name: str) -> Iterator[ModuleType]:
    """``benchmarks/NAME.py`` as a module, registered while in use (its dataclasses look their
    module up in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def markdown_table(markdown: str, title_start: str) -> list[list[str]]:
    """The body rows of the markdown table under the heading that starts with ``title_start``."""
    section = markdown.split(f"## {title_start}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def number(cell: str) -> float:
    """A table cell's number; the cell must be one."""
    assert re.fullmatch(r"-?\d+(\.\d+)?", cell), cell
    return float(cell)
