"""Meshes: load any rigid object (PLY/OBJ/STL/OFF/GLB), fix its canonical frame, sample its surface.

The canonical frame of an object is its mesh's own axes and units, shifted so that the surface
centroid (area-weighted) is at the origin. Everything here is numpy; sampling takes a seeded
``numpy.random.Generator`` and never touches global state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MESH = Path(__file__).resolve().parents[2] / "data" / "bunny.ply"
MESH_SUFFIXES = (".ply", ".obj", ".stl", ".off", ".glb")


class MeshError(ValueError):
    """A mesh file that cannot serve as an object model."""


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh in its canonical frame.

    Attributes:
        vertices: (V, 3) float64, surface centroid at the origin.
        faces: (F, 3) int64 vertex indices.
        name: file name it came from.
        sha256: hash of the file's bytes.
        offset: (3,) what was subtracted from the file's coordinates.
    """

    vertices: np.ndarray
    faces: np.ndarray
    name: str
    sha256: str
    offset: np.ndarray

    @property
    def diagonal(self) -> float:
        """Length of the axis-aligned bounding box's diagonal, in the mesh's units."""
        return float(np.linalg.norm(self.vertices.max(axis=0) - self.vertices.min(axis=0)))

    @property
    def face_areas(self) -> np.ndarray:
        corners = self.vertices[self.faces]  # (F, 3, 3)
        return 0.5 * np.linalg.norm(
            np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
        )


def surface_centroid(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted centroid of the surface, shape (3,)."""
    corners = vertices[faces]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    if not np.isfinite(areas).all() or areas.sum() <= 0:
        raise MeshError("mesh has no surface area")
    return (corners.mean(axis=1) * areas[:, None]).sum(axis=0) / areas.sum()


def load_mesh(path: str | Path | None = None) -> Mesh:
    """Read a triangle mesh and move it to its canonical frame.

    Args:
        path: PLY, OBJ, STL or OFF file; the bunny when None.

    Raises:
        MeshError: missing file, unknown format, or a file with no triangles.
    """
    import trimesh  # heavy-ish; only commands that need a mesh pay for it

    path = Path(path) if path is not None else DEFAULT_MESH
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}")
    if path.suffix.lower() in (".step", ".stp", ".iges", ".igs"):
        raise MeshError(
            f"{path.name} is a CAD (B-rep) file: export it from your CAD tool as STL, OBJ, PLY or GLB "
            "(a fine tessellation, in the units you will declare with --units)"
        )
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise MeshError(f"unsupported mesh format {path.suffix!r}; use one of {', '.join(MESH_SUFFIXES)}")
    data = path.read_bytes()
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as error:  # trimesh raises many types for corrupt files
        raise MeshError(f"could not read mesh {path}: {error}") from error
    vertices = np.asarray(getattr(loaded, "vertices", np.empty((0, 3))), dtype=np.float64)
    faces = np.asarray(getattr(loaded, "faces", np.empty((0, 3))), dtype=np.int64)
    if len(faces) == 0 or len(vertices) < 3 or not np.isfinite(vertices).all():
        raise MeshError(f"mesh {path} has no usable triangles")
    offset = surface_centroid(vertices, faces)
    return Mesh(
        vertices=vertices - offset,
        faces=faces,
        name=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        offset=offset,
    )


def sample_surface(mesh: Mesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """Points uniformly distributed on the surface (area-weighted faces, uniform barycentrics).

    Returns:
        (count, 3) float64.
    """
    areas = mesh.face_areas
    face_index = rng.choice(len(areas), size=count, p=areas / areas.sum())
    u, v = rng.random((2, count))
    outside = u + v > 1
    u[outside], v[outside] = 1 - u[outside], 1 - v[outside]
    a, b, c = (mesh.vertices[mesh.faces[face_index, k]] for k in range(3))
    return a + u[:, None] * (b - a) + v[:, None] * (c - a)
