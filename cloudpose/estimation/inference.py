"""Inference with onnxruntime only: preprocess -> run -> postprocess. No torch here.

Conventions follow the exported sidecar (row vectors): the network gives the object pose
``observed = canonical @ R_obj + t_obj``; the service answers with the back transform
``canonical = observed @ rotation + translation`` (``rotation = R_obj.T``,
``translation = -t_obj @ R_obj.T``), plus the object pose as a 4x4 matrix and a quaternion.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudpose import budget
from cloudpose.geometry.rotations import geodesic_deg
from cloudpose.geometry.symmetry import Symmetry
from cloudpose.io.clouds import CloudError
from cloudpose.store.package import ObjectPackage, StoreError, read_model_sidecar

# Order-free models: fewest points accepted.
MIN_POINTS = 32
# The most points a cloud may have in process, as the service's default limit (Settings.max_points).
DEFAULT_MAX_POINTS = 250_000


@dataclass(frozen=True)
class SearchCriteria:
    """How an order-free cloud's pose search samples, screens and decides (fractions of the
    object's diagonal; set on the synthetic bench sets unless a field says otherwise).

    Attributes:
        refine_max_points: the most points refinement uses (:class:`RefineCriteria`'s
            ``max_points``, what the service refines on).
        search_points: without a network, the search alone answers from this many of the
            cloud's points (a package's model may say otherwise).
        network_points: the network sees at most this many of the cloud's points when
            refinement follows it.
        near_symmetry_points: near-symmetric copies of a pose (and rivals of an answer) are
            screened together on this many points, through the coarse stages.
        copy_fitness_margin: a screened copy is refined in full when its fitness comes within
            this margin of the best's ...
        copy_rmse_ratio: ... and its RMSE within this ratio (generous: a screened fit is not yet
            finished).
        max_finished_rivals: at most this many rivals of an answer are finished.
        near_symmetry_votes: without a network, the near-symmetric copies of this many of the
            votes' best poses are screened first (the lever's view: its flipped copy's peak is
            the second or third).
        whole_coverage: a cloud covering this share of the model's surface is whole: no view
            of it is ambiguous.
        coverage_points: model points (of the coarse copy) the coverage is measured on.
        coverage_distance: a model point this close to the posed cloud is covered (at least
            twice the cloud's point spacing).
        always_screen: a doubt threshold above any fitness: the starts are screened whatever
            the first one's fit.
        distinct_degrees: poses closer than this (degrees, symmetries aside) are one answer,
            not competitors.
        polish_confidence: only fits this confident, and that the cloud's scatter explains,
            are polished (the others will not be answers anyway).
    """

    refine_max_points: int = 1024
    search_points: int = 512
    network_points: int = 256
    near_symmetry_points: int = 128
    copy_fitness_margin: float = 0.05
    copy_rmse_ratio: float = 2.0
    max_finished_rivals: int = 3
    near_symmetry_votes: int = 3
    whole_coverage: float = 0.85
    coverage_points: int = 400
    coverage_distance: float = 0.05
    always_screen: float = 1.01
    distinct_degrees: float = 5.0
    polish_confidence: float = 0.5


SEARCH_CRITERIA = SearchCriteria()
# The defaults under the names other modules read.
REFINE_MAX_POINTS = SEARCH_CRITERIA.refine_max_points
DISTINCT_DEGREES = SEARCH_CRITERIA.distinct_degrees
# A fit this complete, with an RMSE under UNEXPLAINED_FLOOR, is tight.
TIGHT_FITNESS = 0.98


def column_pose_matrix(object_rotation: np.ndarray, object_translation: np.ndarray) -> np.ndarray:
    """4x4 object pose for column vectors, ``[x_obs; 1] = M @ [x_can; 1]``, of a row-vector pose
    ``observed = canonical @ object_rotation + object_translation``."""
    matrix = np.eye(4)
    matrix[:3, :3] = object_rotation.T
    matrix[:3, 3] = object_translation
    return matrix


def _cube_rotations() -> np.ndarray:
    """The 24 rotations of the cube (signed permutation matrices with det +1), identity first."""
    import itertools

    rotations = []
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[range(3), order] = signs
            if np.linalg.det(matrix) > 0:
                rotations.append(matrix)
    return np.stack(rotations)


def _spread_rotations(count: int) -> np.ndarray:
    """``count`` rotations spread evenly over SO(3) (super-Fibonacci spirals, Alexa 2022)."""
    phi, psi = np.sqrt(2.0), 1.533751168755204288118041
    s = np.arange(count) + 0.5
    r, big_r = np.sqrt(s / count), np.sqrt(1.0 - s / count)
    alpha, beta = 2.0 * np.pi * s / phi, 2.0 * np.pi * s / psi
    x, y, z, w = r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=1,
    )


# Starting poses for doubtful clouds: the cube's rotations (identity first) and half-turns, then,
# for clouds that no guess near the network's fits, rotations spread over all of SO(3).
CUBE_ROTATIONS = _cube_rotations()
SPREAD_ROTATIONS = _spread_rotations(120)
# A single view's centroid lies off the object's centre, towards the sensor, by about this much
# along the line of sight (fraction of the diagonal; the median over partial benchmark views).
VIEW_OFFSET = 0.12


def view_centres(cloud: np.ndarray, diagonal: float, view_offset: float = VIEW_OFFSET) -> list[np.ndarray]:
    """Where the object's centre may lie: at the cloud's centroid (a whole cloud), or
    ``view_offset`` diagonals in front of or behind it along the cloud's thinnest principal
    axis (a single view is thinnest along the line of sight, and its centroid lies off the
    object's centre, towards the sensor)."""
    from cloudpose.registration.refine import principal_axes  # open3d: only refinement searches

    centroid, axes = principal_axes(np.asarray(cloud, dtype=np.float64))
    offset = view_offset * diagonal * axes[2]  # the axis of least variance
    return [centroid, centroid + offset, centroid - offset]


def spread_starts(
    cloud: np.ndarray, diagonal: float, view_offset: float = VIEW_OFFSET
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Object poses that cover all rotations, for a cloud no nearer guess fits: each of
    :data:`SPREAD_ROTATIONS` at each of :func:`view_centres` (``view_offset`` is measured per
    object when it is added, ``VIEW_OFFSET`` for the bunny)."""
    return [
        (rotation, centre)
        for centre in view_centres(cloud, diagonal, view_offset)
        for rotation in SPREAD_ROTATIONS
    ]


HALF_TURNS = np.stack([np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])])


class ModelLoadError(StoreError):
    """The model file or its sidecar is missing, corrupt, or does not match."""


def project_to_so3(matrix: np.ndarray) -> np.ndarray:
    """Nearest rotations (SVD, det = +1) of a (B, 3, 3) stack."""
    u, _, vh = np.linalg.svd(matrix.astype(np.float64))
    det = np.linalg.det(u @ vh)
    u[..., :, -1] *= det[..., None]
    return u @ vh


def quaternion_xyzw(rotation_column: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a column-vector rotation matrix (3, 3)."""
    m = rotation_column
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    candidates = np.array(
        [
            [1 + trace, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]],
            [m[2, 1] - m[1, 2], 1 + m[0, 0] - m[1, 1] - m[2, 2], m[0, 1] + m[1, 0], m[0, 2] + m[2, 0]],
            [m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1 - m[0, 0] + m[1, 1] - m[2, 2], m[1, 2] + m[2, 1]],
            [m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1 - m[0, 0] - m[1, 1] + m[2, 2]],
        ]
    )
    # Take the numerically largest of the four equivalent formulas.
    best = int(np.argmax([1 + trace, candidates[1, 1], candidates[2, 2], candidates[3, 3]]))
    wxyz = candidates[best] / (2 * np.sqrt(candidates[best, best]))
    wxyz = wxyz / np.linalg.norm(wxyz)
    if wxyz[0] < 0:
        wxyz = -wxyz
    return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])


def drop_stray_points(points: np.ndarray, neighbours: int = 4, spread: float = 3.0) -> np.ndarray:
    """Remove points far from their neighbours (stray returns, clutter) before the network.

    Max pooling lets a few stray points dominate the network's features; refinement has its own
    robust weights and sees the whole cloud. A point is stray when the mean distance to its
    ``neighbours`` nearest points exceeds the median of that distance by ``spread`` robust sigmas.

    Args:
        points: (M, 3), the network's subsample (a few hundred points).

    Returns:
        The kept points, or all of them when too few would remain.
    """
    if len(points) <= 4 * neighbours:
        return points
    try:
        import small_gicp

        tree = small_gicp.KdTree(np.ascontiguousarray(points, dtype=np.float64))
        _, distance2 = tree.batch_knn_search(np.ascontiguousarray(points, dtype=np.float64), neighbours + 1)
        distance2 = np.asarray(distance2)[:, 1:]  # (M, k), the point itself dropped
    except ImportError:  # the same neighbours from the full distance matrix, slower
        squared = (points * points).sum(axis=1)
        matrix = np.maximum(squared[:, None] + squared[None, :] - 2 * points @ points.T, 0)  # (M, M)
        distance2 = np.partition(matrix, neighbours, axis=1)[:, 1 : neighbours + 1]
    nearest = np.sqrt(distance2).mean(axis=1)
    median = np.median(nearest)
    sigma = 1.4826 * np.median(np.abs(nearest - median))
    keep = nearest <= median + spread * max(sigma, 1e-12)
    return points[keep] if keep.sum() >= MIN_POINTS else points


# A cloud of the object (whole or one view, a few stray points aside) spans between about this
# fraction and this multiple of the object's bounding-box diagonal.
PLAUSIBLE_SPAN = (0.2, 3.0)


def cloud_span(cloud: np.ndarray) -> float:
    """Diagonal of the box holding the middle 96 % of the points per axis (strays ignored)."""
    points = np.asarray(cloud, dtype=np.float64)
    # Order statistics by partition (nearest rank): np.percentile's sort and interpolation cost
    # about ten times more on a request-sized cloud, for the same span within a point's spacing.
    low_rank = int(0.02 * (len(points) - 1))
    high_rank = int(np.ceil(0.98 * (len(points) - 1)))
    ranked = np.partition(points, [low_rank, high_rank], axis=0)
    return float(np.linalg.norm(ranked[high_rank] - ranked[low_rank]))


def size_warnings(cloud: np.ndarray, diagonal: float) -> list[str] | None:
    """A warning when the cloud's size does not fit the object's (points in other units?).

    The span is the diagonal of the box holding the middle 96 % of the points on each axis, so a
    few stray points do not count.
    """
    span = cloud_span(cloud)
    if PLAUSIBLE_SPAN[0] * diagonal <= span <= PLAUSIBLE_SPAN[1] * diagonal:
        return None
    return [
        f"the cloud spans {span:.4g} units across, but the object spans {diagonal:.4g} "
        "(GET /v1/model, units): if the points are in other units (metres, millimetres), "
        "convert them to the model's units"
    ]


def _better(first: Any, second: Any) -> Any:
    """The better of two refinements (fitness to two decimals, then RMSE), counting the
    hypotheses of both.

    The other one and both one's competitors stay on as competitors when they fit about as well
    (:func:`cloudpose.registration.refine.competes`); the caller's symmetry test decides which
    of them are other answers.
    """
    from cloudpose.registration.refine import competes

    total = first.hypotheses + second.hypotheses
    best, other = (second, first) if _fit_score(second) > _fit_score(first) else (first, second)
    pool = [*best.competitors, *other.competitors, other]
    best.competitors = [item for item in pool if item is not best and competes(item, best)]
    for item in best.competitors:
        item.competitors = []
    best.hypotheses = total
    return best


# What a right pose's residual is made of (the inlier RMSE, on at most REFINE_MAX_POINTS points,
# so more points never make the test stricter):
# * the sensor's scatter about the local surface, estimated from the cloud (surface_noise, on a
#   subsample of at most SCATTER_POINTS points, so its scale stops shrinking as the cloud grows;
#   denser patches keep the surface's own curvature out of the estimate);
# * the object's surface tolerance: how far a real surface lies from its mesh (a smoothed
#   reconstruction, a CAD file the part only approximates, the scanner's calibration). A package
#   parameter (`object add --surface-tolerance`); its default, DEFAULT_SURFACE_TOLERANCE of the
#   diagonal, covers the real scans measured so far: the dragon's laser scans (../shared/real)
#   fit their mesh at 0.09-0.12 % of its diagonal (inlier RMSE, right poses), the bunny's
#   Cyberware scans fit the shipped (decimated) mesh at about 0.35 %.
# A fit is explained when its RMSE is within EXPLAINED_RATIO of sqrt(scatter^2 + tolerance^2):
# right poses sit at a ratio of 0.3-1.2 (the dragon's real scans 0.3-0.4, the bunny's about 1.2;
# the synthetic bench sets 0.9-1.3, their noise being the whole of it); wrong poses that still
# lie near the surface leave the dragon's real scans at 3-4 (about 1 % of the diagonal).
DEFAULT_SURFACE_TOLERANCE = 0.003
EXPLAINED_RATIO = 2.0
SCATTER_POINTS = 4096
# A fit this close (fraction of the diagonal) to a clean cloud is tight (synthetic bench sets:
# clean samples of the surface fit to about 0.0004).
UNEXPLAINED_FLOOR = 0.002
# A fit whose RMSE exceeds the cloud's scatter by this much is loose (right poses on the synthetic
# bench sets: 0.9-1.3).
LOOSE_RATIO = 2.0


class _CloudScatter:
    """What explains a fit's residual: the cloud's own scatter
    (:func:`cloudpose.registration.refine.surface_noise`,
    computed when first needed) and the object's surface tolerance (mesh units)."""

    def __init__(self, cloud: np.ndarray, tolerance: float) -> None:
        self.cloud = cloud
        self.tolerance = float(tolerance)
        self.noise: float | None = None

    def explains(self, refinement: Any, diagonal: float) -> bool:
        """Whether the fit's RMSE is what the cloud's scatter and the surface tolerance explain."""
        return not refinement.refined or self.explains_rmse(refinement.inlier_rmse, diagonal)

    def explains_rmse(self, rmse: float, diagonal: float) -> bool:
        """Whether a fit's inlier RMSE is within :data:`EXPLAINED_RATIO` of the expected residual."""
        if rmse <= EXPLAINED_RATIO * self.tolerance:  # the tolerance alone explains it
            return True
        return rmse <= EXPLAINED_RATIO * self.expected()

    def expected(self) -> float:
        """The RMSE a right pose leaves: sqrt(scatter^2 + tolerance^2), mesh units."""
        return float(np.hypot(self._noise(), self.tolerance))

    def loose(self, refinement: Any, diagonal: float) -> bool:
        """Whether a fit leaves the points farther from the surface than their own scatter does
        (by LOOSE_RATIO, and beyond the tight floor): explained, perhaps, by the surface
        tolerance, but also what a shallow minimum a few degrees off looks like on a clean cloud.
        Such fits are polished (restarted from shifted copies) before the verdict."""
        return (
            refinement.refined
            and refinement.inlier_rmse > UNEXPLAINED_FLOOR * diagonal
            and refinement.inlier_rmse > LOOSE_RATIO * self._noise()
        )

    def incomplete(self, refinement: Any, diagonal: float) -> bool:
        """Whether a close fit leaves part of a clean cloud off the surface: a right pose fits
        a clean cloud whole, a wrong one can fit most of it closely (a box seen face-on, turned
        a quarter). Stray points do the same, so this asks for a wider search, not a verdict."""
        return (
            refinement.refined
            and refinement.fitness < TIGHT_FITNESS
            and refinement.inlier_rmse <= UNEXPLAINED_FLOOR * diagonal
            and self._noise() <= UNEXPLAINED_FLOOR * diagonal
        )

    def _noise(self) -> float:
        if self.noise is None:
            from cloudpose.registration.refine import surface_noise

            self.noise = surface_noise(self.cloud, seed=len(self.cloud), max_points=SCATTER_POINTS)
        return self.noise


def _fit_score(refinement: Any) -> tuple[float, float]:
    """Order of fits: :func:`cloudpose.registration.refine.fit_score` of a refinement."""
    from cloudpose.registration.refine import fit_score

    return fit_score(refinement.fitness, refinement.inlier_rmse)


@dataclass
class Pose:
    """One cloud's pose.

    Attributes:
        rotation: (3, 3) back rotation, ``canonical = observed @ rotation + translation``.
        translation: (3,) back translation.
        object_rotation: (3, 3) ``observed = canonical @ object_rotation + object_translation``.
        object_translation: (3,).
    """

    rotation: np.ndarray
    translation: np.ndarray
    object_rotation: np.ndarray
    object_translation: np.ndarray
    refinement: Any = None
    warnings: list[str] | None = None

    def pose_matrix(self) -> np.ndarray:
        """4x4 object pose for column vectors (as open3d and ROS use): ``[x_obs; 1] = M @ [x_can; 1]``."""
        return column_pose_matrix(self.object_rotation, self.object_translation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
            "pose_matrix": self.pose_matrix().tolist(),
            "quaternion_xyzw": quaternion_xyzw(self.object_rotation.T).tolist(),
            "refined": bool(self.refinement is not None and self.refinement.refined),
            "confidence": None if self.refinement is None else self.refinement.summary(),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }


@dataclass(frozen=True)
class SearchPlan:
    """How far one cloud's pose search goes (the defaults are what ``/v1/pose`` does).

    Attributes:
        wide: how many of the wide rounds a fit still doubtful after the network's starts goes
            on to (the cube's rotations, then starts spread over SO(3)); with fewer, a cloud that
            is not the object is given up on sooner.
        starts: more starting object poses (rotation (3, 3), translation (3,)), screened with
            the network's alternatives when its first estimate fits doubtfully; internal frame
            for :class:`PoseEstimator`, answer frame for :class:`cloudpose.estimation.served.ServedObject`.
        polish: restart the final fit from shifted copies (:func:`cloudpose.registration.refine.polish_pose`).
        lead: the first of ``starts`` is the first estimate, in place of the cloud's own
            point-pair votes (a frame's votes already put it there, and the cloud, cut around
            it, may hold a neighbour's points that its own votes would follow).
    """

    wide: int = 2
    starts: Sequence[tuple[np.ndarray, np.ndarray]] = ()
    polish: bool = False
    lead: bool = False


FULL_SEARCH = SearchPlan()


@dataclass
class _CloudSearch:
    """What one cloud's pose search works from.

    Attributes:
        cloud: (N, 3) the observed cloud.
        sample: (M, 3) the subsample the network (or the principal axes) sees, stray points
            dropped; centroid: (3,) its centroid.
        voted: the point-pair votes' object poses, best first (none with a network).
        plan: how far the search goes.
        half_turns: generator function of the first estimate's alternatives (computed once,
            when first asked for).
        options: the keyword arguments of every :func:`cloudpose.registration.refine.refine_pose`
            call of the search.
        scatter: what explains a fit's residual on this cloud.
    """

    cloud: np.ndarray
    sample: np.ndarray
    centroid: np.ndarray
    voted: list[tuple]
    plan: SearchPlan
    half_turns: Callable[[], Iterator[tuple]]
    options: dict[str, Any]
    scatter: _CloudScatter


class PoseEstimator:
    """An exported cloudpose model loaded into onnxruntime: poses in the model's internal frame.

    :meth:`pose` and :meth:`poses` are the in-process entry points: they check a cloud as the
    HTTP routes do (shape, numbers, NaN/Inf, absurd coordinates, too few or too many points, a
    cloud that cannot fix a pose) and raise the same :class:`cloudpose.io.clouds.CloudError`, with
    the route's status and ``detail``. :meth:`estimate` is the fast path for clouds already
    checked. For answers in an object's file frame and units, as ``/v1/pose`` gives them, use
    :class:`cloudpose.estimator.Estimator`.

    Example::

        estimator = PoseEstimator("model.onnx")
        pose = estimator.pose(points)  # points: (N, 3)
        canonical = points @ pose.rotation + pose.translation

    Args:
        model_path: ``model.onnx``; ``model.json`` and the template must sit beside it.
        threads: onnxruntime intra-op threads.

    Raises:
        ModelLoadError: the model, its sidecar, template or surface is missing or corrupt.
    """

    def __init__(self, model_path: str | Path, threads: int = 1) -> None:
        try:
            metadata, model_bytes = read_model_sidecar(model_path)
        except StoreError as error:
            raise ModelLoadError(str(error)) from error
        model_path = Path(model_path)
        surface = None
        if metadata.get("order_free") and metadata.get("surface"):
            surface_path = model_path.parent / metadata["surface"]["file"]
            try:
                surface = np.load(surface_path, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise ModelLoadError(f"surface model {surface_path} is missing or corrupt") from error
        self._setup(metadata, model_bytes, surface, float(metadata["mesh"]["diagonal"]), threads)
        if not self.order_free:
            template_path = model_path.parent / metadata["template"]["file"]
            try:
                self.template = np.load(template_path, allow_pickle=False).astype(np.float32)
            except (OSError, ValueError) as error:
                raise ModelLoadError(f"template {template_path} is missing or corrupt") from error

    @classmethod
    def for_package(cls, package: ObjectPackage, threads: int = 1) -> PoseEstimator:
        """The estimator of a store package: its network when it has one, else search alone."""
        estimator = cls.__new__(cls)
        try:
            if package.model_path is not None:
                metadata, model_bytes = read_model_sidecar(package.model_path)
            else:
                metadata, model_bytes = {"model_id": f"{package.name}-search", "order_free": True}, None
            surface = package.surface()
        except StoreError as error:
            raise ModelLoadError(str(error)) from error
        estimator._setup(metadata, model_bytes, surface, package.diagonal, threads)
        estimator.view_offset = float(package.tuning.get("view_offset", VIEW_OFFSET))
        if package.surface_tolerance is not None:
            estimator.surface_tolerance = package.surface_tolerance
        near = np.asarray(package.tuning.get("near_symmetries", []), dtype=np.float64).reshape(-1, 3, 3)
        estimator.near_symmetries = near
        estimator.check_views = float(package.tuning.get("ambiguous_views", 0.0)) > 0.0
        if estimator.session is None and estimator.surface is not None:
            from cloudpose.estimation.ppf import PPFModel  # numba: only searches without a network vote

            estimator.ppf = PPFModel(surface[:, :3], surface[:, 3:], package.diagonal)
        try:
            estimator.symmetry = Symmetry.from_dict(package.meta["symmetry"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelLoadError(f"object {package.name}: bad symmetry in its package: {error}") from error
        return estimator

    def _distinct(self, rotation_a: np.ndarray, rotation_b: np.ndarray) -> bool:
        """Whether two object rotations are different answers, the object's symmetries aside."""
        if self.symmetry is None:
            return bool(geodesic_deg(rotation_a, rotation_b) > self.criteria.distinct_degrees)
        return self.symmetry.distinct(rotation_a, rotation_b, self.criteria.distinct_degrees)

    def _setup(
        self,
        metadata: dict[str, Any],
        model_bytes: bytes | None,
        surface: np.ndarray | None,
        diagonal: float,
        threads: int,
    ) -> None:
        self.metadata = metadata
        self.order_free: bool = bool(metadata.get("order_free", False))
        self.template = np.zeros((0, 3), dtype=np.float32)
        self.view_offset = VIEW_OFFSET
        self.near_symmetries = np.zeros((0, 3, 3))
        self.check_views = False
        self.symmetry = None
        self.surface = None
        self.ppf = None
        self.surface_tolerance = DEFAULT_SURFACE_TOLERANCE * diagonal
        if self.order_free and surface is not None:
            from cloudpose.registration.refine import SurfaceModel  # open3d: only order-free models refine

            try:
                self.surface = SurfaceModel.from_array(surface, diagonal)
            except ValueError as error:
                raise ModelLoadError(f"surface model is corrupt: {error}") from error
        self.session = None
        if model_bytes is not None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            try:
                self.session = onnxruntime.InferenceSession(
                    model_bytes, options, providers=["CPUExecutionProvider"]
                )
            except Exception as error:  # onnxruntime raises its own exception types
                raise ModelLoadError(f"onnxruntime could not load the model: {error}") from error
        self.criteria = SEARCH_CRITERIA
        self.model_id: str = metadata["model_id"]
        # Without a network, the search alone answers from this many of the cloud's points.
        self.n_points: int = int(metadata.get("n_points", self.criteria.search_points))

    def check_cloud(self, points: np.ndarray, where: str = "points") -> None:
        """Reject clouds this model cannot answer.

        An exam-setting model needs exactly its template's N points; an order-free model at
        least :data:`MIN_POINTS`.
        """
        if self.order_free:
            if points.shape[0] < MIN_POINTS:
                raise CloudError(
                    422,
                    f"{where} has {points.shape[0]} points; send at least {MIN_POINTS} points of the object",
                )
            return
        if points.shape[0] != self.n_points:
            raise CloudError(
                422,
                f"{where} has {points.shape[0]} points, but this exam-setting model takes exactly "
                f"{self.n_points}: the template's points in the template's order, rigidly posed "
                "(GET /v1/model returns the template)",
            )

    def validated(
        self,
        points: object,
        where: str = "points",
        max_points: int = DEFAULT_MAX_POINTS,
        count_where: str | None = None,
    ) -> np.ndarray:
        """A cloud checked as the HTTP routes check one, or the route's error.

        Args:
            points: (N, 3) array, or a list of [x, y, z] rows.
            where: how error details name the cloud (``"points"``, as ``/v1/pose`` does).
            max_points: the most points accepted (the service's default limit).
            count_where: how the detail about this model's point count names it (default
                ``where``; the batch route says ``clouds[i]`` there, ``clouds[i].points`` else).

        Returns:
            (N, 3) float64, finite, within :data:`cloudpose.io.clouds.MAX_ABS_COORDINATE`, and as many
            points as this model takes.

        Raises:
            CloudError: 422 (or 413 over ``max_points``) with the ``detail`` the routes give.
        """
        from cloudpose.io.clouds import as_cloud, degenerate_reason

        if not isinstance(points, (np.ndarray, list)):
            try:
                points = list(points)  # type: ignore[call-overload]
            except TypeError:
                raise CloudError(422, f"{where} must be a list of [x, y, z] triples") from None
        cloud = as_cloud(points, max_points, where)
        self.check_cloud(cloud, count_where or where)
        reason = degenerate_reason(cloud)
        if reason is not None:
            # The routes answer such a cloud with found: false and this reason; a Pose has no
            # found flag, so here it is an error.
            raise CloudError(422, f"{count_where or where} cannot fix a pose: {reason}")
        return cloud

    def pose(self, points: object, refine: bool = True, max_points: int = DEFAULT_MAX_POINTS) -> Pose:
        """The pose of one cloud, checked first as :meth:`validated` does.

        Args:
            points: (N, 3) observed points (any order, at least :data:`MIN_POINTS` for an
                order-free model; the template's N for an exam-setting one), in the object's units.
            refine: register against the surface after the network (order-free models).
            max_points: the most points accepted.

        Returns:
            The back transform, ``canonical = points @ pose.rotation + pose.translation`` (internal
            frame: the surface centroid at the origin), the object pose and, after refinement,
            the fit's figures (``pose.refinement.summary()``).

        Raises:
            CloudError: a cloud the HTTP routes would refuse, with their status and ``detail``.
        """
        return self.estimate([self.validated(points, max_points=max_points)], refine)[0]

    def poses(
        self, clouds: Sequence[object], refine: bool = True, max_points: int = DEFAULT_MAX_POINTS
    ) -> list[Pose]:
        """Poses of several clouds, each checked first (error details name ``clouds[i]`` as the
        batch route's do).

        Args:
            clouds: each (N_i, 3).
            refine: as :meth:`pose`.
            max_points: as :meth:`pose`.

        Raises:
            CloudError: the first cloud the batch route would refuse, with its ``detail``.
        """
        checked = [
            self.validated(cloud, f"clouds[{index}].points", max_points, count_where=f"clouds[{index}]")
            for index, cloud in enumerate(clouds)
        ]
        return self.estimate(checked, refine)

    def estimate(
        self, clouds: list[np.ndarray], refine: bool = True, plan: SearchPlan = FULL_SEARCH
    ) -> list[Pose]:
        """Poses of clouds, each (N, 3), already checked with :meth:`check_cloud` (the fast path
        for trusted arrays; :meth:`pose` checks them first).

        Args:
            clouds: the observed clouds.
            refine: for order-free models, register each cloud against the surface model after
                the network (exam-setting models are exact without it and never refine).
            plan: how far the search goes (its starts in the internal frame).
        """
        if not clouds:
            return []
        if self.order_free:
            return [self._estimate_order_free(cloud, refine, plan) for cloud in clouds]
        batch = np.stack(clouds).astype(np.float32)  # (B, N, 3)
        rotation_raw, translation = self.session.run(None, {"points": batch})
        object_rotation = project_to_so3(rotation_raw)  # (B, 3, 3)
        object_translation = translation.astype(np.float64)
        back_rotation = object_rotation.transpose(0, 2, 1)
        back_translation = -np.einsum("bi,bij->bj", object_translation, back_rotation)
        return [
            Pose(back_rotation[i], back_translation[i], object_rotation[i], object_translation[i])
            for i in range(len(clouds))
        ]

    def _network(self, sample: np.ndarray, centroid: np.ndarray, turns: np.ndarray) -> list[tuple]:
        """Object poses the network gives for copies of ``sample`` turned about ``centroid``.

        A copy is cloud' = (cloud - c) Q + c, so its pose (R', t') gives R = R' Q^T and
        t = (t' - c) Q^T + c. The network is not rotation-equivariant, so the copies give
        independent estimates.
        """
        if self.session is None:
            return self._principal_guesses(sample, centroid, len(turns))
        copies = (sample - centroid) @ turns + centroid  # (K, M, 3)
        rotation_raw, translation = self.session.run(None, {"points": copies.astype(np.float32)})
        undo = turns.transpose(0, 2, 1)
        rotation = project_to_so3(rotation_raw) @ undo  # (K, 3, 3)
        translation = np.einsum("ki,kij->kj", translation.astype(np.float64) - centroid, undo) + centroid
        return list(zip(rotation, translation, strict=True))

    def _principal_guesses(self, sample: np.ndarray, centroid: np.ndarray, count: int) -> list[tuple]:
        """Without a network: the model's principal axes laid on the cloud's, in the four proper
        sign choices, the object's centre at the cloud's centroid: the first choice in place of
        the network's estimate, the other three in place of its half-turned estimates, none for
        the cube's rotations (the search turns the first guess by them instead)."""
        from cloudpose.registration.refine import principal_axes

        _, cloud_axes = principal_axes(np.asarray(sample, dtype=np.float64))
        signs = [np.diag(d) for d in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))]
        guesses = []
        for sign in signs:
            rotation = self.surface.axes.T @ sign @ cloud_axes
            if np.linalg.det(rotation) < 0:
                rotation = self.surface.axes.T @ (-sign) @ cloud_axes
            guesses.append((rotation, centroid.copy()))
        if count == 1:
            return guesses[:1]
        return guesses[1:] if count == len(HALF_TURNS) else []

    def _estimate_order_free(self, cloud: np.ndarray, refine: bool, plan: SearchPlan = FULL_SEARCH) -> Pose:
        """Network on a subsample, then refinement against the surface, escalating when doubtful.

        Refinement tries more starting poses only when the fit is doubtful: first the network's
        estimates on three half-turned copies (computed lazily), flips and turns; if the fit is
        still poor, the network on the 24 rotations of the cube and the cube's rotations of the
        first estimate. A correct pose fits with fitness near 1, a wrong one clearly lower, so
        easy clouds pay for one network pass and one registration.
        """
        rng = np.random.default_rng(len(cloud))  # the same cloud always gets the same answer
        count = self.n_points
        if refine and self.surface is not None and self.session is not None:
            count = min(count, self.criteria.network_points)
        sample = cloud if len(cloud) <= count else cloud[rng.choice(len(cloud), count, replace=False)]
        sample = drop_stray_points(sample)
        centroid = sample.mean(axis=0)
        voted: list[tuple] = []
        if refine and plan.lead and plan.starts:
            voted = [tuple(plan.starts[0])]
            plan = dataclasses.replace(plan, starts=plan.starts[1:])
        elif refine and self.ppf is not None:
            # Without a network, point-pair features vote for the first pose and its rivals.
            hypotheses = self.ppf.hypotheses(cloud, seed=len(cloud))
            voted = [(rotation, translation) for rotation, translation, _ in hypotheses]
        if voted:
            rotation, translation = voted[0]
        else:
            ((rotation, translation),) = self._network(sample, centroid, CUBE_ROTATIONS[:1])
        refinement = None
        if refine and self.surface is not None:
            search = _CloudSearch(
                cloud=cloud,
                sample=sample,
                centroid=centroid,
                voted=voted,
                plan=plan,
                half_turns=self._half_turns(sample, centroid, voted),
                options={
                    "max_points": self.criteria.refine_max_points,
                    "seed": len(cloud),
                    "distinct": self._distinct,
                },
                scatter=_CloudScatter(cloud, self.surface_tolerance),
            )
            refinement = self._search(search, rotation, translation)
            rotation, translation = refinement.object_rotation, refinement.object_translation
        back_rotation = rotation.T
        warnings = None
        if refinement is not None and not refinement.confident:
            warnings = size_warnings(cloud, self.surface.diagonal)
        return Pose(back_rotation, -translation @ back_rotation, rotation, translation, refinement, warnings)

    def _half_turns(
        self, sample: np.ndarray, centroid: np.ndarray, voted: list[tuple]
    ) -> Callable[[], Iterator[tuple]]:
        """The alternatives to a first estimate, as a generator function that computes them (the
        network on half-turned copies) only when a refinement first asks for them."""
        estimates: list[tuple] = []

        def half_turns() -> Iterator[tuple]:  # a generator: runs only if refinement asks for alternatives
            if not estimates:
                estimates.extend(voted[1:])
                if voted:  # the principal axes' first guess too, which the votes replaced
                    estimates.extend(self._network(sample, centroid, CUBE_ROTATIONS[:1]))
                estimates.extend(self._network(sample, centroid, HALF_TURNS))
            yield from estimates

        return half_turns

    def _search(self, search: _CloudSearch, rotation: np.ndarray, translation: np.ndarray) -> Any:
        """Refinement from the first estimate (object pose), escalating while the fit is doubtful
        or unexplained, and the final checks: the view check, polishing, the verdicts."""
        from cloudpose.registration.refine import refine_pose

        cloud, plan = search.cloud, search.plan
        close: list[np.ndarray] = []  # screened copies that fit about as well as the best
        copies_screened = 0
        if len(self.near_symmetries):
            rotation, translation, close, copies_screened = self._screen_first_copies(
                search, rotation, translation
            )
        refinement = refine_pose(
            cloud,
            self.surface,
            rotation,
            translation,
            alternatives=itertools.chain(plan.starts, search.half_turns()),
            **search.options,
        )
        refinement.hypotheses += copies_screened
        if (
            len(self.near_symmetries)
            and self._tight(refinement)
            and not self._distinct(refinement.object_rotation, rotation)
        ):
            # The best screened copy fits closely: only copies that screened about as well
            # can compete (a view that shows only the symmetric part), and they are finished.
            refinement = self._finish_copies(cloud, refinement, close, search.options)
        else:
            refinement = self._check_near_symmetries(cloud, refinement, search.options)
        refinement = self._wide_rounds(search, refinement, rotation, translation)
        return self._final_checks(search, refinement)

    def _screen_first_copies(
        self, search: _CloudSearch, rotation: np.ndarray, translation: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], int]:
        """The best of the first estimate's near-symmetric copies (the network gives any of them
        alike: they go through the coarse stages together, and the best fit starts the
        refinement).

        Returns:
            The best copy's object pose, the back transforms of the copies that fit about as
            well (:meth:`_rank_copies`), and how many others were screened.
        """
        from cloudpose.registration.refine import DOUBT_FITNESS, object_pose

        cloud, sample, centroid, voted = search.cloud, search.sample, search.centroid, search.voted
        centres = view_centres(cloud, self.surface.diagonal, self.view_offset)

        def with_view_centre(pose: tuple) -> list[tuple]:
            # The network's translation can be off by more than a thin part is thick;
            # a single view's centre lies behind its centroid: the view centre on the
            # side the network puts the object is tried as well.
            near = min(centres[1:], key=lambda point: float(np.linalg.norm(point - pose[1])))
            return [pose, (pose[0], near)]

        estimate = (rotation, translation)
        # Wider and wider until a copy fits well: the network's estimate (or the votes'
        # best few: a near-symmetric copy's own peak is often among them); its estimates
        # on half-turned clouds, which differ; all of them from every view centre.
        first = [estimate]
        if voted:  # the principal axes' first guess beside them: noisy normals vote poorly
            first = [
                *voted[: self.criteria.near_symmetry_votes],
                *self._principal_guesses(sample, centroid, 1),
            ]
        rounds = (
            lambda: [start for pose in first for start in with_view_centre(pose)],
            lambda: [start for pose in search.half_turns() for start in with_view_centre(pose)],
            lambda: [(pose[0], centre) for pose in [estimate, *search.half_turns()] for centre in centres],
        )
        screened = None
        for poses in rounds:
            more = self._screen_copies(cloud, poses(), search.options)
            screened = (
                more
                if screened is None
                else tuple(np.concatenate(pair) for pair in zip(screened, more, strict=True))
            )
            lead, close = self._rank_copies(*screened)
            if budget.expired() or (
                screened[1][lead] >= DOUBT_FITNESS
                and search.scatter.explains_rmse(screened[2][lead], self.surface.diagonal)
            ):
                break
        rotation, translation = object_pose(screened[0][lead])
        return rotation, translation, close, len(screened[0]) - 1

    def _wide_rounds(
        self, search: _CloudSearch, refinement: Any, rotation: np.ndarray, translation: np.ndarray
    ) -> Any:
        """Still doubtful, or a fit the cloud's own scatter does not explain (or that leaves part
        of a clean cloud off the surface): wider rounds of starts, the last one over all of SO(3)
        (every guess near the network's can miss on views that show little of the object).

        Args:
            rotation, translation: the object pose the refinement started from; the wider
                rounds turn it by the cube's rotations.
        """
        from cloudpose.registration.refine import DOUBT_FITNESS, refine_pose

        cloud, scatter, diagonal = search.cloud, search.scatter, self.surface.diagonal

        def wider() -> list[tuple]:
            # The network on the cube's rotations of the cloud, and the cube's rotations of
            # its estimate about the object's axes and about the sensor's axes.
            starts = self._network(search.sample, search.centroid, CUBE_ROTATIONS[1:])
            starts += [(turn @ rotation, translation) for turn in CUBE_ROTATIONS[1:]]
            starts += [(rotation @ turn, translation) for turn in CUBE_ROTATIONS[1:]]
            return starts

        rounds = (wider, lambda: spread_starts(cloud, diagonal, self.view_offset))
        for wide_round, starts in enumerate(rounds[: search.plan.wide]):
            # Copies that fit as well as an answer the cloud's scatter explains are what the
            # view cannot tell apart: they stay candidates, and a wider search would not help.
            unexplained = not scatter.explains(refinement, diagonal)
            unexplained = unexplained or scatter.incomplete(refinement, diagonal)
            # A loose fit (explained by the surface tolerance, not by the cloud's scatter) is
            # what a real part's offset from its mesh looks like, and also a smooth part's
            # shallow wrong minimum: it gets the first wide round, not the whole search.
            loose = wide_round == 0 and scatter.loose(refinement, diagonal)
            unexplained = unexplained or loose
            if (refinement.fitness >= DOUBT_FITNESS and not unexplained) or budget.expired():
                break
            again = refine_pose(
                cloud,
                self.surface,
                refinement.object_rotation,
                refinement.object_translation,
                alternatives=starts(),
                search=False,
                # An unexplained fit may be good enough not to look doubtful: screen regardless.
                doubt_fitness=self.criteria.always_screen if unexplained else None,
                **search.options,
            )
            again = self._check_near_symmetries(cloud, again, search.options)
            refinement = _better(refinement, again)
        return refinement

    def _final_checks(self, search: _CloudSearch, refinement: Any) -> Any:
        """A searched answer's last steps: the view check (objects with ambiguous views),
        polishing (loose fits, or when the plan asks), and the verdicts on its fit."""
        cloud, scatter, diagonal = search.cloud, search.scatter, self.surface.diagonal
        if (
            self.check_views
            and not budget.expired()
            and refinement.refined
            and not self._ambiguous(refinement)
            and self._coverage(cloud, refinement) < self.criteria.whole_coverage
        ):
            refinement = _better(refinement, self._view_check(cloud, refinement, search.options))
        if (
            (search.plan.polish or scatter.loose(refinement, diagonal))
            and refinement.confidence >= self.criteria.polish_confidence
            and scatter.explains(refinement, diagonal)
            and not budget.expired()
        ):
            from cloudpose.registration.refine import polish_pose

            refinement = polish_pose(
                cloud,
                self.surface,
                refinement,
                max_points=search.options["max_points"],
                seed=search.options["seed"],
            )
        refinement.explained = scatter.explains(refinement, diagonal)
        refinement.surface_noise = scatter.noise
        refinement.surface_tolerance = scatter.tolerance
        if cloud_span(cloud) < PLAUSIBLE_SPAN[0] * diagonal:
            # A cloud this much smaller than the object lies closely on some patch of its
            # surface in many poses: no fit of it is evidence of a pose.
            refinement.confidence = 0.0
        return refinement

    def _coverage(self, cloud: np.ndarray, refinement: Any) -> float:
        """Share of the model's surface (a sample of its coarse points) that the posed cloud
        covers: near 1 for a whole cloud, well below for a single view."""
        from scipy.spatial import cKDTree

        model = self.surface.coarse_points[
            :: max(1, len(self.surface.coarse_points) // self.criteria.coverage_points)
        ]
        posed = model @ refinement.object_rotation + refinement.object_translation
        points = cloud if len(cloud) <= 2048 else cloud[:: len(cloud) // 2048 + 1]
        tree = cKDTree(points)
        # A sparse cloud covers the surface with gaps of about its point spacing.
        spacing = float(np.median(tree.query(points[:200], k=2)[0][:, 1]))
        reach = max(self.criteria.coverage_distance * self.surface.diagonal, 2.0 * spacing)
        distance, _ = tree.query(posed, distance_upper_bound=reach)
        return float(np.mean(np.isfinite(distance)))

    def _view_check(self, cloud: np.ndarray, refinement: Any, options: dict[str, Any]) -> Any:
        """Screen turns of a confident answer for another pose that fits as well.

        For objects some of whose views several poses explain (measured when the object was
        added: a box seen on two faces), a good fit alone does not make a pose right: the
        answer's quarter turns about the model's axes, its half turns about the model's and the
        cloud's axes and 40-degree turns are screened beside it, and those that fit about as
        well are finished; any that still does becomes a competitor.
        """
        from cloudpose.registration.refine import object_pose, rotation_about, search_starts

        rotation, translation = refinement.object_rotation, refinement.object_translation
        quarter_turns = [
            (rotation_about(axis, sign * 90.0) @ rotation, translation)
            for axis in self.surface.axes
            for sign in (1.0, -1.0)
        ]
        others = [object_pose(back) for back in search_starts(rotation, translation, self.surface, cloud)]
        return self._screened_rivals(cloud, refinement, [*quarter_turns, *others], options)

    def _screened_rivals(
        self, cloud: np.ndarray, refinement: Any, starts: list[tuple], options: dict[str, Any]
    ) -> Any:
        """Screen other poses beside a finished answer, all at once, and finish those that fit
        better or about as well (:meth:`_rank_copies`); the better fit leads, and finished poses
        that fit about as well as it stay as competitors."""
        from cloudpose.registration.refine import COARSE_ITERATIONS, COARSE_SCHEDULE, screen_starts

        answer = (refinement.object_rotation, refinement.object_translation)
        screened = screen_starts(
            cloud,
            self.surface,
            [answer, *starts],
            points=self.criteria.near_symmetry_points,
            stages=COARSE_SCHEDULE,
            iterations=COARSE_ITERATIONS,
            seed=options["seed"],
        )
        lead, close = self._rank_copies(*screened, limit=self.criteria.max_finished_rivals)
        finish = [back for back in [screened[0][lead], *close] if self._distinct(back[:3, :3], answer[0])]
        refinement = self._finish_copies(cloud, refinement, finish, options)
        refinement.hypotheses += len(starts)
        return refinement

    def _ambiguous(self, refinement: Any) -> bool:
        """Whether another pose, beyond the object's symmetries, fits about as well."""
        return any(
            self._distinct(other.object_rotation, refinement.object_rotation)
            for other in refinement.competitors
        )

    def _screen_copies(
        self, cloud: np.ndarray, poses: list[tuple], options: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bring poses and their near-symmetric copies to the cloud together, and measure them.

        An object that a turn maps nearly onto itself (measured when it was added) fits a cloud
        almost as well in the turned pose, and the network, trained up to those turns, gives
        any of them. The copies go through the coarse stages all at once (one batched ICP) and
        are measured on the same points (a seeded subsample of the cloud, the same for every
        call on one cloud, so screens add up).

        Args:
            poses: object poses (rotation, translation) whose copies are screened.

        Returns:
            Back transforms (K, 4, 4) after the coarse stages, their fitness (K,) and RMSE (K,).
        """
        from cloudpose.registration.refine import COARSE_ITERATIONS, COARSE_SCHEDULE, screen_starts

        turns = [np.eye(3), *self.near_symmetries]
        starts = [(turn @ rotation, translation) for rotation, translation in poses for turn in turns]
        return screen_starts(
            cloud,
            self.surface,
            starts,
            points=self.criteria.near_symmetry_points,
            stages=COARSE_SCHEDULE,
            iterations=COARSE_ITERATIONS,
            seed=options["seed"],
        )

    def _rank_copies(
        self, backs: np.ndarray, fitness: np.ndarray, rmse: np.ndarray, limit: int | None = None
    ) -> tuple[int, list[np.ndarray]]:
        """The index of the best screened pose, and the back transforms of at most ``limit``
        (default: as many as near symmetries) other poses that fit about as well (fitness within
        ``criteria.copy_fitness_margin``, RMSE within ``criteria.copy_rmse_ratio`` times): worth
        finishing, since the view may not tell them apart."""
        from cloudpose.registration.refine import fit_score

        order = sorted(range(len(backs)), key=lambda k: fit_score(fitness[k], rmse[k]), reverse=True)
        lead = order[0]
        close: list[np.ndarray] = []
        for k in order[1:]:
            if (
                len(close) < (len(self.near_symmetries) if limit is None else limit)
                and fitness[k] >= fitness[lead] - self.criteria.copy_fitness_margin
                and rmse[k] <= self.criteria.copy_rmse_ratio * rmse[lead]
                and all(self._distinct(backs[k][:3, :3], other[:3, :3]) for other in [backs[lead], *close])
            ):
                close.append(backs[k])
        return lead, close

    def _tight(self, refinement: Any) -> bool:
        """Whether a fit is nearly complete and close: a clean cloud in its right pose."""
        return (
            refinement.fitness >= TIGHT_FITNESS
            and refinement.inlier_rmse <= UNEXPLAINED_FLOOR * self.surface.diagonal
        )

    def _finish_copies(
        self, cloud: np.ndarray, refinement: Any, close: list[np.ndarray], options: dict[str, Any]
    ) -> Any:
        """Refine the screened copies that fit about as well; the better fit leads, and copies
        that fit about as well as the final answer stay as its competitors."""
        from cloudpose.registration.refine import object_pose, refine_pose

        for back in close:
            other = refine_pose(cloud, self.surface, *object_pose(back), doubt_fitness=0.0, **options)
            refinement = _better(refinement, other)
        return refinement

    def _check_near_symmetries(self, cloud: np.ndarray, refinement: Any, options: dict[str, Any]) -> Any:
        """Screen a finished answer's near-symmetric copies beside it (a turned copy of a
        converged pose starts close to the other copy's optimum), and finish those that fit
        better or about as well."""
        if not len(self.near_symmetries) or not refinement.refined or budget.expired():
            return refinement
        if self._tight(refinement) and self._coverage(cloud, refinement) >= self.criteria.whole_coverage:
            # A whole cloud fitting this closely: a near-symmetric copy differs from it by more
            # than the fit's error (else it would be an exact symmetry), so none can compete.
            return refinement
        rotation, translation = refinement.object_rotation, refinement.object_translation
        copies = [(turn @ rotation, translation) for turn in self.near_symmetries]
        return self._screened_rivals(cloud, refinement, copies, options)

    def describe(self) -> dict[str, Any]:
        """Public metadata for ``GET /v1/model``."""
        meta = self.metadata
        description = {
            "model_id": self.model_id,
            "kind": meta["kind"],
            "order_free": self.order_free,
            "n_points": self.n_points,
            "convention": meta["convention"],
            "response_convention": (
                "rotation/translation: canonical = points @ rotation + translation (row vectors); "
                "pose_matrix: 4x4 object pose for column vectors, [x_obs; 1] = M [x_can; 1]; "
                "quaternion_xyzw: the rotation of pose_matrix, scalar last"
            ),
            "units": meta["units"],
            "mesh": meta["mesh"],
            "metrics": meta.get("training", {}).get("validation", {}),
            "evaluation": meta.get("evaluation"),
        }
        if self.order_free:
            description["input_requirement"] = (
                f"any order and any size from {MIN_POINTS} points; larger clouds are subsampled to "
                f"{min(self.n_points, self.criteria.network_points)} points for the network when refinement "
                f"follows ({self.n_points} without it), and to at most {self.criteria.refine_max_points} for "
                "refinement"
            )
            description["refinement"] = self.surface is not None
        if not self.order_free:
            description["input_requirement"] = (
                f"exam setting: send exactly {self.n_points} points, the template's points in the "
                "template's order, rigidly posed; other clouds are rejected with 422"
            )
            description["template"] = self.template.tolist()
        return description
