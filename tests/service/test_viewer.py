"""The viewer page (``/viewer``) in a real headless Chromium against a real uvicorn: a cloud
uploaded through the page gets the pose the API gives for the same file, drawn over the cloud;
a whole frame shows every detection; nothing is fetched from outside the service."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from tests.service.test_uvicorn import (
    cloudpose_command,
    free_port,
    posed_cloud,
    running_server,
    serving_store,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNNY = REPO_ROOT / "data" / "objects" / "bunny"
EXAMPLE_XYZ = BUNNY / "example.xyz"
CHROMIUM = Path("/usr/bin/chromium")
# Headless flags that keep Chromium from reaching out on its own (updates, sync, QUIC probes).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1"}
BACKGROUND_RGB = (0x15, 0x19, 0x1F)
ANSWER_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="browser tests need Debian's chromium at /usr/bin/chromium (scripts/install.sh, as root)",
)


@contextmanager
def chromium(user_data_dir: Path) -> Iterator:
    """Headless Debian Chromium driven by Playwright (its own browser builds are never used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()


class LocalOnly:
    """Aborts every request that would leave the loopback host, and remembers them all."""

    def __init__(self) -> None:
        self.requested: list[str] = []
        self.refused: list[str] = []

    def __call__(self, route) -> None:
        url = route.request.url
        self.requested.append(url)
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.refused.append(url)
            route.abort()


@contextmanager
def local_page(context) -> Iterator:
    """A page whose network is restricted to loopback; fails on page errors or outside requests."""
    guard = LocalOnly()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("**/*", guard)
    page.guard = guard
    try:
        yield page
    finally:
        page.close()
    assert guard.refused == [], f"the page tried to reach outside the service: {guard.refused}"
    assert errors == [], f"errors in the page: {errors}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shipped_store: Path) -> Iterator[str]:
    with serving_store(shipped_store, tmp_path_factory.mktemp("viewer")) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    with chromium(tmp_path_factory.mktemp("chromium")) as context:
        yield context


def api_pose(server: str, path: Path, route: str = "/v1/objects/bunny/pose") -> dict:
    response = httpx.post(f"{server}{route}", files={"file": (path.name, path.read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def open_viewer(page, server: str) -> None:
    page.goto(f"{server}/")
    assert urlsplit(page.url).path == "/viewer"
    page.wait_for_function("document.getElementById('object').options.length > 0")


def wait_for_answer(page) -> dict:
    page.wait_for_function(
        "document.getElementById('pose-result').textContent.length > 0", timeout=ANSWER_TIMEOUT_MS
    )
    return json.loads(page.text_content("#pose-result"))


def canvas_pixels(page) -> np.ndarray:
    """What the 3D view's canvas holds (the overlays above it left out), as (H, W, 3) RGB."""
    url = page.evaluate("document.getElementById('scene').toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def drawn_share(pixels: np.ndarray) -> float:
    """Share of pixels that differ clearly from the view's background."""
    difference = np.abs(pixels.astype(np.int16) - np.asarray(BACKGROUND_RGB, dtype=np.int16)).max(axis=2)
    return float((difference > 24).mean())


def shown_matrix(page) -> np.ndarray:
    cells = page.locator("#pose-matrix td").all_text_contents()
    return np.asarray([float(text) for text in cells]).reshape(4, 4)


def test_an_uploaded_cloud_shows_the_pose_the_api_gives(server: str, browser) -> None:
    expected = api_pose(server, EXAMPLE_XYZ)
    with local_page(browser) as page:
        open_viewer(page, server)
        before = canvas_pixels(page)
        assert drawn_share(before) < 0.001  # nothing is drawn before an answer

        page.set_input_files("#cloud-file", str(EXAMPLE_XYZ))
        shown = wait_for_answer(page)

        # The page shows the API's answer for the same file.
        assert shown["n_points"] == expected["n_points"] == 2048
        assert shown["found"] is expected["found"] is True
        np.testing.assert_allclose(shown["pose_matrix"], expected["pose_matrix"], atol=1e-3)
        np.testing.assert_allclose(shown_matrix(page), expected["pose_matrix"], atol=1e-3)
        quaternion = [float(text) for text in page.text_content("#angles dd:nth-of-type(1)").split(",")]
        assert abs(np.dot(quaternion, expected["quaternion_xyzw"])) == pytest.approx(1.0, abs=1e-3)
        euler = [float(text) for text in page.text_content("#angles dd:nth-of-type(2)").split(",")]
        rotation = np.asarray(expected["pose_matrix"])[:3, :3]
        expected_euler = Rotation.from_matrix(rotation).as_euler("XYZ", degrees=True)
        np.testing.assert_allclose(euler, expected_euler, atol=0.05)
        assert page.text_content("#state").startswith("found")

        # The cloud (orange) and the model at the pose (translucent blue) are drawn.
        pixels = canvas_pixels(page)
        assert drawn_share(pixels) > 0.02
        red, green, blue = (pixels[..., channel].astype(int) for channel in range(3))
        cloud = (red > 180) & (green > 90) & (green < 200) & (blue < 120)
        model = (blue > red + 40) & (blue > green + 10)
        assert cloud.mean() > 0.002 and model.mean() > 0.02

        # Moved to the canonical frame, the cloud sits on the model at rest: a different picture.
        page.check("input[name=frame][value=canonical]")
        page.wait_for_timeout(200)
        canonical = canvas_pixels(page)
        assert drawn_share(canonical) > 0.02
        assert np.abs(canonical.astype(int) - pixels.astype(int)).max(axis=2).__gt__(24).mean() > 0.02
        assert {urlsplit(url).hostname for url in page.guard.requested} == LOCAL_HOSTS


def test_a_shipped_example_is_sent_from_the_list(server: str, browser) -> None:
    expected = httpx.post(
        f"{server}/v1/objects/bunny/pose",
        json=json.loads((BUNNY / "example.json").read_text()),
        timeout=60,
    ).json()
    with local_page(browser) as page:
        open_viewer(page, server)
        # The list fills once the object's examples have been read.
        page.wait_for_function("document.getElementById('example').options.length >= 2")
        assert page.locator("#example option").all_text_contents() == ["example.json", "example.xyz"]
        page.select_option("#example", "example.json")
        page.click("#run-example")
        shown = wait_for_answer(page)
        assert shown["n_points"] == 2048 and shown["found"] is True
        np.testing.assert_allclose(shown["pose_matrix"], expected["pose_matrix"], atol=1e-3)


def test_a_bad_file_shows_the_service_detail(server: str, browser, tmp_path: Path) -> None:
    bad = tmp_path / "broken.xyz"
    bad.write_text("1 2 3\n4 5\n")
    detail = httpx.post(
        f"{server}/v1/objects/bunny/pose", files={"file": (bad.name, bad.read_bytes())}, timeout=30
    ).json()["detail"]
    with local_page(browser) as page:
        open_viewer(page, server)
        page.set_input_files("#cloud-file", str(bad))
        page.wait_for_selector("#status.error")
        assert page.text_content("#status") == f"422: {detail}"
        assert page.text_content("#pose-result") == ""


def test_a_frame_shows_every_detection_in_its_own_colour(
    server: str, browser, tmp_path: Path, shipped_store: Path
) -> None:
    import trimesh

    from cloudpose.store.package import ObjectStore
    from pipeline.data.scenes import Intrinsics, SceneCounts, SceneObject, make_frame

    bunny_package = ObjectStore(shipped_store).get("bunny")
    mesh = trimesh.load(bunny_package.mesh_path, force="mesh")
    mesh.apply_scale(bunny_package.metres_per_unit)
    crate = SceneObject("crate", trimesh.creation.box((0.09, 0.06, 0.11)))
    counts = SceneCounts(target_copies=(2, 2), distractors=(1, 1))
    frame = make_frame([SceneObject("bunny", mesh)], [crate], np.random.default_rng(11), Intrinsics(), counts)
    path = tmp_path / "frame.npy"
    np.save(path, frame.points())
    expected = api_pose(server, path, route="/v1/detect")
    assert len(expected["detections"]) >= 1

    with local_page(browser) as page:
        open_viewer(page, server)
        page.check("input[name=mode][value=scene]")
        page.set_input_files("#cloud-file", str(path))
        shown = wait_for_answer(page)
        assert len(shown["detections"]) == len(expected["detections"])
        for mine, theirs in zip(shown["detections"], expected["detections"], strict=True):
            np.testing.assert_allclose(mine["pose_matrix"], theirs["pose_matrix"], atol=2e-3)

        items = page.locator("#detections li")
        assert items.count() == len(expected["detections"])
        colours = {item.locator(".swatch").evaluate("node => node.style.background") for item in items.all()}
        assert len(colours) == items.count()  # each its own colour
        # Selecting the last one shows its pose in the panel.
        items.last.click()
        assert "selected" in (items.last.get_attribute("class") or "")
        np.testing.assert_allclose(shown_matrix(page), expected["detections"][-1]["pose_matrix"], atol=1e-3)
        assert drawn_share(canvas_pixels(page)) > 0.01


def test_with_api_keys_the_page_is_open_and_its_routes_need_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shipped_store: Path
) -> None:
    key = "viewer-test-key"
    monkeypatch.setenv("CLOUDPOSE_API_KEYS", key)
    with serving_store(shipped_store, tmp_path) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            for path in (
                "/viewer",
                "/viewer/static/viewer.js",
                "/viewer/static/vendor/three/three.module.js",
            ):
                assert client.get(path).status_code == 200, path
            routes = [
                ("GET", "/v1/objects/bunny/geometry", {}),
                ("GET", "/v1/objects/bunny/examples", {}),
                ("GET", "/v1/objects/bunny/examples/example.xyz", {}),
                ("POST", "/v1/clouds/read", {"files": {"file": ("c.xyz", EXAMPLE_XYZ.read_bytes())}}),
            ]
            for method, path, extra in routes:
                refused = client.request(method, path, **extra)
                assert refused.status_code == 401, path
                assert refused.json()["detail"].startswith("a valid API key is required")
                allowed = client.request(method, path, headers={"X-API-Key": key}, **extra)
                assert allowed.status_code == 200, (path, allowed.text)


def test_the_drawn_model_lies_on_the_cloud_moved_to_the_canonical_frame(server: str) -> None:
    """The geometry route's frame is the pose's canonical frame: the observed cloud moved by the
    answer (``points @ rotation + translation``) lies on the model's surface sample."""
    from scipy.spatial import cKDTree

    answer = api_pose(server, EXAMPLE_XYZ)
    geometry = httpx.get(f"{server}/v1/objects/bunny/geometry", timeout=30).json()
    surface = np.asarray(geometry["points"]) / answer["scale"]
    assert 500 <= len(surface) <= 5000
    assert geometry["mesh"] is not None and len(geometry["mesh"]["faces"]) > 0
    vertices = np.asarray(geometry["mesh"]["vertices"])
    assert np.abs(vertices[np.asarray(geometry["mesh"]["faces"])].reshape(-1, 3)).max() < 1e6
    points = np.loadtxt(EXAMPLE_XYZ)
    canonical = points @ np.asarray(answer["rotation"]) + np.asarray(answer["translation"])
    diagonal = np.linalg.norm(surface.max(axis=0) - surface.min(axis=0))
    distances, _ = cKDTree(np.vstack([surface, vertices])).query(canonical)
    assert np.median(distances) < 0.02 * diagonal
    # Unmoved, the cloud is elsewhere: the check above can fail.
    assert np.median(cKDTree(surface).query(points)[0]) > 0.05 * diagonal


def test_examples_are_listed_and_only_listed_files_are_served(server: str) -> None:
    listing = httpx.get(f"{server}/v1/objects/bunny/examples", timeout=10).json()
    assert [example["file"] for example in listing["examples"]] == ["example.json", "example.xyz"]
    served = httpx.get(f"{server}/v1/objects/bunny/examples/example.xyz", timeout=10)
    assert served.content == EXAMPLE_XYZ.read_bytes()
    for name in ("object.json", "model.onnx", "..%2Fobject.json", "..%5Cobject.json"):
        refused = httpx.get(f"{server}/v1/objects/bunny/examples/{name}", timeout=10)
        assert refused.status_code == 404, name
        assert "object.json" not in refused.text or "ships no example" in refused.text
    unknown = httpx.get(f"{server}/v1/objects/teapot/geometry", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["detail"].startswith("unknown object 'teapot'")


def test_a_bare_exam_model_draws_its_template(exported_model, tmp_path: Path) -> None:
    """A bare exported model has no package: its geometry is its template (the internal frame its
    answers are in), and it ships no examples."""
    template = np.load(exported_model.model_path.parent / "template.npy")
    diagonal = float(np.linalg.norm(template.max(axis=0) - template.min(axis=0)))
    port = free_port()
    command = [
        *cloudpose_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(exported_model.model_path),
    ]
    with running_server(command, port, tmp_path / "server.log") as url:
        name = httpx.get(f"{url}/v1/objects", timeout=10).json()["default"]
        geometry = httpx.get(f"{url}/v1/objects/{name}/geometry", timeout=10).json()
        assert geometry["mesh"] is None and geometry["frame"] == "internal"
        np.testing.assert_allclose(geometry["points"], template, atol=1e-5)
        assert httpx.get(f"{url}/v1/objects/{name}/examples", timeout=10).json()["examples"] == []
        points = posed_cloud(template, diagonal, seed=7)
        answer = httpx.post(f"{url}/v1/pose", json={"points": points.tolist()}, timeout=30).json()
        moved = points @ np.asarray(answer["rotation"]) + np.asarray(answer["translation"])
        assert np.abs(moved - np.asarray(geometry["points"])).max() < 1e-3 * diagonal
