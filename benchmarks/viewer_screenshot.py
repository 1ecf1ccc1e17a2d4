"""Remake ``docs/viewer.png``: the viewer page with the bunny's shipped example cloud and its pose.

Starts ``cloudpose serve`` on a free loopback port, drives Debian's headless Chromium with
Playwright to ``/viewer``, sends the chosen example from the page's list, waits for the answer and
saves a screenshot of the whole page (palette PNG, to keep it small). The server is stopped at
the end, also on errors.

Usage::

    .venv/bin/python benchmarks/viewer_screenshot.py [--object bunny] [--example example.xyz]
        [--out docs/viewer.png] [--width 1400] [--height 800]
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
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
READY_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_MS = 60_000
PALETTE_COLOURS = 128


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, log_path: Path) -> subprocess.Popen:
    """``cloudpose serve`` on loopback, once ``/health`` answers."""
    script = Path(sys.executable).parent / "cloudpose"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"the server was not ready after {READY_TIMEOUT_S:g} s")


def screenshot(base_url: str, object_name: str, example: str, width: int, height: int) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{base_url}/viewer")
            page.wait_for_function(
                f"[...document.getElementById('object').options].some(o => o.value === {object_name!r})"
            )
            page.select_option("#object", object_name)
            page.wait_for_function(
                f"[...document.getElementById('example').options].some(o => o.value === {example!r})"
            )
            page.select_option("#example", example)
            page.click("#run-example")
            page.wait_for_function(
                "document.getElementById('pose-result').textContent.length > 0", timeout=ANSWER_TIMEOUT_MS
            )
            return page.screenshot()
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", default="bunny", help="served object to pick in the page")
    parser.add_argument("--example", default="example.xyz", help="shipped example cloud to send")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "viewer.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        print(f"error: {CHROMIUM} is missing: install Debian's chromium package", file=sys.stderr)
        return 1
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        process = start_server(port, Path(folder) / "server.log")
        try:
            png = screenshot(f"http://127.0.0.1:{port}", args.object, args.example, args.width, args.height)
        finally:
            process.terminate()
            process.wait(timeout=10)
    # A palette PNG is a fraction of the size and looks the same: the page has few colours.
    image = (
        Image.open(io.BytesIO(png)).convert("RGB").quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {args.width}x{args.height}, {args.out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
