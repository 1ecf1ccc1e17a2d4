"""Time per cloud of several objects side by side: each set's clouds of every object are posed in
turn (object A's cloud 0, B's cloud 0, ..., A's cloud 1, ...), so a machine that speeds up or
slows down affects all objects alike, and the table gives each object's median time and its
ratio to the reference object's (the bunny) on the same set.

The clouds are the seeded sets of ``cloudpose bench`` (:mod:`pipeline.data.benchsets`), posed through
the service's own answering code (:class:`cloudpose.estimation.served.ServedObject`), refinement on. Errors
are symmetry-aware; "wrong & found" is the share of answers at least 5 degrees off yet marked
``found``.

    .venv/bin/python benchmarks/object_times.py --store data/objects --store artifacts/objects \\
        [--objects bunny,lever,box] [--sets shuffled,noisy,partial] [--count 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudpose.estimation.served import ServedObject  # noqa: E402
from cloudpose.geometry.symmetry import Symmetry  # noqa: E402
from cloudpose.store.package import SHIPPED_STORE, ObjectStore  # noqa: E402
from pipeline.data.benchsets import SET_NAMES, make_set  # noqa: E402
from pipeline.data.mesh import load_mesh  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", type=Path, help="object store (repeatable)")
    parser.add_argument("--objects", default="", help="comma-separated names (default: every object)")
    parser.add_argument("--reference", default="bunny", help="the object the ratios refer to")
    parser.add_argument("--sets", default="shuffled,resampled,noisy,partial", help="comma-separated sets")
    parser.add_argument("--count", type=int, default=200, help="clouds per set and object")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    packages = {}
    for root in args.store or [SHIPPED_STORE]:
        for package in ObjectStore(root).packages():
            packages.setdefault(package.name, package)
    names = [name for name in args.objects.split(",") if name] or sorted(packages)
    unknown = [name for name in names if name not in packages]
    sets = [name for name in args.sets.split(",") if name]
    if unknown or any(name not in SET_NAMES for name in sets):
        parser.error(f"unknown objects {unknown} or sets {sets}; sets are {', '.join(SET_NAMES)}")
    served = {name: ServedObject.from_package(packages[name]) for name in names}
    symmetry = {name: Symmetry.from_dict(packages[name].meta["symmetry"]) for name in names}
    meshes = {name: load_mesh(packages[name].mesh_path) for name in names}

    print(f"| set | object | ms / cloud (median) | vs {args.reference} | < 5° | found | wrong & found |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for set_name in sets:
        cases = {name: make_set(set_name, meshes[name], args.count, args.seed) for name in names}
        for name in names:  # warm-up: first calls pay for lazy imports and caches
            served[name].estimate([cases[name][0].observed])
        ms = {name: [] for name in names}
        error = {name: [] for name in names}
        found = {name: [] for name in names}
        for index in range(args.count):
            for name in names:
                case = cases[name][index]
                started = time.perf_counter()
                (pose,) = served[name].estimate([case.observed])
                ms[name].append((time.perf_counter() - started) * 1e3)
                error[name].append(symmetry[name].error_deg(pose.object_rotation, case.object_rotation))
                found[name].append(pose.found)
        reference = float(np.median(ms[args.reference])) if args.reference in ms else None
        for name in names:
            median = float(np.median(ms[name]))
            wrong = np.asarray(error[name]) >= 5.0
            marked = np.asarray(found[name])
            ratio = f"{median / reference:.2f}" if reference else "-"
            print(
                f"| {set_name} | {name} | {median:.2f} | {ratio} | {100 * np.mean(~wrong):.1f} % | "
                f"{100 * np.mean(marked):.1f} % | {100 * np.mean(wrong & marked):.1f} % |",
                flush=True,
            )


if __name__ == "__main__":
    main()
