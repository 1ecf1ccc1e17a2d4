"""Build ``data/bunny.ply`` from the npm package ``bunny@1.0.1``.

Usage::

    npm pack bunny@1.0.1 && tar xzf bunny-1.0.1.tgz
    python data/make_bunny.py package/index.js data/bunny.ply

The package's ``index.js`` holds two JavaScript arrays, ``positions`` (vertices) and ``cells``
(triangles, 0-based vertex indices). The mesh is shifted so that its surface centroid (the
area-weighted mean of the triangle centroids) is at the origin, which is cloudpose's canonical
frame, and written as an ASCII PLY so a reader can diff it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np


def parse_index_js(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(vertices (V, 3) float64, faces (F, 3) int64)`` parsed from ``index.js``."""
    arrays = {}
    for name in ("positions", "cells"):
        match = re.search(rf"exports\.{name}\s*=\s*(\[.*?\]\])", text, flags=re.S)
        if match is None:
            raise ValueError(f"index.js has no 'exports.{name}' array")
        arrays[name] = json.loads(match.group(1))
    return np.asarray(arrays["positions"], dtype=np.float64), np.asarray(arrays["cells"], dtype=np.int64)


def surface_centroid(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted centroid of a triangle mesh's surface, shape (3,)."""
    corners = vertices[faces]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    return (corners.mean(axis=1) * areas[:, None]).sum(axis=0) / areas.sum()


def write_ascii_ply(path: Path, vertices: np.ndarray, faces: np.ndarray, comment: str) -> None:
    lines = [
        "ply",
        "format ascii 1.0",
        f"comment {comment}",
        f"element vertex {len(vertices)}",
        "property float x",
        "property float y",
        "property float z",
        f"element face {len(faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    lines += [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"3 {a} {b} {c}" for a, b, c in faces]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 1
    vertices, faces = parse_index_js(Path(argv[1]).read_text())
    offset = surface_centroid(vertices, faces)
    centered = vertices - offset
    comment = "Stanford bunny from npm bunny@1.0.1 (public domain), shifted by " + " ".join(
        f"{-v:.6f}" for v in offset
    )
    write_ascii_ply(Path(argv[2]), centered, faces, comment)
    extent = centered.max(axis=0) - centered.min(axis=0)
    print(f"vertices {len(vertices)} faces {len(faces)} offset {offset.round(6).tolist()}")
    print(f"bbox extent {extent.round(6).tolist()} diagonal {np.linalg.norm(extent):.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
