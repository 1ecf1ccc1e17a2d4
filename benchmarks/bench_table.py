"""Markdown table of one or more ``cloudpose bench`` runs (their ``bench.json``), for the docs (docs/results).

.venv/bin/python benchmarks/bench_table.py artifacts/bench/lever-500 artifacts/bench/box-500 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (
    ("set", "set", "{}"),
    ("method", "method", "{}"),
    ("count", "n", "{}"),
    ("rotation_median_deg", "rot. median °", "{:.3f}"),
    ("rotation_p99_deg", "rot. p99 °", "{:.3f}"),
    ("success_5deg", "< 5°", "{:.1%}"),
    ("found_rate", "found", "{:.1%}"),
    ("found_wrong", "wrong & found", "{:.1%}"),
    ("add_s_median_pct", "ADD-S med. %", "{:.3f}"),
    ("median_ms", "ms / cloud", "{:.2f}"),
    ("time_ratio", "time vs FPFH", "{:.2f}"),
)


def main() -> None:
    for folder in sys.argv[1:]:
        results = json.loads((Path(folder) / "bench.json").read_text())
        print(f"\n{folder}\n")
        print("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
        print("| " + " | ".join("---" if index < 2 else "---:" for index in range(len(COLUMNS))) + " |")
        for row in results["summary"]:
            cells = []
            for key, _, fmt in COLUMNS:
                value = row.get(key)
                cells.append("-" if value is None else fmt.format(value))
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
