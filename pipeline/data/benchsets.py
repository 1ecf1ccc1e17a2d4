"""Seeded benchmark sets: posed clouds of one object as real sensors deliver them.

Each case is ``(observed, object_rotation, object_translation)`` with
``observed ≈ canonical @ object_rotation + object_translation`` (row vectors, see
:mod:`models.geometry`); the pose is always that of the whole object, also when only part of it
is visible. Rotations are uniform on SO(3), translations uniform in ±0.5 × diagonal per axis.

=========  ==================================================================================
shuffled   N = 1024 fresh surface sample, point order permuted
resampled  N drawn uniformly from 256–4096, fresh surface sample
small      N = 100 fresh surface sample
noisy      N = 1024: Gaussian noise σ = 1 % of the diagonal per axis; 5 % of the points are
           uniform outliers in the posed object's bounding box enlarged by 10 % per side
partial    one depth view (:func:`pipeline.data.views.render_view`: self-occlusion, density falling
           off with distance and incidence) covering 30–70 % of the surface
           (:func:`pipeline.data.views.visible_fraction`), without depth noise (noise is the noisy
           set's axis), points shuffled, then posed
partial_noisy  the same views with the camera's depth noise (σ grows with depth², 0.2–1.6 %
           of the diagonal at 1.5–4 diagonals away)
=========  ==================================================================================

Case ``i`` of a set depends only on ``(seed, set name, i)``: a small set is a prefix of a large
one with the same seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from pipeline.data.mesh import Mesh, sample_surface
from pipeline.data.views import DEFAULT_DEPTH_NOISE, random_viewpoint, render_view, visible_fraction

SET_NAMES = ("shuffled", "resampled", "small", "noisy", "partial", "partial_noisy")
DEFAULT_COUNT = 500

TRANSLATION_HALF_RANGE = 0.5  # diagonals, per axis
SHUFFLED_POINTS = 1024
RESAMPLED_RANGE = (256, 4096)  # inclusive
SMALL_POINTS = 100
NOISY_POINTS = 1024
NOISE_SIGMA = 0.01  # diagonals
OUTLIER_FRACTION = 0.05
OUTLIER_BOX_MARGIN = 0.1  # of the box's size, per side
PARTIAL_VISIBLE_RANGE = (0.3, 0.7)
PARTIAL_MIN_POINTS = 64
PARTIAL_MAX_ATTEMPTS = 200


class Case(NamedTuple):
    """One benchmark cloud and the pose of the whole object.

    Attributes:
        observed: (N, 3) float64.
        object_rotation: (3, 3) float64, uniform on SO(3).
        object_translation: (3,) float64.
    """

    observed: np.ndarray
    object_rotation: np.ndarray
    object_translation: np.ndarray


def random_pose(rng: np.random.Generator, diagonal: float) -> tuple[np.ndarray, np.ndarray]:
    """A rotation uniform on SO(3) and a translation uniform in ±0.5 × diagonal per axis."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.random(random_state=rng).as_matrix()
    translation = rng.uniform(-1.0, 1.0, 3) * TRANSLATION_HALF_RANGE * diagonal
    return rotation, translation


def _pose(canonical: np.ndarray, rng: np.random.Generator, diagonal: float) -> Case:
    rotation, translation = random_pose(rng, diagonal)
    return Case(canonical @ rotation + translation, rotation, translation)


def _shuffled(mesh: Mesh, rng: np.random.Generator) -> Case:
    points = sample_surface(mesh, SHUFFLED_POINTS, rng)
    return _pose(points[rng.permutation(len(points))], rng, mesh.diagonal)


def _resampled(mesh: Mesh, rng: np.random.Generator) -> Case:
    count = int(rng.integers(RESAMPLED_RANGE[0], RESAMPLED_RANGE[1], endpoint=True))
    return _pose(sample_surface(mesh, count, rng), rng, mesh.diagonal)


def _small(mesh: Mesh, rng: np.random.Generator) -> Case:
    return _pose(sample_surface(mesh, SMALL_POINTS, rng), rng, mesh.diagonal)


def _noisy(mesh: Mesh, rng: np.random.Generator) -> Case:
    outliers = round(OUTLIER_FRACTION * NOISY_POINTS)
    surface = sample_surface(mesh, NOISY_POINTS - outliers, rng)
    surface = surface + rng.normal(0.0, NOISE_SIGMA * mesh.diagonal, surface.shape)
    rotation, translation = random_pose(rng, mesh.diagonal)
    posed = surface @ rotation + translation
    low, high = posed.min(axis=0), posed.max(axis=0)
    margin = OUTLIER_BOX_MARGIN * (high - low)
    clutter = rng.uniform(low - margin, high + margin, (outliers, 3))
    observed = np.concatenate([posed, clutter])
    return Case(observed[rng.permutation(len(observed))], rotation, translation)


def _partial(mesh: Mesh, rng: np.random.Generator, depth_noise: float = 0.0) -> Case:
    low, high = PARTIAL_VISIBLE_RANGE
    fallback, fallback_gap = None, np.inf
    for _ in range(PARTIAL_MAX_ATTEMPTS):
        view = render_view(mesh, random_viewpoint(rng, mesh.diagonal), rng, depth_noise=depth_noise)
        if len(view) < PARTIAL_MIN_POINTS:
            continue
        fraction = visible_fraction(view, mesh)
        if low <= fraction <= high:
            return _pose(view[rng.permutation(len(view))], rng, mesh.diagonal)
        gap = low - fraction if fraction < low else fraction - high
        if gap < fallback_gap:
            fallback, fallback_gap = view, gap
    if fallback is None:
        raise RuntimeError(f"no view of {mesh.name} shows {PARTIAL_MIN_POINTS} points")
    # A hollow part (a pipe's inside) never shows 30 % of its surface from outside: its view
    # nearest the range stands in.
    return _pose(fallback[rng.permutation(len(fallback))], rng, mesh.diagonal)


_MAKERS: dict[str, Callable[[Mesh, np.random.Generator], Case]] = {
    "shuffled": _shuffled,
    "resampled": _resampled,
    "small": _small,
    "noisy": _noisy,
    "partial": _partial,
    "partial_noisy": lambda mesh, rng: _partial(mesh, rng, depth_noise=DEFAULT_DEPTH_NOISE),
}


def make_set(name: str, mesh: Mesh, count: int = DEFAULT_COUNT, seed: int = 0) -> list[Case]:
    """The benchmark set ``name`` (one of :data:`SET_NAMES`), ``count`` cases, seeded.

    Raises:
        ValueError: unknown set name.
    """
    if name not in _MAKERS:
        raise ValueError(f"unknown benchmark set {name!r}; choose from {', '.join(SET_NAMES)}")
    streams = np.random.SeedSequence([seed, zlib.crc32(name.encode())]).spawn(count)
    return [_MAKERS[name](mesh, np.random.default_rng(stream)) for stream in streams]


def make_sets(
    mesh: Mesh, count: int = DEFAULT_COUNT, seed: int = 0, names: tuple[str, ...] = SET_NAMES
) -> dict[str, list[Case]]:
    """Several sets at once, by name."""
    return {name: make_set(name, mesh, count, seed) for name in names}
