"""Write the scene benchmark's target parts: CAD-like meshes in millimetres that nothing else uses.

`cloudpose bench --scenes` looks for the objects of a store in cluttered frames. Its default
store holds only the bunny, which the detector's defaults were tuned on; these parts are what it
is measured on instead. None of them appears in the object-store tests (`benchmarks/make_objects.py`
makes those) or among the scene distractors (`pipeline/evaluation/scene_bench.py`):

* ``crank.stl``: an arm 100 between centres, 24 wide and 12 thick, a boss of 40 x 30 with a 16
  bore at one end and a boss of 24 x 20 with a 10 bore at the other, a pin of 10 x 25 out of the
  arm's side; no symmetry; origin at the big boss's axis on the base;
* ``tee.stl``: a pipe tee, run 120 long and branch 60 from the run's axis, both 36 outside and
  26 inside; 2 rotations (a half turn about the branch); origin at the run's middle;
* ``flange.stl``: a weld-neck flange, a plate 110 across and 12 thick with six 11 bolt holes on
  an 84 circle, a hub 56 across standing 18 above it, a 36 bore; 6 rotations about its axis;
  origin at the middle of its base.

All are closed, consistently wound triangle meshes built by manifold3d (revolutions, extrusions,
booleans), vertices rounded to 1e-6 mm, so the output is byte-identical from run to run.

Usage::

    .venv/bin/python benchmarks/make_scene_parts.py OUT_DIR
    cloudpose object add crank OUT_DIR/crank.stl --units mm --store artifacts/scene_objects
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import trimesh
from manifold3d import Manifold

SECTIONS = 64  # circle segments; a multiple of 6 and 2 keeps the parts' symmetries exact
DECIMALS = 6
PART_NAMES = ("crank", "tee", "flange")


def _cylinder(radius: float, height: float) -> Manifold:
    """Along +z from z = 0."""
    return Manifold.cylinder(height, radius, radius, SECTIONS)


def _along_x(solid: Manifold) -> Manifold:
    return solid.rotate([0.0, 90.0, 0.0])


def _along_y(solid: Manifold) -> Manifold:
    return solid.rotate([-90.0, 0.0, 0.0])


def crank() -> Manifold:
    """Arm along +x, bosses standing up +z; no rotation maps it onto itself."""
    arm = Manifold.cube([100.0, 24.0, 12.0]).translate([0.0, -12.0, 0.0])
    big = _cylinder(20.0, 30.0)
    small = _cylinder(12.0, 20.0).translate([100.0, 0.0, 0.0])
    pin = _along_y(_cylinder(5.0, 25.0)).translate([55.0, 10.0, 6.0])  # out of the +y side only
    bores = _cylinder(8.0, 34.0).translate([0.0, 0.0, -2.0]) + _cylinder(5.0, 24.0).translate(
        [100.0, 0.0, -2.0]
    )
    return (arm + big + small + pin) - bores


def tee() -> Manifold:
    """Run along x through the origin, branch along +z."""
    run = _along_x(_cylinder(18.0, 120.0)).translate([-60.0, 0.0, 0.0])
    branch = _cylinder(18.0, 60.0)
    bore_run = _along_x(_cylinder(13.0, 124.0)).translate([-62.0, 0.0, 0.0])
    bore_branch = _cylinder(13.0, 62.0)
    return (run + branch) - (bore_run + bore_branch)


def flange() -> Manifold:
    """Plate on z = 0, hub up +z, bolt holes at multiples of 60 degrees."""
    plate = _cylinder(55.0, 12.0)
    hub = _cylinder(28.0, 30.0)
    solid = plate + hub - _cylinder(18.0, 34.0).translate([0.0, 0.0, -2.0])
    for k in range(6):
        angle = np.radians(60.0 * k)
        solid -= _cylinder(5.5, 16.0).translate([42.0 * np.cos(angle), 42.0 * np.sin(angle), -2.0])
    return solid


def to_trimesh(solid: Manifold) -> trimesh.Trimesh:
    mesh = solid.to_mesh()
    vertices = np.round(np.asarray(mesh.vert_properties, dtype=np.float64)[:, :3], DECIMALS)
    return trimesh.Trimesh(vertices, np.asarray(mesh.tri_verts, dtype=np.int64), process=True)


def parts() -> dict[str, trimesh.Trimesh]:
    """The parts by name, in millimetres."""
    return {name: to_trimesh(build()) for name, build in zip(PART_NAMES, (crank, tee, flange), strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, mesh in parts().items():
        if not mesh.is_watertight or not mesh.is_winding_consistent:
            raise SystemExit(f"{name}: not a closed, consistently wound mesh")
        path = args.out_dir / f"{name}.stl"
        mesh.export(path)
        extents = ", ".join(f"{value:.1f}" for value in mesh.extents)
        print(f"{path}: {len(mesh.faces)} triangles, extents {extents} mm")


if __name__ == "__main__":
    main()
