"""Schemathesis against the service's own OpenAPI document, on a real uvicorn (bounded count).

``benchmarks/fuzz_api.py`` is the larger run; this one keeps CI short.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 12

pytestmark = pytest.mark.skipif(
    not (Path(sys.executable).parent / "st").exists() and shutil.which("st") is None,
    reason="schemathesis is a dev dependency",
)


def fuzz_module() -> ModuleType:
    path = REPO_ROOT / "benchmarks" / "fuzz_api.py"
    spec = importlib.util.spec_from_file_location("fuzz_api", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("api_key", [None, "fuzz-test-key"], ids=["open", "with-keys"])
def test_schemathesis_finds_no_server_error(api_key: str | None, shipped_store: Path) -> None:
    fuzz = fuzz_module()
    result, tracebacks = fuzz.run(EXAMPLES, seed=0, api_key=api_key, store=shipped_store)
    assert result.requests >= 200, fuzz.format_table(result)
    assert result.server_errors == 0, fuzz.format_table(result)
    assert result.returncode == 0, result.output[-4000:]
    assert tracebacks == 0
    assert set(result.post_routes) >= {"/v1/pose", "/v1/pose/batch", "/v1/objects/{name}/pose"}
    assert result.post_routes_without_200() == []
