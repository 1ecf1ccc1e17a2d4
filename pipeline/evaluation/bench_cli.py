"""``cloudpose bench``: cloudpose against classical registration on the seeded benchmark sets.

Methods (all given the same observed clouds, timed per cloud in the same run):

* ``network``: the exported order-free model through the service's inference, no refinement;
* ``network+refine``: the same, with refinement and hypotheses (what the service answers);
* for an object without a network (``object add --no-train``) these two are what runs in its
  place, and their rows are named so: ``principal_axes`` (the principal axes' first guess) and
  ``search+refine`` (the registration search from point-pair-feature votes, what it answers);
* ``fpfh_ransac_icp``: open3d's global-registration tutorial (FPFH, RANSAC, point-to-plane ICP);
* ``pca_icp``: principal-axes alignment in the four proper sign combinations, then ICP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloudpose.estimation.served import NETWORK_METHOD, SEARCH_METHOD, SERVED_METHOD
from pipeline.data.benchsets import SET_NAMES, make_sets
from pipeline.data.mesh import load_mesh
from pipeline.evaluation.bench import BenchResults, run_bench
from pipeline.training.config import ConfigError

METHOD_NAMES = ("network", "network+refine", "fpfh_ransac_icp", "pca_icp")
# What runs, and names the rows, in place of the network's methods for a package without one.
WITHOUT_NETWORK = {NETWORK_METHOD: "principal_axes", SERVED_METHOD: SEARCH_METHOD}
ADD_S_POINTS = 1000
Method = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def build_methods(
    model_path: str | Path, names: Sequence[str], seed: int = 0
) -> tuple[dict[str, Method], float]:
    """The benchmark's methods for an exported order-free model, and the object's diagonal."""
    from cloudpose.estimation.inference import PoseEstimator

    estimator = PoseEstimator(model_path)
    if not estimator.order_free or estimator.surface is None:
        raise ConfigError(
            f"{model_path} is an exam-setting model; bench needs an order-free model with a surface"
        )
    surface = estimator.surface

    def network(refine: bool) -> Method:
        def run(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            (pose,) = estimator.estimate([observed], refine=refine)
            return pose.object_rotation, pose.object_translation

        return run

    return _select(network(False), network(True), surface, names, seed), surface.diagonal


def _select(
    network: Method, refined: Method, surface: Any, names: Sequence[str], seed: int
) -> dict[str, Method]:
    """The named methods: cloudpose without and with refinement, and the classical baselines
    against the same surface model."""
    from pipeline.evaluation.baselines import fpfh_ransac_icp, pca_icp

    available: dict[str, Method] = {
        "network": network,
        "network+refine": refined,
        "fpfh_ransac_icp": lambda observed: fpfh_ransac_icp(observed, surface, seed=seed),
        "pca_icp": lambda observed: pca_icp(observed, surface, seed=seed),
    }
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigError(f"unknown methods {', '.join(unknown)}; choose from {', '.join(METHOD_NAMES)}")
    return {name: available[name] for name in names}


def object_methods(package: Any, names: Sequence[str], seed: int = 0) -> dict[str, Method]:
    """The benchmark's methods for a store package, through the service's own answering code,
    keyed by the names of what runs.

    ``network`` and ``network+refine`` return the internal-frame pose and ``found``. A package
    without a network runs the principal axes' guess and the registration search in their place,
    named ``principal_axes`` and ``search+refine`` (either name may be asked for).
    """
    from cloudpose.estimation.served import ServedObject

    network = package.model_path is not None
    shown: list[str] = []
    for name in names:
        if network and name in WITHOUT_NETWORK.values():
            raise ConfigError(
                f"object {package.name!r} has a network: its methods are {NETWORK_METHOD} and "
                f"{SERVED_METHOD}, not {name}"
            )
        name = name if network else WITHOUT_NETWORK.get(name, name)
        if name not in shown:
            shown.append(name)
    runs = {value: key for key, value in WITHOUT_NETWORK.items()}
    served = ServedObject.from_package(package)
    surface = served.estimator.surface

    def answer(refine: bool) -> Method:
        def run(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
            (pose,) = served.estimate([observed], refine=refine)
            rotation = pose.object_rotation
            # The answer is in the file's frame; the sets are posed in the internal one.
            return rotation, pose.object_translation * pose.scale + served.centroid @ rotation, pose.found

        return run

    methods = _select(answer(False), answer(True), surface, [runs.get(name, name) for name in shown], seed)
    return {name: methods[runs.get(name, name)] for name in shown}


def bench_object(
    package: Any,
    *,
    count: int = 500,
    seed: int = 0,
    set_names: Sequence[str] = SET_NAMES,
    method_names: Sequence[str] = METHOD_NAMES,
    progress: Callable[[str], None] | None = None,
    on_case: Callable[[int], None] | None = None,
) -> BenchResults:
    """Bench one object of the store: its mesh's seeded sets, symmetry-aware errors, ADD-S."""
    from cloudpose.geometry.symmetry import Symmetry
    from pipeline.evaluation.bench import Scoring

    unknown = [name for name in set_names if name not in SET_NAMES]
    if unknown:
        raise ConfigError(f"unknown sets {', '.join(unknown)}; choose from {', '.join(SET_NAMES)}")
    methods = object_methods(package, method_names, seed)
    mesh = load_mesh(package.mesh_path)
    surface = package.surface()
    scoring = Scoring(
        diagonal=package.diagonal,
        symmetry=Symmetry.from_dict(package.meta["symmetry"]),
        model_points=surface[np.random.default_rng(0).choice(len(surface), ADD_S_POINTS, replace=False), :3],
        diameter=float(package.meta["mesh"].get("diameter") or package.diagonal),
    )
    sets = make_sets(mesh, count=count, seed=seed, names=tuple(set_names))
    return run_bench(methods, sets, scoring, progress=progress, on_case=on_case)


def bench(
    model_path: str | Path,
    *,
    count: int = 500,
    seed: int = 0,
    set_names: Sequence[str] = SET_NAMES,
    method_names: Sequence[str] = METHOD_NAMES,
    mesh_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    on_case: Callable[[int], None] | None = None,
) -> BenchResults:
    """Build the seeded sets and run every method on every set."""
    unknown = [name for name in set_names if name not in SET_NAMES]
    if unknown:
        raise ConfigError(f"unknown sets {', '.join(unknown)}; choose from {', '.join(SET_NAMES)}")
    methods, diagonal = build_methods(model_path, method_names, seed)
    sets = make_sets(load_mesh(mesh_path), count=count, seed=seed, names=tuple(set_names))
    return run_bench(methods, sets, diagonal, progress=progress, on_case=on_case)
