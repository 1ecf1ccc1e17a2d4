"""Operating the service: keys, request ids, metrics, reload, budgets, a full pool, slow and idle
clients, and an honest OpenAPI document. Each server is a real ``cloudpose serve`` on a free
loopback port, configured through its environment as an operator would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.test_uvicorn import cloudpose_command, free_port, running_server

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
KEYS = ("first-key", "second-key")


@dataclass
class Served:
    url: str
    log_path: Path
    store: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def example() -> dict:
    return json.loads((BUNNY / "example.json").read_text())


def start(tmp_path: Path, environment: dict[str, str], shipped: Path) -> Iterator[Served]:
    """A server of a copy of the ``shipped`` objects with these settings; the test process's own
    environment is left as it was."""
    store = tmp_path / "objects"
    shutil.copytree(shipped, store, ignore=shutil.ignore_patterns("*.md"))
    port = free_port()
    log_path = tmp_path / "server.log"
    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            command = [*cloudpose_command(), "serve", "--port", str(port), "--store", str(store)]
            url = stack.enter_context(running_server(command, port, log_path))
        yield Served(url, log_path, store, port)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path) -> Iterator[Served]:
    """API keys, short body and header deadlines, room for few connections."""
    yield from start(
        tmp_path_factory.mktemp("guarded"),
        {
            "CLOUDPOSE_API_KEYS": ",".join(KEYS),
            "CLOUDPOSE_BODY_TIMEOUT_S": "1",
            "CLOUDPOSE_HEADER_TIMEOUT_S": "1",
            "CLOUDPOSE_MAX_CONNECTIONS": "64",
        },
        shipped_store,
    )


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path) -> Iterator[Served]:
    """One pose worker, no queue, a 20 ms budget per cloud."""
    yield from start(
        tmp_path_factory.mktemp("narrow"),
        {"CLOUDPOSE_POOL_THREADS": "1", "CLOUDPOSE_QUEUE_LIMIT": "0", "CLOUDPOSE_POSE_BUDGET_MS": "20"},
        shipped_store,
    )


def key(index: int = 0) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[index]}"}


def test_health_and_ready_need_no_key(guarded: Served) -> None:
    assert httpx.get(f"{guarded.url}/health").json()["objects"] == ["bunny"]
    wait_ready(guarded)
    ready = httpx.get(f"{guarded.url}/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_routes_need_a_valid_key(guarded: Served, example: dict) -> None:
    body = {"points": example["points"]}
    missing = httpx.post(f"{guarded.url}/v1/pose", json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json() == {
        "detail": "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key'"
    }
    assert httpx.post(f"{guarded.url}/v1/pose", json=body, headers={"X-API-Key": "nope"}).status_code == 401
    assert httpx.get(f"{guarded.url}/v1/objects").status_code == 401
    assert httpx.get(f"{guarded.url}/metrics").status_code == 401
    # A wrong Authorization beside a right X-API-Key is still refused.
    mixed = {"Authorization": "Bearer nope", "X-API-Key": KEYS[0]}
    assert httpx.post(f"{guarded.url}/v1/pose", json=body, headers=mixed).status_code == 401
    assert httpx.post(f"{guarded.url}/v1/pose", json=body, headers=key(1)).json()["found"] is True
    assert httpx.post(f"{guarded.url}/v1/pose", json=body, headers={"X-API-Key": KEYS[0]}).status_code == 200


def test_model_description_hides_library_versions(guarded: Served) -> None:
    description = httpx.get(f"{guarded.url}/v1/model", headers=key()).json()
    assert description["model_id"].startswith("bunny-")
    assert "versions" not in description


def test_request_id_is_echoed_or_made(guarded: Served) -> None:
    given = httpx.get(f"{guarded.url}/health", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = httpx.get(f"{guarded.url}/health", headers={"X-Request-ID": "not a token!"})
    assert made.headers["x-request-id"] != "not a token!"
    assert len(made.headers["x-request-id"]) == 32
    lines = [json.loads(line) for line in guarded.log().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line.get("request_id") == "trace-42"]
    assert logged and logged[0]["path"] == "/health" and logged[0]["status"] == 200


def test_metrics_count_requests_and_poses(guarded: Served, example: dict) -> None:
    httpx.post(f"{guarded.url}/v1/pose", json={"points": example["points"]}, headers=key())
    text = httpx.get(f"{guarded.url}/metrics", headers=key()).text
    assert 'http_requests_total{handler="/v1/pose",method="POST",status="2xx"}' in text
    assert 'cloudpose_answers_total{found="true",object="bunny"}' in text
    assert "cloudpose_pose_seconds_bucket" in text and "cloudpose_hypotheses_bucket" in text
    assert "cloudpose_queue_depth" in text
    assert 'cloudpose_model{model_id="bunny-pointnet' in text


def test_reload_swaps_verified_packages_and_refuses_broken_ones(guarded: Served, example: dict) -> None:
    body = {"points": example["points"]}
    reloaded = httpx.post(f"{guarded.url}/v1/admin/reload", headers=key())
    assert reloaded.status_code == 200
    model_id = reloaded.json()["objects"]["bunny"]
    model_path = guarded.store / "bunny" / "model.onnx"
    original = model_path.read_bytes()
    try:
        model_path.write_bytes(original[:-100] + bytes(100))  # same size, other bytes
        refused = httpx.post(f"{guarded.url}/v1/admin/reload", headers=key())
        assert refused.status_code == 409
        assert refused.json()["detail"].startswith("reload refused, still serving the previous objects:")
        answer = httpx.post(f"{guarded.url}/v1/pose", json=body, headers=key()).json()
        assert answer["found"] is True and answer["model_id"] == model_id
        assert "reload refused" in guarded.log()
    finally:
        model_path.write_bytes(original)
    assert httpx.post(f"{guarded.url}/v1/admin/reload", headers=key()).status_code == 200


def test_reload_needs_keys_configured(narrow: Served) -> None:
    refused = httpx.post(f"{narrow.url}/v1/admin/reload")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "admin routes are off: start the service with CLOUDPOSE_API_KEYS set"}


def test_sighup_reloads_in_place(narrow: Served) -> None:
    pid = int(httpx.get(f"{narrow.url}/health").status_code and _server_pid(narrow.port))
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reloaded the object store" not in narrow.log():
        assert time.monotonic() < deadline, narrow.log()[-2000:]
        time.sleep(0.1)
    assert httpx.get(f"{narrow.url}/health").status_code == 200


def _server_pid(port: int) -> int:
    """The pid listening on ``port`` (from /proc: the socket's inode, then its owner)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":  # LISTEN
            inodes.add(fields[9])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            return int(entry.name)
    raise AssertionError(f"no process listens on {port}")


def hard_clouds(count: int) -> list[list[list[float]]]:
    """Spheres: no pose of the bunny fits them, so their search widens until its budget ends."""
    rng = np.random.default_rng(0)
    clouds = []
    for _ in range(count):
        points = rng.normal(size=(600, 3))
        clouds.append((points / np.linalg.norm(points, axis=1, keepdims=True) * 6.0).tolist())
    return clouds


def test_budget_ends_the_search_and_says_so(narrow: Served, example: dict) -> None:
    (sphere,) = hard_clouds(1)
    answer = httpx.post(f"{narrow.url}/v1/pose", json={"points": sphere}, timeout=30).json()
    assert answer["found"] is False
    assert "the compute budget (20 ms) ran out before the search ended" in answer["warnings"]
    easy = httpx.post(f"{narrow.url}/v1/pose", json={"points": example["points"]}, timeout=30).json()
    assert easy["found"] is True  # an easy cloud is answered well inside 20 ms


def test_full_pool_answers_503_and_ready_says_busy(narrow: Served, example: dict) -> None:
    wait_ready(narrow)
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(
            httpx.post,
            f"{narrow.url}/v1/pose/batch",
            json={"clouds": [{"points": c} for c in hard_clouds(64)]},
            timeout=120,
        )
        deadline = time.monotonic() + 30
        while httpx.get(f"{narrow.url}/ready").status_code != 503:
            assert time.monotonic() < deadline and not batch.done(), "the pool never filled"
            time.sleep(0.005)
        busy = httpx.post(f"{narrow.url}/v1/pose", json={"points": example["points"]})
        assert httpx.get(f"{narrow.url}/health").status_code == 200  # liveness never waits
        answers = batch.result().json()["poses"]
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["detail"].startswith("busy: ")
    assert len(answers) == 64 and not any(answer["found"] for answer in answers)
    assert httpx.get(f"{narrow.url}/ready").status_code == 200


def test_slow_body_gets_408_within_the_deadline(guarded: Served) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(
            b"POST /v1/pose HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer first-key\r\nContent-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        sock.settimeout(10)
        reply = b""
        while chunk := sock.recv(4096):  # until the server closes the connection
            reply += chunk
        waited = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert reply.endswith(b'{"detail":"the request body did not arrive within 1 s"}')
        assert 0.8 < waited < 3


def test_slow_headers_are_cut_off(guarded: Served) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(4096) == b""
        assert time.monotonic() - started < 3


def test_idle_connections_make_room_for_new_clients(guarded: Served) -> None:
    idle = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(300)]
    try:
        time.sleep(0.2)
        health = httpx.get(f"{guarded.url}/health", timeout=5)
        assert health.status_code == 200
    finally:
        for sock in idle:
            sock.close()
    assert "Traceback" not in guarded.log()


def test_client_going_away_is_one_log_line(guarded: Served) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(
            b"POST /v1/pose HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'X-Request-ID: leaving-early\r\nX-API-Key: first-key\r\nContent-Length: 5000\r\n\r\n{"points"'
        )
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while "leaving-early" not in guarded.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lines = [line for line in guarded.log().splitlines() if "leaving-early" in line]
    assert len(lines) == 1 and json.loads(lines[0])["outcome"] == "client disconnected"
    assert "Traceback" not in guarded.log()


def test_validation_errors_are_one_sentence(narrow: Served, example: dict) -> None:
    response = httpx.post(f"{narrow.url}/v1/pose?refine=perhaps", json={"points": example["points"]})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "invalid request parameters: query.refine: Input should be a valid boolean, unable to "
        "interpret input"
    }


def test_openapi_documents_bodies_statuses_and_errors(guarded: Served) -> None:
    document = httpx.get(f"{guarded.url}/openapi.json").json()
    pose = document["paths"]["/v1/pose"]["post"]
    content = pose["requestBody"]["content"]
    assert content["application/json"]["schema"]["required"] == ["points"]
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert set(pose["responses"]) == {"200", "400", "401", "404", "408", "413", "415", "422", "503"}
    error = pose["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert document["components"]["schemas"]["ErrorBody"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in document["components"]["schemas"]
    name = document["paths"]["/v1/objects/{name}/pose"]["post"]["parameters"][0]
    assert name["schema"]["enum"] == ["bunny"]
    assert pose["security"]  # the keys are declared when they are configured


def wait_ready(served: Served) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{served.url}/ready").json()["hard_processes"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_hard_cloud_is_finished_in_a_lower_priority_process(guarded: Served) -> None:
    wait_ready(guarded)
    (sphere,) = hard_clouds(1)
    answer = httpx.post(f"{guarded.url}/v1/pose", json={"points": sphere}, headers=key(), timeout=30).json()
    assert answer["found"] is False and answer["confidence"]["hypotheses"] > 1
    text = httpx.get(f"{guarded.url}/metrics", headers=key()).text
    assert 'cloudpose_hard_clouds_total{object="bunny",where="process"} 1.0' in text, [
        line for line in text.splitlines() if "hard" in line
    ]
    server = _server_pid(guarded.port)
    children = [int(pid) for pid in Path(f"/proc/{server}/task/{server}/children").read_text().split()]
    niceness = [int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16]) for pid in children]
    assert 10 in niceness  # the hard-cloud process runs at a lower priority


def test_hard_cloud_processes_end_with_a_killed_server(tmp_path: Path, shipped_store: Path) -> None:
    for served in start(tmp_path, {}, shipped_store):
        wait_ready(served)
        server = _server_pid(served.port)
        children = [int(pid) for pid in Path(f"/proc/{server}/task/{server}/children").read_text().split()]
        assert children
        os.kill(server, signal.SIGKILL)  # no chance to stop its children itself
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in children):
            assert time.monotonic() < deadline, "a hard-cloud process outlived its server"
            time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
