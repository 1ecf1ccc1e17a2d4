"""The one multipart reader (service.forms) and the one pose-answer builder
(cloudpose.estimation.answers): every route refuses a body with the same status and detail, and
the HTTP answer and the in-process answer have the same keys in the same order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from cloudpose.estimator import ArgumentSettings, Estimator
from cloudpose.settings import Settings
from service.app import create_app
from service.errors import add_error_handlers
from service.forms import read_cloud_file, read_clouds, read_frame

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "objects"
EXAMPLE = SHIPPED / "bunny" / "example.json"
BROKEN = {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=zz"}}
NO_FILE = "multipart body has no file: upload the cloud in a field named 'file'"


@pytest.fixture(scope="module")
def readers() -> TestClient:
    """The readers alone, behind three routes that echo what they read."""
    settings = Settings(max_batch=3, max_body_bytes=10_000)
    app = FastAPI()
    add_error_handlers(app)

    @app.post("/clouds")
    async def clouds(request: Request, batch: bool = False) -> dict:
        body = await read_clouds(request, settings, batch)
        return {"json": body.json is not None, "files": [upload.filename for upload in body.uploads]}

    @app.post("/frame")
    async def frame(request: Request) -> dict:
        body = await read_frame(request, settings)
        return {"fields": [upload.field for upload in body.uploads], "texts": body.texts}

    @app.post("/file")
    async def file(request: Request) -> dict:
        upload = await read_cloud_file(request, settings)
        return {"name": upload.filename, "bytes": len(upload.data)}

    return TestClient(app)


@pytest.mark.parametrize("path", ["/clouds", "/frame", "/file"])
def test_a_broken_multipart_body_is_the_same_400_everywhere(readers: TestClient, path: str) -> None:
    response = readers.post(path, **BROKEN)
    assert response.status_code == 400
    assert response.json() == {"detail": "malformed multipart body"}


def test_pose_bodies(readers: TestClient) -> None:
    assert readers.post("/clouds", json={"points": []}).json() == {"json": True, "files": []}
    sent = [("files", (f"{index}.xyz", b"1 2 3\n")) for index in range(2)]
    assert readers.post("/clouds?batch=true", files=sent).json()["files"] == ["0.xyz", "1.xyz"]
    too_many = readers.post("/clouds?batch=true", files=sent * 2)
    assert too_many.status_code == 413
    assert too_many.json()["detail"] == "too many clouds: more files than limit 3"
    two = readers.post("/clouds", files=sent)
    assert (two.status_code, two.json()["detail"]) == (
        422,
        "send one file to /v1/pose, or several to /v1/pose/batch",
    )
    other = readers.post("/clouds", files={"cloud": ("a.xyz", b"1 2 3\n")})
    assert (other.status_code, other.json()["detail"]) == (422, NO_FILE)
    text = readers.post("/clouds", content=b"x", headers={"content-type": "text/plain"})
    assert text.status_code == 415


def test_frame_bodies(readers: TestClient) -> None:
    depth = readers.post(
        "/frame", files={"depth": ("d.png", b"png")}, data={"fx": "500", "previous": "[]"}
    ).json()
    assert depth == {"fields": ["depth"], "texts": {"fx": "500", "previous": "[]"}}
    both = readers.post("/frame", files=[("file", ("a.xyz", b"1")), ("depth", ("d.png", b"2"))])
    assert both.status_code == 422
    assert both.json()["detail"].startswith("send one frame: a cloud file in the multipart field 'file'")


def test_viewer_file_bodies(readers: TestClient) -> None:
    assert readers.post("/file", files={"file": ("a.xyz", b"1 2 3\n")}).json() == {
        "name": "a.xyz",
        "bytes": 6,
    }
    assert readers.post("/file", data={"file": "not a file"}, files={"x": ("a", b"")}).status_code == 422
    json_body = readers.post("/file", json={})
    assert (json_body.status_code, json_body.json()["detail"]) == (
        415,
        "send the cloud file as multipart/form-data in the field 'file'",
    )


@pytest.fixture(scope="module")
def service() -> Iterator[TestClient]:
    settings = ArgumentSettings(store=SHIPPED, hard_processes=False, watch_store_s=0)
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_service_and_the_estimator_answer_with_the_same_keys(service: TestClient) -> None:
    example = json.loads(EXAMPLE.read_text())
    remote = service.post("/v1/pose", json=example).json()
    local = Estimator.from_store(SHIPPED).pose(np.asarray(example["points"]), object="bunny").raw
    assert list(remote) == [*local, "request_id"]
    assert list(local)[-4:] == ["n_points", "object", "model_id", "server_time_ms"]
    batch = service.post("/v1/pose/batch", json={"clouds": [example]}).json()
    assert list(batch) == ["poses", "object", "model_id", "server_time_ms"]
    assert list(batch["poses"][0]) == list(local)[:-3]
