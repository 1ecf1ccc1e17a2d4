"""The docs site builds in strict mode (no broken link or anchor, no docstring griffe cannot read),
with references generated from the service's OpenAPI document and the command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
GENERATED = ("openapi.json", "http.md", "cli.md")
MAIN_PAGES = (
    "index.html",
    "convention.html",
    "guides/own-object.html",
    "guides/frames-and-tracking.html",
    "guides/python.html",
    "guides/viewer.html",
    "guides/http-api.html",
    "guides/production.html",
    "guides/training.html",
    "reference/http.html",
    "reference/cli.html",
    "reference/python.html",
    "reference/openapi.json",
    "results/index.html",
    "results/real_scans.html",
    "results/real_scans_cross.html",
    "results/honesty.html",
    "results/real_frames.html",
    "architecture.html",
    "exam.html",
    "viewer.png",
)


def test_the_site_builds_strictly_with_its_references(tmp_path: Path) -> None:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    docs = tmp_path / "docs"
    shutil.copytree(REPOSITORY / "docs", docs, ignore=shutil.ignore_patterns(*GENERATED))
    subprocess.run(
        [sys.executable, str(REPOSITORY / "scripts" / "docs_reference.py"), "--out", str(docs / "reference")],
        check=True,
        cwd=REPOSITORY,
    )
    site = tmp_path / "site"
    # strict: any warning (a missing page, a broken anchor, an unreadable docstring) raises Abort.
    build(load_config(str(REPOSITORY / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(site), strict=True))

    missing = [page for page in MAIN_PAGES if not (site / page).is_file()]
    assert missing == []
    http = (site / "reference" / "http.html").read_text()
    assert "POST /v1/pose</code>" in http
    assert "POST /v1/detect</code>" in http
    assert "POST /v1/track</code>" in http
    cli = (site / "reference" / "cli.html").read_text()
    assert "cloudpose object add</code>" in cli
    assert "--surface-tolerance" in cli
    python = (site / "reference" / "python.html").read_text()
    assert 'id="cloudpose.Client.pose"' in python
    assert 'id="cloudpose.Estimator.from_store"' in python
