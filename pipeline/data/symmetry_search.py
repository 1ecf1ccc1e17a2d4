"""Finding an object's rotational symmetries, and the ADD-S pose error that ignores them.

Convention as in :mod:`cloudpose.geometry.symmetry`: row vectors, ``observed = X @ R + t`` for canonical
points ``X (N, 3)`` centred at the surface centroid; a proper rotation ``S`` is a symmetry when
``X @ S`` is the same surface as ``X``, so ``S @ R`` is an equally valid object rotation.

:func:`find_symmetry` proposes axes through the centroid and tests rotations about them against the
surface itself:

* candidate axes: the principal axes of the exact surface second moments, the dominant
  area-weighted face-normal directions (binned on a Fibonacci sphere), their pairwise sums,
  differences and cross products (edge-midpoint and edge axes of a cube), and directions from the
  centroid to the farthest vertices (corner axes), deduplicated within 1.5°;
* a rotation passes when the 95th percentile of the distances from the rotated seeded surface
  sample to the mesh surface is at most ``tolerance`` × diagonal. The distances are exact
  point-to-triangle distances to the triangles near each point (found through a k-d tree of face
  centroids and a denser area sample), so the sample's own spacing does not blur the test: on a
  cube sampled 4000 times, the 95th percentile of the distances to the nearest other sample point
  is about 2% of the diagonal, twice the default tolerance. A cheap first pass on 64 points screens
  every candidate at once;
* an axis is continuous when rotations by 23°, 71° and 137° all pass; otherwise rotations by 360°/k,
  k = 2..12, are tried. Passing rotations are refined by rotation-only point-to-plane ICP, rebuilt
  with their exact angle, and added greedily (highest order first) while the group they generate,
  closed by products and deduplicated within 1°, still passes element by element; the group is
  then made exactly closed by averaging over its multiplication table;
* for a continuous axis the axis is refitted (a surface of revolution has every normal in the plane
  through the axis, ``axis · (p × n) = 0``), and one half-turn perpendicular to it is kept when any
  passes: the others differ from it by a rotation about the axis.
"""

from __future__ import annotations

import math

import numpy as np

from cloudpose.geometry.rotations import axis_rotation
from cloudpose.geometry.symmetry import Symmetry
from pipeline.data.mesh import Mesh, sample_surface

CONTINUOUS_ANGLES_DEG = (23.0, 71.0, 137.0)  # unrelated to each other and to 360/k for small k
MAX_FOLD = 12
PERCENTILE = 95.0
SCREEN_POINTS = 64
# A symmetry leaves at most 5% of the points beyond tolerance; 25% of 64 would not happen by chance.
SCREEN_MAX_FAR_FRACTION = 0.25
DEDUP_AXIS_DEG = 1.5
DEDUP_ROTATION_DEG = 1.0
MAX_GROUP_ORDER = 60  # icosahedral; dihedral groups with k <= 12 stay below it
NORMAL_BINS = 2000
MAX_NORMAL_PEAKS = 10
MAX_VERTEX_AXES = 32
NEAR_TRIANGLES = 6
ICP_POINTS = 2000
ICP_ITERATIONS = 12


def find_symmetry(mesh: Mesh, tolerance: float = 0.01, samples: int = 4000, seed: int = 0) -> Symmetry:
    """The proper rotational symmetries of a mesh, within ``tolerance`` of its diagonal.

    A sphere-like mesh (continuous about more than one axis) has no rotation group this format can
    hold; it gets the best continuous axis found, with its half-turns.

    Args:
        mesh: the object in its canonical frame (centroid at the origin).
        tolerance: fraction of the diagonal; a rotation is a symmetry when 95% of the rotated
            surface sample lies within this distance of the surface.
        samples: size of the seeded surface sample that is rotated and tested.
        seed: seeds the sample; the result depends only on the mesh and these arguments.

    Raises:
        ValueError: a tolerance that is not positive, or fewer than 2000 samples.

    Returns:
        The symmetry: identity first, then the rest of the finite group (or the half-turn that
        flips a continuous axis).
    """
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive fraction of the diagonal, got {tolerance}")
    if samples < ICP_POINTS:
        raise ValueError(f"samples must be at least {ICP_POINTS}, got {samples}")
    rng = np.random.default_rng(seed)
    surface = _Surface(mesh, rng, reference_count=5 * samples)
    sample = sample_surface(mesh, samples, rng)  # (P, 3)
    threshold = tolerance * mesh.diagonal
    axes = _candidate_axes(mesh, surface)  # (A, 3)
    axis = _continuous_axis(surface, sample, axes, threshold)
    if axis is not None:
        return _continuous_symmetry(surface, sample, axis, threshold, tolerance)
    return _discrete_symmetry(surface, sample, axes, threshold, tolerance)


def add_s_percent(
    model_points: np.ndarray,
    pred_rotation: np.ndarray,
    pred_translation: np.ndarray,
    gt_rotation: np.ndarray,
    gt_translation: np.ndarray,
    diameter: float,
) -> float:
    """ADD-S (the closest-point average distance of BOP and LINEMOD) as a percentage of the diameter.

    The mean, over the model points posed with the ground truth (``X @ R_gt + t_gt``), of the
    distance to the closest model point posed with the estimate (``X @ R_pred + t_pred``), as
    bop_toolkit's ``adi``. It is zero for every pose that a symmetry of the point set maps to the
    ground truth.

    Args:
        model_points: (M, 3) canonical model points.
        pred_rotation, gt_rotation: (3, 3) object rotations.
        pred_translation, gt_translation: (3,) object translations.
        diameter: the object's diameter (see :func:`object_diameter`), in the points' units.

    Returns:
        ADD-S in percent of ``diameter``.
    """
    from scipy.spatial import cKDTree

    model_points = np.asarray(model_points, np.float64)
    pred_points = model_points @ np.asarray(pred_rotation, np.float64) + np.asarray(
        pred_translation, np.float64
    )
    gt_points = model_points @ np.asarray(gt_rotation, np.float64) + np.asarray(gt_translation, np.float64)
    distances, _ = cKDTree(pred_points).query(gt_points, k=1)
    return float(distances.mean() / diameter * 100.0)


def object_diameter(points: np.ndarray) -> float:
    """Largest distance between two of the points.

    Exact: the farthest pair are vertices of the convex hull (scipy's Qhull). Flat or collinear
    sets, which Qhull rejects, are retried with joggled input (``QJ``, whose hull vertices are still
    input points), then compared pairwise.

    Args:
        points: (M, 3).
    """
    from scipy.spatial import ConvexHull, QhullError

    points = np.asarray(points, np.float64)
    candidates = points
    for options in (None, "QJ"):
        try:
            candidates = points[ConvexHull(points, qhull_options=options).vertices]
            break
        except (QhullError, ValueError):
            continue
    return _largest_pairwise_distance(candidates)


def _largest_pairwise_distance(points: np.ndarray, chunk: int = 2048) -> float:
    """Brute force in chunks, so memory stays at ``chunk`` × M distances."""
    largest = 0.0
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]  # (c, 3)
        squared = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)  # (c, M)
        largest = max(largest, float(squared.max()))
    return math.sqrt(largest)


class _Surface:
    """Exact distances from points to a mesh surface, through a k-d tree of points on its triangles.

    The tree holds every face centroid (so each small triangle has a point) and an area-weighted
    sample (so each large triangle has many); a query point is compared exactly with the triangles
    of its ``NEAR_TRIANGLES`` nearest tree points and keeps the closest. Degenerate faces carry no
    surface and are dropped.
    """

    def __init__(self, mesh: Mesh, rng: np.random.Generator, reference_count: int) -> None:
        from scipy.spatial import cKDTree

        areas = mesh.face_areas
        keep = areas > areas.max() * 1e-12
        self.corners = mesh.vertices[mesh.faces[keep]]  # (F, 3, 3)
        self.areas = areas[keep]  # (F,)
        self.edges_ab = self.corners[:, 1] - self.corners[:, 0]  # (F, 3)
        self.edges_ac = self.corners[:, 2] - self.corners[:, 0]  # (F, 3)
        cross = np.cross(self.edges_ab, self.edges_ac)
        self.normals = cross / np.linalg.norm(cross, axis=1, keepdims=True)  # (F, 3)
        self.grams = np.stack(
            [
                (self.edges_ab * self.edges_ab).sum(axis=1),
                (self.edges_ab * self.edges_ac).sum(axis=1),
                (self.edges_ac * self.edges_ac).sum(axis=1),
            ],
            axis=1,
        )  # (F, 3)
        face_index = rng.choice(len(self.areas), size=reference_count, p=self.areas / self.areas.sum())
        u, v = rng.random((2, reference_count))
        outside = u + v > 1
        u[outside], v[outside] = 1 - u[outside], 1 - v[outside]
        a, b, c = (self.corners[face_index, k] for k in range(3))
        references = np.concatenate(
            [self.corners.mean(axis=1), a + u[:, None] * (b - a) + v[:, None] * (c - a)]
        )
        self.reference_face = np.concatenate([np.arange(len(self.areas)), face_index])
        self.tree = cKDTree(references)

    def closest(
        self, points: np.ndarray, near: int = NEAR_TRIANGLES
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distance, closest surface point and its face for each point.

        Args:
            points: (N, 3).

        Returns:
            distances (N,), closest points (N, 3), face indices (N,).
        """
        _, reference = self.tree.query(points, k=near, workers=-1)  # (N, near)
        faces = np.sort(self.reference_face[reference], axis=1)  # (N, near)
        # Neighbouring tree points often lie on one large triangle; each pair is computed once.
        first = np.ones(faces.shape, dtype=bool)
        first[:, 1:] = faces[:, 1:] != faces[:, :-1]
        rows, columns = np.nonzero(first)
        pair_faces = faces[rows, columns]  # (P,)
        offsets = points[rows] - self.corners[pair_faces, 0]  # (P, 3)
        edges_ab, edges_ac = self.edges_ab[pair_faces], self.edges_ac[pair_faces]
        s, t = _closest_on_triangles(offsets, edges_ab, edges_ac, self.grams[pair_faces])
        gaps = offsets - s[:, None] * edges_ab - t[:, None] * edges_ac  # (P, 3): point - closest
        distances = np.full(faces.shape, np.inf)
        distances[rows, columns] = np.linalg.norm(gaps, axis=1)
        pair_index = np.zeros(faces.shape, dtype=np.int64)
        pair_index[rows, columns] = np.arange(len(rows))
        every = np.arange(len(points))
        nearest = np.argmin(distances, axis=1)  # (N,)
        best = pair_index[every, nearest]
        return distances[every, nearest], points - gaps[best], pair_faces[best]

    def distances(self, points: np.ndarray, rotations: np.ndarray) -> np.ndarray:
        """(R, N) distances of ``points @ rotations[r]`` from the surface, for (N, 3) and (R, 3, 3)."""
        moved = np.einsum("nj,rjk->rnk", points, rotations).reshape(-1, 3)  # (R*N, 3)
        return self.closest(moved)[0].reshape(len(rotations), len(points))

    def percentile(self, points: np.ndarray, rotations: np.ndarray) -> np.ndarray:
        """(R,) 95th percentile of the distances, the test statistic."""
        return np.percentile(self.distances(points, rotations), PERCENTILE, axis=1)

    def screen(
        self, points: np.ndarray, rotations: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """A cheap first pass: which rotations might be symmetries, and how well they fit.

        Returns:
            (R,) bool, False where too many points are far for a symmetry; (R,) the 95th
            percentile of the distances, to try the best first.
        """
        distances = self.distances(points, rotations)  # (R, n)
        plausible = (distances > threshold).mean(axis=1) <= SCREEN_MAX_FAR_FRACTION
        return plausible, np.percentile(distances, PERCENTILE, axis=1)


def _closest_on_triangles(
    offsets: np.ndarray, edges_ab: np.ndarray, edges_ac: np.ndarray, grams: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric coordinates of the closest point of each triangle (Ericson, RTCD 5.1.5).

    The closest point is ``a + s ab + t ac``. Only two dot products per pair depend on the point;
    the rest of Ericson's six come from each triangle's Gram matrix.

    Args:
        offsets: (M, 3) points minus the triangles' first corners ``p - a``.
        edges_ab, edges_ac: (M, 3) triangle edges ``b - a`` and ``c - a``.
        grams: (M, 3) ``ab·ab``, ``ab·ac``, ``ac·ac``.

    Returns:
        s (M,), t (M,).
    """
    d1 = (edges_ab * offsets).sum(axis=1)
    d2 = (edges_ac * offsets).sum(axis=1)
    ab_ab, ab_ac, ac_ac = grams.T
    d3, d4 = d1 - ab_ab, d2 - ab_ac
    d5, d6 = d1 - ab_ac, d2 - ac_ac
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        # Every region's coordinates are computed; those of regions a point is not in may be 0/0.
        denominator = va + vb + vc
        s, t = vb / denominator, vc / denominator
        w_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        t_ac = d2 / (d2 - d6)
        s_ab = d1 / (d1 - d3)
    # Lowest priority first, so the later (corner) regions win as the reference's early returns do.
    regions = [
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), 1.0 - w_bc, w_bc),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), 0.0, t_ac),
        ((d6 >= 0) & (d5 <= d6), 0.0, 1.0),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), s_ab, 0.0),
        ((d3 >= 0) & (d4 <= d3), 1.0, 0.0),
        ((d1 <= 0) & (d2 <= 0), 0.0, 0.0),
    ]
    for inside, region_s, region_t in regions:
        s, t = np.where(inside, region_s, s), np.where(inside, region_t, t)
    return s, t


def _candidate_axes(mesh: Mesh, surface: _Surface) -> np.ndarray:
    """(A, 3) unit directions through the centroid that might be symmetry axes, deduplicated."""
    corners, areas = surface.corners, surface.areas
    # Exact second moment of each triangle: area/12 (a aᵀ + b bᵀ + c cᵀ + s sᵀ), s = a + b + c.
    sums = corners.sum(axis=1)  # (F, 3)
    moment = np.einsum("f,fki,fkj->ij", areas, corners, corners) + np.einsum("f,fi,fj->ij", areas, sums, sums)
    principal = np.linalg.eigh(moment)[1].T  # (3, 3) rows

    peaks = _normal_peaks(surface.normals, areas)  # (P, 3)
    first, second = np.triu_indices(len(peaks), k=1)
    pairs = np.concatenate(
        [
            peaks[first] + peaks[second],
            peaks[first] - peaks[second],
            np.cross(peaks[first], peaks[second]),
        ]
    )

    radii = np.linalg.norm(mesh.vertices, axis=1)
    farthest = mesh.vertices[np.argsort(-radii)[: 20 * MAX_VERTEX_AXES]]
    vertex_axes = _spread_axes(farthest, MAX_VERTEX_AXES)

    candidates = np.concatenate([principal, peaks, pairs, vertex_axes])
    return _dedup_axes(candidates, DEDUP_AXIS_DEG)


def _normal_peaks(normals: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """(P, 3) dominant face-normal directions: area-weighted peaks of a Fibonacci-sphere histogram.

    Normals and their opposites both vote, since an axis has no sign; each peak is refined to the
    area-weighted mean of the normals within 6° of it.
    """
    from scipy.spatial import cKDTree

    bins = _fibonacci_sphere(NORMAL_BINS)  # (B, 3)
    votes = np.concatenate([normals, -normals])
    weights = np.concatenate([areas, areas])
    histogram = np.bincount(cKDTree(bins).query(votes, workers=-1)[1], weights=weights, minlength=len(bins))
    order = np.argsort(-histogram)
    order = order[histogram[order] >= 0.01 * weights.sum()]
    cone = math.cos(math.radians(6.0))
    peaks: list[np.ndarray] = []
    for index in order:
        if len(peaks) >= MAX_NORMAL_PEAKS:
            break
        near = votes @ bins[index] >= cone
        direction = (votes[near] * weights[near, None]).sum(axis=0)
        direction /= np.linalg.norm(direction)
        if all(abs(direction @ peak) < math.cos(math.radians(DEDUP_AXIS_DEG)) for peak in peaks):
            peaks.append(direction)
    return np.array(peaks).reshape(-1, 3)


def _fibonacci_sphere(count: int) -> np.ndarray:
    """(count, 3) nearly even unit directions."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    azimuth = np.pi * (1.0 + math.sqrt(5.0)) * index
    ring = np.sqrt(1.0 - z**2)
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)


def _spread_axes(points: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` directions to ``points`` (in order of preference), spread by farthest-point choice."""
    norms = np.linalg.norm(points, axis=1)
    directions = points[norms > 0] / norms[norms > 0, None]
    if len(directions) == 0:
        return np.empty((0, 3))
    chosen = [0]
    # |cos| to the nearest chosen axis, sign-free; the next pick is the least aligned direction.
    alignment = np.abs(directions @ directions[0])
    while len(chosen) < count:
        index = int(np.argmin(alignment))
        if alignment[index] > math.cos(math.radians(DEDUP_AXIS_DEG)):
            break
        chosen.append(index)
        alignment = np.maximum(alignment, np.abs(directions @ directions[index]))
    return directions[chosen]


def _dedup_axes(directions: np.ndarray, degrees: float) -> np.ndarray:
    """Unit directions, first of each group within ``degrees`` (sign-free), with a canonical sign."""
    norms = np.linalg.norm(directions, axis=1)
    directions = directions[norms > 1e-9] / norms[norms > 1e-9, None]
    cone = math.cos(math.radians(degrees))
    kept: list[np.ndarray] = []
    for direction in directions:
        if all(abs(direction @ axis) < cone for axis in kept):
            kept.append(_canonical_sign(direction))
    return np.array(kept).reshape(-1, 3)


def _canonical_sign(direction: np.ndarray) -> np.ndarray:
    """The direction with its largest-magnitude component positive, so results do not depend on signs."""
    return direction if direction[np.argmax(np.abs(direction))] > 0 else -direction


def _rotation_axis(rotation: np.ndarray) -> np.ndarray:
    """(3,) unit axis of a non-identity rotation: the null direction of ``rotation - I``."""
    return np.linalg.svd(rotation - np.eye(3))[2][-1]


def _refine_rotation(
    surface: _Surface, points: np.ndarray, rotation: np.ndarray, threshold: float
) -> np.ndarray:
    """Rotation-only point-to-plane ICP of ``points @ rotation`` onto the surface.

    The centroid is fixed by every symmetry, so there is no translation to fit. Points beyond twice
    the test threshold, or beyond four times the median distance, are left out: their closest
    triangle may belong to another part.
    """
    for _ in range(ICP_ITERATIONS):
        moved = points @ rotation  # (N, 3)
        distances, closest, faces = surface.closest(moved)
        # A point near an edge can miss its own triangle and report the neighbour's, which would
        # bias the fit at the last digits; trimming at a few medians drops those.
        scale = max(4.0 * float(np.median(distances)), 1e-9 * threshold)
        inlier = distances <= min(2.0 * threshold, scale)
        if inlier.sum() < 6:
            break
        normals, moved, closest = surface.normals[faces[inlier]], moved[inlier], closest[inlier]
        # moved @ expm(K(w)) ≈ moved + moved × w, so the normal residual is d + w · (n × moved).
        residual = ((moved - closest) * normals).sum(axis=1)
        jacobian = np.cross(normals, moved)
        step = np.linalg.lstsq(jacobian, -residual, rcond=1e-9)[0]
        angle = float(np.linalg.norm(step))
        if angle > 0:
            rotation = rotation @ axis_rotation(step, angle).T
        if angle < 1e-12:
            break
    return rotation


def _rotation_close(rotation: np.ndarray, group: list[np.ndarray], degrees: float) -> bool:
    """Whether ``rotation`` is within ``degrees`` of a member of ``group`` (trace test)."""
    limit = 1.0 + 2.0 * math.cos(math.radians(degrees))
    return any(float(np.sum(rotation * member)) > limit for member in group)


def _close_group(generators: list[np.ndarray]) -> list[np.ndarray] | None:
    """Every product of the generators, identity first, deduplicated within 1°; None past 60 elements."""
    group = [np.eye(3)]
    queue = [np.eye(3)]
    while queue:
        element = queue.pop(0)
        for generator in generators:
            product = element @ generator
            if not _rotation_close(product, group, DEDUP_ROTATION_DEG):
                group.append(product)
                queue.append(product)
                if len(group) > MAX_GROUP_ORDER:
                    return None
    return group


def _exact_group(group: list[np.ndarray], iterations: int = 6) -> np.ndarray:
    """The nearest exactly closed group to nearly closed rotations, (K, 3, 3).

    With the multiplication table ``g_i @ g_j ≈ g_table[i, j]``, each element is replaced by the
    rotation nearest to the mean of ``g_hᵀ @ g_table[h, j]`` over ``h``; an exact group is a fixed
    point, and the error of a nearly exact one squares with each pass.
    """
    elements = np.array(group)  # (K, 3, 3)
    products = np.einsum("iab,jbc->ijac", elements, elements)  # (K, K, 3, 3)
    table = np.argmax(np.einsum("ijac,kac->ijk", products, elements), axis=2)  # (K, K)
    for _ in range(iterations):
        means = np.einsum("hba,hjbc->jac", elements, elements[table]) / len(elements)  # (K, 3, 3)
        u, _, vt = np.linalg.svd(means)
        flip = np.sign(np.linalg.det(u @ vt))
        u[:, :, -1] *= flip[:, None]
        elements = u @ vt
        elements[0] = np.eye(3)  # its mean is exactly the identity; the SVD leaves 1e-19 residue
    return elements


def _continuous_axis(
    surface: _Surface, sample: np.ndarray, axes: np.ndarray, threshold: float
) -> np.ndarray | None:
    """The best-screened axis about which rotations by all ``CONTINUOUS_ANGLES_DEG`` pass, or None."""
    angles = np.deg2rad(CONTINUOUS_ANGLES_DEG)
    rotations = np.stack([[axis_rotation(axis, angle) for angle in angles] for axis in axes])  # (A, C, 3, 3)
    plausible, scores = surface.screen(sample[:SCREEN_POINTS], rotations.reshape(-1, 3, 3), threshold)
    plausible = plausible.reshape(len(axes), len(angles)).all(axis=1)
    scores = scores.reshape(len(axes), len(angles)).max(axis=1)
    for index in sorted(np.flatnonzero(plausible), key=lambda index: scores[index]):
        if (surface.percentile(sample, rotations[index]) <= threshold).all():
            return axes[index]
    return None


def _discrete_symmetry(
    surface: _Surface, sample: np.ndarray, axes: np.ndarray, threshold: float, tolerance: float
) -> Symmetry:
    """Rotations by 360°/k about the axes, added greedily while the group they generate passes.

    Highest orders are tried first, so a half-turn that a quarter-turn already generates costs
    nothing; each accepted generator is refined (ICP), rebuilt with its exact angle, and kept only
    when every new element of the closed group passes the full test.
    """
    folds = np.arange(2, MAX_FOLD + 1)
    rotations = np.stack([[axis_rotation(axis, 2 * np.pi / fold) for fold in folds] for axis in axes])
    plausible, scores = surface.screen(sample[:SCREEN_POINTS], rotations.reshape(-1, 3, 3), threshold)
    candidates = sorted(
        np.flatnonzero(plausible), key=lambda index: (-folds[index % len(folds)], scores[index])
    )

    icp_points = sample[:ICP_POINTS]
    accepted: list[np.ndarray] = []
    group = [np.eye(3)]
    for index in candidates:
        axis, fold = axes[index // len(folds)], int(folds[index % len(folds)])
        rotation = rotations.reshape(-1, 3, 3)[index]
        if _rotation_close(rotation, group, DEDUP_ROTATION_DEG):
            continue
        if surface.percentile(sample, rotation[None])[0] > threshold:
            continue
        refined_axis = _rotation_axis(_refine_rotation(surface, icp_points, rotation, threshold))
        if refined_axis @ axis < 0:
            refined_axis = -refined_axis
        if refined_axis @ axis < math.cos(math.radians(3.0)):
            refined_axis = axis  # ICP slid to another part of the surface; the unrefined axis passed
        generator = axis_rotation(refined_axis, 2 * np.pi / fold)
        candidate = _close_group(accepted + [generator])
        if candidate is None:
            continue
        new = [element for element in candidate if not _rotation_close(element, group, DEDUP_ROTATION_DEG)]
        if not new:
            continue  # refinement moved it onto a rotation the group already has
        if (surface.percentile(sample, np.array(new)) <= threshold).all():
            accepted.append(generator)
            group = candidate
    return Symmetry(rotations=_exact_group(group), tolerance=tolerance)


def _revolution_axis(surface: _Surface, guess: np.ndarray) -> np.ndarray:
    """Least-squares axis of a surface of revolution near ``guess``: ``axis · (p × n) ≈ 0``.

    On a surface of revolution every normal lies in the plane through the axis and its point. The
    integral of ``(p × n)(p × n)ᵀ`` over each triangle is exact, ``[n]ₓ (∫ p pᵀ) [n]ₓᵀ``, so a
    faceted body with an exact k-fold symmetry gets its axis exactly; a random sample would not.
    """
    corners, normals = surface.corners, surface.normals
    sums = corners.sum(axis=1)  # (F, 3)
    moments = (np.einsum("fki,fkj->fij", corners, corners) + np.einsum("fi,fj->fij", sums, sums)) * (
        surface.areas / 12.0
    )[:, None, None]  # (F, 3, 3): ∫ p pᵀ dA per triangle
    x, y, z = normals.T
    zero = np.zeros_like(x)
    skews = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=1).reshape(-1, 3, 3)  # (F, 3, 3): [n]ₓ
    scatter = np.einsum("fai,fij,fbj->ab", skews, moments, skews)  # Σ [n]ₓ M [n]ₓᵀ
    eigenvectors = np.linalg.eigh(scatter)[1].T  # rows
    # A sphere makes every direction fit; then the guess decides among them.
    best = eigenvectors[int(np.argmax(np.abs(eigenvectors @ guess)))]
    return best if best @ guess > 0 else -best


def _continuous_symmetry(
    surface: _Surface, sample: np.ndarray, guess: np.ndarray, threshold: float, tolerance: float
) -> Symmetry:
    """The continuous axis, refitted, and a half-turn flipping it when one passes."""
    axis = _revolution_axis(surface, guess)
    spins = np.stack([axis_rotation(axis, angle) for angle in np.deg2rad(CONTINUOUS_ANGLES_DEG)])
    if not (surface.percentile(sample, spins) <= threshold).all():
        axis = guess  # the refit left the surface (not a clean surface of revolution)
    axis = _canonical_sign(axis)

    # Every direction perpendicular to the axis is a half-turn axis if one is (they differ by a
    # rotation about the axis); a few directions guard against a tessellation that favours some.
    helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
    first = np.cross(axis, helper)
    first /= np.linalg.norm(first)
    second = np.cross(axis, first)
    azimuths = np.deg2rad(np.arange(0.0, 180.0, 30.0))
    perpendiculars = np.cos(azimuths)[:, None] * first + np.sin(azimuths)[:, None] * second  # (6, 3)
    half_turns = np.stack([axis_rotation(direction, np.pi) for direction in perpendiculars])
    plausible, scores = surface.screen(sample[:SCREEN_POINTS], half_turns, threshold)
    rotations = [np.eye(3)]
    for index in sorted(np.flatnonzero(plausible), key=lambda index: scores[index]):
        if surface.percentile(sample, half_turns[index][None])[0] <= threshold:
            rotations.append(half_turns[index])
            break
    return Symmetry(rotations=np.array(rotations), axis=axis, tolerance=tolerance)
