"""Start-up time and memory per served object: load each package of a store in turn, as the
service does at start, and print a table (wall time, resident memory added, package size).

    .venv/bin/python benchmarks/objects_startup.py [--store models/objects] [--store artifacts/objects]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def rss_mb() -> float:
    """Resident memory of this process now, MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", action="append", type=Path, help="object store (repeatable)")
    args = parser.parse_args()
    import onnxruntime  # noqa: F401  (library start-up is not an object's cost)
    import open3d  # noqa: F401
    import scipy.ndimage  # noqa: F401

    from service.objects import ServedObject
    from service.store import ObjectStore

    rows = []
    served = []
    for root in args.store or [Path("models/objects")]:
        for package in ObjectStore(root).packages():
            before, started = rss_mb(), time.perf_counter()
            served.append(ServedObject.from_package(package))
            elapsed, added = time.perf_counter() - started, rss_mb() - before
            size = sum(path.stat().st_size for path in package.path.iterdir()) / 1e6
            rows.append((package.name, served[-1].model_id, elapsed, added, size))
    print(f"{'object':<12} {'model':<34} {'start-up s':>10} {'memory MB':>10} {'package MB':>10}")
    for name, model_id, elapsed, added, size in rows:
        print(f"{name:<12} {model_id:<34} {elapsed:>10.2f} {added:>10.1f} {size:>10.2f}")


if __name__ == "__main__":
    main()
