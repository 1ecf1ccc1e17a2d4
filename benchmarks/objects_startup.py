"""Start-up time and memory per served object: load each package of a store in turn, as the
service does at start, and print a table (wall time, resident memory added, package size).

    .venv/bin/python benchmarks/objects_startup.py [--store data/objects] [--store artifacts/objects]
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
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

    from cloudpose.estimation.served import ServedObject
    from cloudpose.store.package import SHIPPED_STORE, ObjectStore

    rows = []
    served = []
    tracemalloc.start()
    for root in args.store or [SHIPPED_STORE]:
        for package in ObjectStore(root).packages():
            before, traced, started = rss_mb(), tracemalloc.get_traced_memory()[0], time.perf_counter()
            served.append(ServedObject.from_package(package))
            elapsed = time.perf_counter() - started
            arrays = (tracemalloc.get_traced_memory()[0] - traced) / 1e6
            added = rss_mb() - before
            size = sum(path.stat().st_size for path in package.path.iterdir()) / 1e6
            rows.append((package.name, served[-1].model_id, elapsed, arrays, added, size))
    # Arrays: what numpy and Python hold for the object (traced); resident: the process's growth,
    # which also counts onnxruntime's and open3d's native memory but reuses freed pages.
    header = ("object", "model", "start-up s", "arrays MB", "resident MB", "package MB")
    print(f"{header[0]:<12} {header[1]:<34} {header[2]:>10} {header[3]:>10} {header[4]:>11} {header[5]:>10}")
    for name, model_id, elapsed, arrays, added, size in rows:
        print(f"{name:<12} {model_id:<34} {elapsed:>10.2f} {arrays:>10.1f} {added:>11.1f} {size:>10.2f}")


if __name__ == "__main__":
    main()
