"""What the benchmark scripts' tests share: the real data's place, and a script loaded as a module."""

from __future__ import annotations

import importlib.util
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
