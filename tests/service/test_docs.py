"""``/docs`` and ``/redoc`` work offline: a headless Chromium whose network stops at the loopback
host renders both and finds the operations, and the documented JSON example is a real cloud
that answers 200, from httpx and from Swagger UI's "Try it out"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from cloudpose.estimation.inference import MIN_POINTS
from tests.service.test_uvicorn import serving_store
from tests.service.test_viewer import CHROMIUM, LOCAL_HOSTS, chromium, local_page

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
RENDER_TIMEOUT_MS = 20_000

browser_only = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="browser tests need Debian's chromium at /usr/bin/chromium (scripts/install.sh, as root)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path) -> Iterator[str]:
    with serving_store(shipped_store, tmp_path_factory.mktemp("docs")) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with chromium(tmp_path_factory.mktemp("chromium")) as context:
        yield context


def documented_example(document: dict, path: str) -> dict:
    return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]


def test_the_documented_examples_are_real_clouds_that_answer_200(server: str) -> None:
    document = httpx.get(f"{server}/openapi.json", timeout=10).json()
    shipped = np.asarray(json.loads((BUNNY / "example.json").read_text())["points"])
    example = documented_example(document, "/v1/pose")
    points = np.asarray(example["points"])
    assert points.shape[0] >= max(32, MIN_POINTS) and points.shape[1] == 3
    # Every point is one of the shipped example's: a real view of the object, not made-up numbers.
    assert all(np.isclose(shipped, point).all(axis=1).any() for point in points)
    for path in ("/v1/pose", "/v1/objects/bunny/pose"):
        body = documented_example(document, path.replace("bunny", "{name}"))
        response = httpx.post(f"{server}{path}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["found"] is True
    for path in ("/v1/pose/batch", "/v1/objects/bunny/pose/batch"):
        body = documented_example(document, path.replace("bunny", "{name}"))
        response = httpx.post(f"{server}{path}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert [pose["found"] for pose in response.json()["poses"]] == [True]


def test_the_docs_assets_are_served_by_the_service(server: str) -> None:
    for path in ("/docs", "/redoc"):
        page = httpx.get(f"{server}{path}", timeout=10)
        assert page.status_code == 200
        assert "cdn." not in page.text and "https://" not in page.text.split("<body")[0]


@browser_only
def test_swagger_ui_renders_offline_and_try_it_out_answers_200(server: str, browser) -> None:
    with local_page(browser) as page:
        page.goto(f"{server}/docs")
        page.wait_for_selector(".opblock", timeout=RENDER_TIMEOUT_MS)
        paths = page.locator(".opblock-summary-path").all_text_contents()
        assert {"/v1/pose", "/v1/pose/batch", "/v1/objects/{name}/pose", "/v1/detect"} <= {
            text.replace("\u200b", "") for text in paths
        }

        operation = page.locator("#operations-default-pose_v1_pose_post")
        operation.locator(".opblock-summary").click()
        operation.locator("button.try-out__btn").click()
        operation.locator("button.execute").click()
        status = operation.locator(".live-responses-table .response .response-col_status")
        status.wait_for(timeout=RENDER_TIMEOUT_MS)
        assert status.text_content().strip().startswith("200")
        assert {urlsplit(url).hostname for url in page.guard.requested} == LOCAL_HOSTS


@browser_only
def test_redoc_renders_offline(server: str, browser) -> None:
    with local_page(browser) as page:
        page.goto(f"{server}/redoc")
        page.wait_for_function(
            "document.body.innerText.includes('/v1/objects/{name}/pose')", timeout=RENDER_TIMEOUT_MS
        )
        text = page.inner_text("body")
        assert "/v1/objects/{name}/pose" in text and "/v1/detect" in text
        assert {urlsplit(url).hostname for url in page.guard.requested} == LOCAL_HOSTS
