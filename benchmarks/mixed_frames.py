"""Cluttered frames that each hold a few of a store's objects: recall, precision and time with every
object in the store looked for.

Each of ``--frames`` seeded VGA frames (``pipeline.data.scenes.make_frame``) puts ``--least`` to
``--most`` of the store's objects with units (one copy each, picked at random) on a table among 1–3
distractors, laid out for their sizes. ``detect`` looks for all of the store's objects in each, in
process, and the scene benchmark scores it (``pipeline.evaluation.scene_bench``: rotation < 5°,
centroid < 2 % of the diagonal, symmetry-aware; recall of instances at least 30 % visible). Prints
the table with recall and precision by object and the time a frame.

The eight-object store of the results page is the bunny, the parts of ``make_scene_parts.py`` and
four meshes of ``make_objects.py``, each added without training::

    .venv/bin/python benchmarks/make_scene_parts.py /tmp/parts
    .venv/bin/python benchmarks/make_objects.py /tmp/meshes
    for part in crank tee flange; do
        cloudpose object add $part /tmp/parts/$part.stl --units mm --bench-count 0 --store /tmp/store8
    done
    cloudpose object add bracket /tmp/meshes/bracket.stl --units mm --bench-count 0 \
        --store /tmp/store8  # lever.obj, pebble.ply and box.stl alike
    cp -r data/objects/bunny /tmp/store8/  # the shipped bunny: a new store holds only what was added
    .venv/bin/python benchmarks/mixed_frames.py --store /tmp/store8 --frames 30

Usage::

    .venv/bin/python benchmarks/mixed_frames.py --store STORE [--frames 30] [--seed 7] [--least 3] [--most 6]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def mixed_frames(targets: list, count: int, seed: int, least: int, most: int) -> Iterator:
    """``count`` seeded frames, each with ``least`` to ``most`` of ``targets`` (one copy each)
    among 1-3 distractors."""
    from pipeline.data.scenes import Intrinsics, SceneCounts, SceneLayout, make_frame
    from pipeline.evaluation.scene_bench import distractor_objects

    rng = np.random.default_rng(seed)
    distractors = distractor_objects()
    most = min(most, len(targets))
    for _ in range(count):
        chosen = [
            targets[i]
            for i in rng.choice(len(targets), rng.integers(min(least, most), most + 1), replace=False)
        ]
        counts = SceneCounts(target_copies=(1, 1), distractors=(1, 3))
        yield make_frame(
            chosen, distractors, rng, Intrinsics(), counts, layout=SceneLayout.for_targets(chosen)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="the object store (objects with units)")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--least", type=int, default=3, help="fewest of the store's objects in a frame")
    parser.add_argument("--most", type=int, default=6, help="most of the store's objects in a frame")
    args = parser.parse_args()

    from cloudpose.estimation.served import ObjectRegistry
    from cloudpose.settings import Settings
    from pipeline.evaluation.scene_bench import (
        cloudpose_detector,
        format_table,
        run_scene_bench,
        store_targets,
    )

    settings = Settings(store=args.store)
    registry = ObjectRegistry.load(settings)
    targets, models = store_targets(settings.object_store(), registry.objects)
    served = {target.name: registry.objects[target.name] for target in targets}
    print(
        f"store: {args.store} ({', '.join(sorted(served))}); {args.frames} frames, seed {args.seed}, "
        f"{args.least}-{args.most} of the objects in each"
    )
    frames = mixed_frames(targets, args.frames, args.seed, args.least, args.most)
    result = run_scene_bench({"cloudpose": cloudpose_detector(served)}, frames, models)
    print(format_table(result))


if __name__ == "__main__":
    main()
