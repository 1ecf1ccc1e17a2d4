"""Write a fixed set of test meshes for "bring your own object": CAD-like parts in millimetres.

cloudpose ships only the bunny; these are the kinds of files a user brings instead. Every mesh is
in millimetres with its origin where a CAD file would put it (a corner, the middle of the base),
not at its centroid, so loading them exercises the re-centring in ``pipeline/data/mesh.py``:

* ``bracket.stl``: an L bracket, base plate 60 x 40 x 5 and upright 40 x 40 x 5, a gusset, and
  three through-holes (9, 6.6 and 5.5 mm), placed so the part has no symmetry at all; origin at
  the outer corner of the bend;
* ``hex_nut.stl``: an M12-like nut, 19 across flats, 10 thick, 10.2 bore; D6 symmetric (12
  rotations), tessellated so the vertices share that symmetry; origin at the middle of its base;
* ``lever.obj``: a lever about 150 long with an arm 20 wide and 8 thick, bent 5.6 degrees in
  its plane, a 30 mm boss 12 tall with a 12 mm bore at one end and a rounded end with an 8 mm
  hole at the other; nearly symmetric, not exactly; origin at the boss's axis on the base;
* ``pebble.ply``: an icosphere (4 subdivisions) whose radius is scaled by a seeded random
  polynomial of degree 2 and 3 (low-order spherical harmonics), 60 mm across its longest side,
  no symmetry; origin on its base, under the middle of its bounding box;
* ``box.stl``: 80 x 50 x 30, origin at a corner;
* ``cylinder.stl``: diameter 40, height 90, 64 sections, origin at the middle of its base;
* ``far_origin.ply``: the pebble moved so its origin lies 10 bounding-box diagonals from its
  surface centroid (frame and precision tests).

All are closed, consistently wound triangle meshes. The holes are boolean differences, computed
by manifold3d through trimesh (``pip install manifold3d``). The output is deterministic: the
same environment writes byte-identical files on every run (vertices are rounded to 1e-6 mm
before export so that float noise in the booleans does not leak into the files). PLY files hold
double vertices, STL float32 as the format requires, OBJ 8 decimals.

Usage::

    .venv/bin/python benchmarks/make_objects.py OUT_DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import trimesh

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.data.mesh import surface_centroid  # noqa: E402

PEBBLE_SEED = 20240611
PEBBLE_SIZE_MM = 60.0
FAR_ORIGIN_DIAGONALS = 10.0
# A fixed direction off every axis and diagonal, so no coordinate of the shift is special.
FAR_ORIGIN_DIRECTION = np.array([2.0, -1.0, 3.0]) / np.sqrt(14.0)
HOLE_SECTIONS = 48
ROUND_SECTIONS = 64
DECIMALS = 6

# One 64th of a turn: the arm's corners then land on vertices of the 64-section rounds instead of
# just beside them, which at 8 degrees left needle triangles of 2e-4 mm^2 at the knee.
LEVER_BEND_DEG = 360.0 / ROUND_SECTIONS
LEVER_FIRST_MM = 60.0  # boss axis to bend
LEVER_SECOND_MM = 65.0  # bend to the axis of the small hole

# Bounding-box extents (x, y, z) in mm, worked out from the dimensions above rather than measured.
EXPECTED_EXTENTS_MM = {
    "bracket": (60.0, 40.0, 40.0),
    "hex_nut": (2 * 19.0 / np.sqrt(3.0), 19.0, 10.0),
    "lever": (
        15.0 + LEVER_FIRST_MM + LEVER_SECOND_MM * np.cos(np.radians(LEVER_BEND_DEG)) + 10.0,
        15.0 + LEVER_SECOND_MM * np.sin(np.radians(LEVER_BEND_DEG)) + 10.0,
        12.0,
    ),
    "box": (80.0, 50.0, 30.0),
    "cylinder": (40.0, 40.0, 90.0),
}
FILE_NAMES = {
    "bracket": "bracket.stl",
    "hex_nut": "hex_nut.stl",
    "lever": "lever.obj",
    "pebble": "pebble.ply",
    "box": "box.stl",
    "cylinder": "cylinder.stl",
    "far_origin": "far_origin.ply",
}


def _translation(x: float, y: float, z: float) -> np.ndarray:
    return trimesh.transformations.translation_matrix([x, y, z])


def _rod(radius: float, length: float, axis: str, center: tuple[float, float, float]) -> trimesh.Trimesh:
    """A cylinder along ``axis`` ("x", "y" or "z") through ``center``, used as a hole cutter."""
    rotation = {
        "x": trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]),
        "y": trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]),
        "z": np.eye(4),
    }[axis]
    return trimesh.creation.cylinder(
        radius=radius, height=length, sections=HOLE_SECTIONS, transform=_translation(*center) @ rotation
    )


def _boolean(operation: str, meshes: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    function = {"union": trimesh.boolean.union, "difference": trimesh.boolean.difference}[operation]
    return function(meshes, engine="manifold")


def bracket() -> trimesh.Trimesh:
    """L bracket: base along +x, upright along +z, both 40 wide in y; origin at the outer corner."""
    base = trimesh.creation.box(bounds=[[0, 0, 0], [60, 40, 5]])
    upright = trimesh.creation.box(bounds=[[0, 0, 0], [5, 40, 40]])
    # The triangle reaches into both plates (x, z >= 2.5) so the union has real overlap, and its
    # hypotenuse x + z = 35 meets the plates' inner faces 25 mm from the bend.
    gusset = trimesh.creation.extrude_triangulation(
        vertices=[[2.5, 2.5], [32.5, 2.5], [2.5, 32.5]], faces=[[0, 1, 2]], height=5.0
    )
    # Rotating +90 degrees about x sends the prism's (u, v, w) to (u, -w, v): the xz plane.
    gusset.apply_transform(
        _translation(0, 22.5, 0) @ trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0])
    )
    solid = _boolean("union", [base, upright, gusset])
    # Clearance holes for M8, M6 and M5, none on a mirror plane of the plates.
    holes = [
        _rod(4.5, 20, "z", (45.0, 11.0, 2.5)),
        _rod(3.3, 20, "z", (49.0, 31.0, 2.5)),
        _rod(2.75, 20, "x", (2.5, 31.0, 27.0)),
    ]
    return _boolean("difference", [solid, *holes])


def hex_nut() -> trimesh.Trimesh:
    """M12-like nut: corners on the x axis, flats 19 apart in y; origin at the middle of the base."""
    # 60 bore sections, a multiple of 12, keep every rotation of D6 a symmetry of the vertices too.
    prism = trimesh.creation.cylinder(radius=19.0 / np.sqrt(3.0), height=10.0, sections=6)
    bore = trimesh.creation.cylinder(radius=10.2 / 2, height=14.0, sections=60)
    nut = _boolean("difference", [prism, bore])
    nut.apply_translation([0, 0, 5.0])
    return nut


def lever() -> trimesh.Trimesh:
    """Bent lever: boss at the origin, arm along +x, bent towards +y; origin on the boss's base."""
    bend = np.radians(LEVER_BEND_DEG)
    knee = np.array([LEVER_FIRST_MM, 0.0])
    tip = knee + LEVER_SECOND_MM * np.array([np.cos(bend), np.sin(bend)])
    first = trimesh.creation.box(bounds=[[0, -10, 0], [LEVER_FIRST_MM, 10, 8]])
    second = trimesh.creation.box(bounds=[[0, -10, 0], [LEVER_SECOND_MM, 10, 8]])
    second.apply_transform(
        _translation(knee[0], knee[1], 0) @ trimesh.transformations.rotation_matrix(bend, [0, 0, 1])
    )
    # A round at the knee fills the wedge between the two straight parts; one at the tip ends it.
    knee_round = trimesh.creation.cylinder(
        radius=10, height=8, sections=ROUND_SECTIONS, transform=_translation(knee[0], knee[1], 4)
    )
    tip_round = trimesh.creation.cylinder(
        radius=10, height=8, sections=ROUND_SECTIONS, transform=_translation(tip[0], tip[1], 4)
    )
    boss = trimesh.creation.cylinder(
        radius=15, height=12, sections=ROUND_SECTIONS, transform=_translation(0, 0, 6)
    )
    solid = _boolean("union", [first, second, knee_round, tip_round, boss])
    holes = [_rod(6.0, 20, "z", (0, 0, 6)), _rod(4.0, 20, "z", (tip[0], tip[1], 4))]
    return _boolean("difference", [solid, *holes])


def pebble() -> trimesh.Trimesh:
    """Seeded smooth blob, 60 mm on its longest side; origin on its base, under the box's middle."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    directions = sphere.vertices / np.linalg.norm(sphere.vertices, axis=1, keepdims=True)  # (V, 3)
    # Monomials of degree 2 and 3 restricted to the sphere span the spherical harmonics of degree
    # up to 3 (degree 1 would only shift the blob): smooth bumps, a few per hemisphere.
    powers = [(a, b, d - a - b) for d in (2, 3) for a in range(d + 1) for b in range(d + 1 - a)]
    rng = np.random.default_rng(PEBBLE_SEED)
    weights = rng.normal(size=len(powers))
    monomials = np.stack([np.prod(directions ** np.array(p), axis=1) for p in powers], axis=1)  # (V, M)
    bumps = monomials @ weights
    # Radii stay within +-25 % of 1, so the surface stays star-shaped and cannot fold over itself.
    radii = 1.0 + 0.25 * bumps / np.abs(bumps).max()
    vertices = directions * radii[:, None]
    vertices *= PEBBLE_SIZE_MM / (vertices.max(axis=0) - vertices.min(axis=0)).max()
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    vertices -= [(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]]
    return trimesh.Trimesh(vertices=vertices, faces=sphere.faces, process=False)


def box() -> trimesh.Trimesh:
    """80 x 50 x 30 box with its origin at a corner."""
    return trimesh.creation.box(bounds=[[0, 0, 0], [80, 50, 30]])


def cylinder() -> trimesh.Trimesh:
    """Cylinder 40 across and 90 tall along z; origin at the middle of its base."""
    return trimesh.creation.cylinder(
        radius=20, height=90, sections=ROUND_SECTIONS, transform=_translation(0, 0, 45)
    )


def far_origin(source: trimesh.Trimesh) -> trimesh.Trimesh:
    """``source`` moved so its surface centroid is FAR_ORIGIN_DIAGONALS diagonals from the origin."""
    vertices = np.asarray(source.vertices, dtype=np.float64)
    diagonal = np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0))
    centroid = surface_centroid(vertices, np.asarray(source.faces))
    target = FAR_ORIGIN_DIAGONALS * diagonal * FAR_ORIGIN_DIRECTION
    return trimesh.Trimesh(vertices=vertices + (target - centroid), faces=source.faces, process=False)


def _clean(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Rounded vertices, merged duplicates, no degenerate or repeated faces, outward winding."""
    mesh = trimesh.Trimesh(vertices=np.round(mesh.vertices, DECIMALS), faces=mesh.faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    if mesh.is_watertight:
        trimesh.repair.fix_normals(mesh)
    return mesh


def _binary_ply(mesh: trimesh.Trimesh) -> bytes:
    """Little-endian PLY with double vertices: trimesh's exporter stores float32, which would round
    the far-origin copy (about 1 m out) to 6e-5 mm steps and so no longer match the pebble."""
    header = "\n".join(
        [
            "ply",
            "format binary_little_endian 1.0",
            f"element vertex {len(mesh.vertices)}",
            "property double x",
            "property double y",
            "property double z",
            f"element face {len(mesh.faces)}",
            "property list uchar int vertex_indices",
            "end_header",
        ]
    )
    faces = np.zeros(len(mesh.faces), dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    faces["count"] = 3
    faces["indices"] = mesh.faces
    vertices = np.ascontiguousarray(mesh.vertices, dtype="<f8")
    return (header + "\n").encode("ascii") + vertices.tobytes() + faces.tobytes()


def _write(mesh: trimesh.Trimesh, path: Path) -> None:
    if path.suffix == ".obj":
        data = trimesh.exchange.obj.export_obj(
            mesh, include_normals=False, include_color=False, include_texture=False
        )
        path.write_text(data)
    elif path.suffix == ".ply":
        path.write_bytes(_binary_ply(mesh))
    else:
        path.write_bytes(trimesh.exchange.stl.export_stl(mesh))


def make_objects(out_dir: Path) -> dict[str, Path]:
    """Write every test mesh into ``out_dir`` (created if missing).

    Returns:
        Object name (``"bracket"``, ..., ``"far_origin"``) to the file written.

    Raises:
        RuntimeError: manifold3d, which computes the holes, is not installed.
    """
    if importlib.util.find_spec("manifold3d") is None:
        raise RuntimeError("make_objects needs manifold3d for its holes: pip install manifold3d")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meshes = {
        "bracket": bracket(),
        "hex_nut": hex_nut(),
        "lever": lever(),
        "pebble": pebble(),
        "box": box(),
        "cylinder": cylinder(),
    }
    meshes = {name: _clean(mesh) for name, mesh in meshes.items()}
    meshes["far_origin"] = _clean(far_origin(meshes["pebble"]))
    paths = {}
    for name, mesh in meshes.items():
        paths[name] = out_dir / FILE_NAMES[name]
        _write(mesh, paths[name])
    return paths


def describe(path: Path) -> dict[str, object]:
    """What the table prints for one file, measured on the file as trimesh reads it back."""
    mesh = trimesh.load(path, force="mesh")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    return {
        "faces": len(mesh.faces),
        "watertight": bool(mesh.is_watertight),
        "extent_mm": extent,
        "diagonal_mm": float(np.linalg.norm(extent)),
        "origin_offset_mm": float(np.linalg.norm(surface_centroid(vertices, np.asarray(mesh.faces)))),
        "bytes": path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the meshes into")
    args = parser.parse_args(argv)
    try:
        paths = make_objects(args.out_dir)
    except (RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    header = (
        f"{'file':<16} {'faces':>6} {'watertight':>10} {'extent mm (x y z)':>24} "
        f"{'diagonal mm':>11} {'origin-centroid mm':>18} {'kB':>6}"
    )
    print(header)
    print("-" * len(header))
    for path in paths.values():
        row = describe(path)
        extent = " x ".join(f"{v:.1f}" for v in row["extent_mm"])
        print(
            f"{path.name:<16} {row['faces']:>6} {row['watertight']!s:>10} {extent:>24} "
            f"{row['diagonal_mm']:>11.1f} {row['origin_offset_mm']:>18.1f} {row['bytes'] / 1024:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
