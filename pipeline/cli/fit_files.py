"""What ``cloudpose predict`` can write besides its JSON: the aligned cloud and a picture of the fit.

Both need only the serving extras (plyfile, Pillow). Row vectors throughout (see
:mod:`models.geometry`): an answer maps ``canonical = observed @ rotation + translation``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pipeline.files import atomic_write_bytes

VIEW_PIXELS = 360
MARGIN = 24
OBSERVED_COLOUR = (31, 119, 180, 150)
MODEL_COLOUR = (230, 110, 20, 150)
# The three orthographic views: (horizontal axis, vertical axis, title).
VIEWS = ((0, 1, "front (x right, y up)"), (0, 2, "top (x right, z up)"), (2, 1, "side (z right, y up)"))


def write_ply(path: str | Path, points: np.ndarray) -> Path:
    """Write (N, 3) points as a binary little-endian PLY, atomically."""
    from plyfile import PlyData, PlyElement

    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    vertex = np.empty(len(points), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    vertex["x"], vertex["y"], vertex["z"] = points[:, 0], points[:, 1], points[:, 2]
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def render_fit(
    path: str | Path, observed: np.ndarray, model: np.ndarray, title: str, max_points: int = 4000
) -> Path:
    """Draw the observed cloud and the object's model at the found pose, overlaid, in three
    orthographic views of the observed frame, as a PNG (written atomically).

    Args:
        observed: (N, 3) the cloud as given.
        model: (M, 3) model points moved to the found pose, in the cloud's frame and units.
        title: a line above the views (object, confidence).
        max_points: at most this many points of each are drawn (an even subsample).
    """
    from PIL import Image, ImageDraw

    observed = _subsample(np.asarray(observed, dtype=np.float64), max_points)
    model = _subsample(np.asarray(model, dtype=np.float64), max_points)
    both = np.concatenate([observed, model])
    low, high = both.min(axis=0), both.max(axis=0)
    centre, span = (low + high) / 2, float((high - low).max()) or 1.0
    scale = (VIEW_PIXELS - 2 * MARGIN) / span
    header, footer = 28, 22
    width, height = VIEW_PIXELS * len(VIEWS), VIEW_PIXELS + header + footer
    picture = Image.new("RGBA", (width, height), (255, 255, 255, 255))
    draw = ImageDraw.Draw(picture)
    draw.text((8, 8), title, fill=(0, 0, 0, 255))
    for index, (across, up, name) in enumerate(VIEWS):
        left = index * VIEW_PIXELS
        draw.rectangle(
            (left + 4, header, left + VIEW_PIXELS - 4, header + VIEW_PIXELS - 4), outline=(200, 200, 200, 255)
        )
        draw.text((left + 10, header + 4), name, fill=(90, 90, 90, 255))
        layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
        dots = ImageDraw.Draw(layer)
        for points, colour in ((model, MODEL_COLOUR), (observed, OBSERVED_COLOUR)):
            x = left + VIEW_PIXELS / 2 + (points[:, across] - centre[across]) * scale
            y = header + VIEW_PIXELS / 2 - (points[:, up] - centre[up]) * scale
            for px, py in zip(x.tolist(), y.tolist(), strict=True):
                dots.ellipse((px - 1.5, py - 1.5, px + 1.5, py + 1.5), fill=colour)
        picture = Image.alpha_composite(picture, layer)
        draw = ImageDraw.Draw(picture)
    legend_y = header + VIEW_PIXELS
    for offset, (label, colour) in enumerate(
        (("observed cloud", OBSERVED_COLOUR), ("model at the pose", MODEL_COLOUR))
    ):
        x = 10 + offset * 180
        draw.ellipse((x, legend_y + 6, x + 9, legend_y + 15), fill=colour[:3] + (255,))
        draw.text((x + 15, legend_y + 4), label, fill=(0, 0, 0, 255))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def _subsample(points: np.ndarray, count: int) -> np.ndarray:
    if len(points) <= count:
        return points
    return points[np.linspace(0, len(points) - 1, count).astype(int)]
