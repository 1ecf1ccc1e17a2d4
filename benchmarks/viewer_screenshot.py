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
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import running_servers  # noqa: E402

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
ANSWER_TIMEOUT_MS = 60_000
PALETTE_COLOURS = 128


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
    with tempfile.TemporaryDirectory() as folder, running_servers(Path(folder)) as (server,):
        png = screenshot(server.url, args.object, args.example, args.width, args.height)
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
