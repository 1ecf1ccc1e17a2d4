"""Point-pair features: global pose hypotheses without training (Drost et al. 2010, "Model
Globally, Match Locally", with tricks of Hinterstoisser et al. 2016 and Vidal et al. 2018).

Convention: row vectors, as everywhere in cloudpose. A hypothesis is an object pose
``observed = canonical @ rotation + translation`` in the surface model's internal frame (its
centroid at the origin), so ``translation`` is where the object's centre lies in the cloud.

The model: the object's surface (points with outward normals) is subsampled on a voxel grid of
``PPFSettings.sampling`` of the diagonal; every ordered pair of its points within the object's
diameter gives a feature ``F = (|d|, angle(n1, d), angle(n2, d), angle(n1, n2))``, quantized into
a dense table, and the angle ``alpha_m`` that turns the pair's second point into a fixed
half-plane once the first point sits at the origin with its normal along +x.

Voting: the cloud is subsampled the same way and given normals (oriented towards a viewpoint on
either side of its thinnest axis, since a single view's sensor is on one of them; and away from
its centroid, for whole clouds). Each reference point pairs with every other point within the
diameter; each pair looks up the model pairs with the same feature (and the neighbouring bins of
the distance and the angles, against noise) and votes for (model point, rotation about x). A
pair votes once per (model point, angle bin). The peak of each reference's accumulator is a
pose; poses are clustered, and the clusters with the most votes are the hypotheses.

numba compiles the loops (``cache=True``: the first call in a fresh install compiles them, later
processes load them from the cache).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import open3d as o3d
from numba import njit


@dataclass(frozen=True)
class PPFSettings:
    """Knobs of the point-pair-feature search (fractions of the object's diagonal).

    Attributes:
        sampling: voxel of the model's and the cloud's subsampling; also the distance step.
        angle_bins: bins of each feature angle and of the rotation about the normal (30: 6°
            either side of a bin's centre).
        references: reference points (evenly spaced over the subsampled cloud) that vote.
        probe_references: of those, the ones that probe each orientation of the normals.
        max_voxels: the subsampled cloud's points that pair with a reference point, at most.
        spread: feature bins looked up per pair: 1 (its own) or 2 (and the nearer distance
            bin).
        bucket_cap: the most model pairs kept per feature bin (a single cloud's votes) ...
        frame_bucket_cap: ... and for a frame's votes (:meth:`PPFModel.frame_hypotheses`). A
            frame's few reference points on a far or small instance need its right pairs: on
            the eight-object frames, at 16 one of the 72 peaks of the references on a pebble at
            1 m lay near its pose, at 512 thirteen. Taking turns frame by frame, 512 rather than
            16 kept the recall of 30 eight-object frames (59.2 %) and raised their precision
            94.9 -> 98.7 % (the box's poses on clutter lost), and raised the recall of 60 parts
            frames 88.8 -> 89.8 %, at 0.6 s and 0.2 s more a frame ...
        frame_planar_cap: ... but a feature of a flat surface (:func:`coplanar`) keeps at most
            this many: any two points of a flat face share it, so it says little about the
            pose, and on a parts frame 91-94 % of a frame's lookups were of such bins (the
            flats of the parts and the clutter). Taking turns on 30 parts frames, 64 rather
            than 512 kept every instance (87.0 %) at 6 % less time a frame; 16 cut 9 % but lost
            a tee. With ``DetectionParams.ambiguous_reach`` 0.15, over the 200 parts frames 64
            cost recall (87.5 -> 85.8 %; far flanges) for 13 % less time, so 512 (no cap of
            its own) stays the default.
        max_scene_points: the cloud's subsample before voxelling (normals are estimated on it).
        normal_neighbours: neighbours of the cloud's normal estimate.
        peaks: accumulator peaks kept per reference point.
        cluster_degrees, cluster_distance: poses this close (degrees; fraction of the diagonal)
            join one cluster.
        hypotheses: clusters returned, best first.
    """

    sampling: float = 0.04
    angle_bins: int = 30
    references: int = 48
    probe_references: int = 12
    max_scene_points: int = 1024
    max_voxels: int = 320
    normal_neighbours: int = 12
    peaks: int = 2
    spread: int = 1
    bucket_cap: int = 16
    frame_bucket_cap: int = 512
    frame_planar_cap: int = 512
    cluster_degrees: float = 20.0
    cluster_distance: float = 0.08
    hypotheses: int = 8


@njit(cache=True)
def _frame(point, normal):
    """(R, t) with R @ normal = +x and R @ point + t = 0 (column vectors)."""
    nx, ny, nz = normal[0], normal[1], normal[2]
    # The rotation about axis normal x (+x) = (0, nz, -ny) that takes normal onto +x.
    axis_y, axis_z = nz, -ny
    sine = math.sqrt(axis_y * axis_y + axis_z * axis_z)
    cosine = nx
    rotation = np.eye(3)
    if sine < 1e-9:
        if cosine < 0.0:  # a half turn about z
            rotation[0, 0] = -1.0
            rotation[1, 1] = -1.0
    else:
        ky, kz = axis_y / sine, axis_z / sine
        one = 1.0 - cosine
        # Rodrigues with k = (0, ky, kz).
        rotation[0, 0] = cosine
        rotation[0, 1] = -kz * sine
        rotation[0, 2] = ky * sine
        rotation[1, 0] = kz * sine
        rotation[1, 1] = cosine + ky * ky * one
        rotation[1, 2] = ky * kz * one
        rotation[2, 0] = -ky * sine
        rotation[2, 1] = ky * kz * one
        rotation[2, 2] = cosine + kz * kz * one
    translation = -(rotation @ point)
    return rotation, translation


@njit(cache=True)
def _angle(a0, a1, a2, b0, b1, b2):
    dot = a0 * b0 + a1 * b1 + a2 * b2
    na = math.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
    nb = math.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    if na < 1e-12 or nb < 1e-12:
        return 0.0
    c = dot / (na * nb)
    return math.acos(min(1.0, max(-1.0, c)))


@njit(cache=True)
def _feature(p1, n1, p2, n2):
    d0, d1, d2 = p2[0] - p1[0], p2[1] - p1[1], p2[2] - p1[2]
    length = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
    return (
        length,
        _angle(n1[0], n1[1], n1[2], d0, d1, d2),
        _angle(n2[0], n2[1], n2[2], d0, d1, d2),
        _angle(n1[0], n1[1], n1[2], n2[0], n2[1], n2[2]),
    )


@njit(cache=True)
def _alpha(rotation, translation, point):
    """The angle about +x that turns the framed ``point`` into the half-plane y > 0, z = 0."""
    y = rotation[1, 0] * point[0] + rotation[1, 1] * point[1] + rotation[1, 2] * point[2] + translation[1]
    z = rotation[2, 0] * point[0] + rotation[2, 1] * point[1] + rotation[2, 2] * point[2] + translation[2]
    return math.atan2(-z, y)


@njit(cache=True)
def _model_pairs(points, normals, distance_step, distance_bins, angle_bins, max_distance):
    count = len(points)
    keys = np.empty(count * (count - 1), dtype=np.int64)
    refs = np.empty(count * (count - 1), dtype=np.int32)
    alphas = np.empty(count * (count - 1), dtype=np.float32)
    angle_step = math.pi / angle_bins
    used = 0
    for i in range(count):
        rotation, translation = _frame(points[i], normals[i])
        for j in range(count):
            if i == j:
                continue
            f1, f2, f3, f4 = _feature(points[i], normals[i], points[j], normals[j])
            if f1 > max_distance or f1 < 1e-12:
                continue
            q1 = min(int(f1 / distance_step), distance_bins - 1)
            q2 = min(int(f2 / angle_step), angle_bins - 1)
            q3 = min(int(f3 / angle_step), angle_bins - 1)
            q4 = min(int(f4 / angle_step), angle_bins - 1)
            keys[used] = ((q1 * angle_bins + q2) * angle_bins + q3) * angle_bins + q4
            refs[used] = i
            alphas[used] = _alpha(rotation, translation, points[j])
            used += 1
    return keys[:used], refs[:used], alphas[:used]


ACOS_TABLE_SIZE = 4096


def _acos_bins(angle_bins: int) -> np.ndarray:
    """Angle bin of a cosine, tabulated: bin = table[round((cos + 1) / 2 * (size - 1))]."""
    cosines = np.linspace(-1.0, 1.0, ACOS_TABLE_SIZE)
    return np.minimum((np.arccos(cosines) / (np.pi / angle_bins)).astype(np.int64), angle_bins - 1)


@njit(cache=True, fastmath=True, nogil=True)
def _vote(
    points,
    normals,
    references,
    starts,
    model_refs,
    model_alphas,
    model_count,
    distance_step,
    distance_bins,
    angle_bins,
    max_distance,
    peaks,
    spread,
    acos_table,
):
    """Per reference point, its ``peaks`` best (model point, alpha, votes).

    A pair's feature bins come from the tabulated arccosine; with ``spread`` 2 the nearer
    distance bin is looked up too (the distance is the feature that noise moves across bins
    most often at this sampling).
    """
    alpha_step = 2.0 * math.pi / angle_bins
    cells = model_count * angle_bins
    accumulator = np.zeros(cells, dtype=np.int32)
    stamp = np.zeros(cells, dtype=np.int64)  # one vote per scene pair and cell
    touched = np.empty(cells, dtype=np.int64)  # the cells this reference voted for
    out_model = np.full((len(references), peaks), -1, dtype=np.int32)
    out_alpha = np.zeros((len(references), peaks), dtype=np.float64)
    out_votes = np.zeros((len(references), peaks), dtype=np.int32)
    table_scale = 0.5 * (len(acos_table) - 1)
    max_distance2 = max_distance * max_distance
    pair_id = 0
    for r in range(len(references)):
        used, pair_id = _vote_reference(
            points,
            normals,
            references[r],
            starts,
            model_refs,
            model_alphas,
            distance_step,
            distance_bins,
            angle_bins,
            alpha_step,
            max_distance2,
            spread,
            acos_table,
            table_scale,
            accumulator,
            stamp,
            touched,
            pair_id,
        )
        _take_peaks(
            accumulator, touched, used, angle_bins, alpha_step, out_model[r], out_alpha[r], out_votes[r]
        )
    return out_model, out_alpha, out_votes


@njit(cache=True, fastmath=True, nogil=True)
def _vote_reference(
    points,
    normals,
    i,
    starts,
    model_refs,
    model_alphas,
    distance_step,
    distance_bins,
    angle_bins,
    alpha_step,
    max_distance2,
    spread,
    acos_table,
    table_scale,
    accumulator,
    stamp,
    touched,
    pair_id,
):
    """The votes of the pairs of reference point ``i`` into ``accumulator`` (one per pair and
    cell, ``stamp`` remembering the last pair to vote in a cell); returns how many cells of
    ``touched`` it voted for, and the last pair's id."""
    two_pi = 2.0 * math.pi
    used = 0
    rotation, translation = _frame(points[i], normals[i])
    px, py, pz = points[i, 0], points[i, 1], points[i, 2]
    nx, ny, nz = normals[i, 0], normals[i, 1], normals[i, 2]
    for j in range(len(points)):
        dx, dy, dz = points[j, 0] - px, points[j, 1] - py, points[j, 2] - pz
        length2 = dx * dx + dy * dy + dz * dz
        if length2 > max_distance2 or length2 < 1e-24:
            continue
        length = math.sqrt(length2)
        inverse = 1.0 / length
        mx, my, mz = normals[j, 0], normals[j, 1], normals[j, 2]
        c2 = (nx * dx + ny * dy + nz * dz) * inverse
        c3 = (mx * dx + my * dy + mz * dz) * inverse
        c4 = nx * mx + ny * my + nz * mz
        b = acos_table[int((min(1.0, max(-1.0, c2)) + 1.0) * table_scale + 0.5)]
        c = acos_table[int((min(1.0, max(-1.0, c3)) + 1.0) * table_scale + 0.5)]
        d = acos_table[int((min(1.0, max(-1.0, c4)) + 1.0) * table_scale + 0.5)]
        scaled = length / distance_step
        a0 = min(int(scaled), distance_bins - 1)
        a1 = a0 - 1 if scaled - a0 < 0.5 else a0 + 1
        y = (
            rotation[1, 0] * points[j, 0]
            + rotation[1, 1] * points[j, 1]
            + rotation[1, 2] * points[j, 2]
            + translation[1]
        )
        z = (
            rotation[2, 0] * points[j, 0]
            + rotation[2, 1] * points[j, 1]
            + rotation[2, 2] * points[j, 2]
            + translation[2]
        )
        alpha_scene = math.atan2(-z, y)
        pair_id += 1
        for combo in range(spread):
            a = a0 if combo == 0 else a1
            if a < 0 or a >= distance_bins:
                continue
            key = ((a * angle_bins + b) * angle_bins + c) * angle_bins + d
            for k in range(starts[key], starts[key + 1]):
                angle = alpha_scene - model_alphas[k]
                if angle < 0.0:
                    angle += two_pi
                cell = model_refs[k] * angle_bins + min(int(angle / alpha_step), angle_bins - 1)
                if stamp[cell] != pair_id:
                    stamp[cell] = pair_id
                    if accumulator[cell] == 0:
                        touched[used] = cell
                        used += 1
                    accumulator[cell] += 1
    return used, pair_id


@njit(cache=True, fastmath=True, nogil=True)
def _take_peaks(accumulator, touched, used, angle_bins, alpha_step, out_model, out_alpha, out_votes):
    """The accumulator's best cells among the ``used`` first of ``touched``, written to the
    reference's rows (as many as they hold); the accumulator is left all zeros."""
    for p in range(len(out_model)):
        best = 0
        best_cell = -1
        for t in range(used):
            if accumulator[touched[t]] > best:
                best = accumulator[touched[t]]
                best_cell = touched[t]
        if best_cell < 0:
            break
        out_model[p] = best_cell // angle_bins
        out_alpha[p] = (best_cell % angle_bins + 0.5) * alpha_step
        out_votes[p] = best
        accumulator[best_cell] = -1  # taken: never a peak again, and reset below
    for t in range(used):
        accumulator[touched[t]] = 0


VOTE_THREADS = max(1, min(4, os.cpu_count() or 1))
# Reference points per thread below which one thread votes alone (a thread's start costs more).
THREAD_REFERENCES = 64
_POOL: ThreadPoolExecutor


def _new_pool() -> None:
    """The vote threads' pool (its threads start when first used); made anew in a forked child,
    where the parent's threads do not follow."""
    global _POOL
    _POOL = ThreadPoolExecutor(VOTE_THREADS, thread_name_prefix="cloudpose-votes")


_new_pool()
os.register_at_fork(after_in_child=_new_pool)


def in_threads(
    vote: Callable[[np.ndarray], tuple[np.ndarray, ...]], references: np.ndarray, threads: int
) -> tuple[np.ndarray, ...]:
    """``vote`` (a compiled loop that releases the interpreter lock) over the reference points,
    split into contiguous chunks voted in up to ``threads`` threads at once (at least
    ``THREAD_REFERENCES`` a chunk); each reference's peaks depend on its own pairs alone, so the
    rows, joined in order, are those of one call over all of them."""
    chunks = min(threads, VOTE_THREADS, len(references) // THREAD_REFERENCES)
    if chunks < 2:
        return vote(references)
    parts = list(_POOL.map(vote, np.array_split(references, chunks)))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def coplanar(keys: np.ndarray, angle_bins: int) -> np.ndarray:
    """Which feature bins (keys of the table) hold the pairs of a flat surface: normals within
    one angle bin of each other, each within one bin of square to the line between the points.
    Any two points of a flat face share such a feature, so it says little about the pose."""
    normals_angle = keys % angle_bins
    second = (keys // angle_bins) % angle_bins
    first = (keys // angle_bins**2) % angle_bins
    square = (np.abs(2 * first + 1 - angle_bins) <= 2) & (np.abs(2 * second + 1 - angle_bins) <= 2)
    return (normals_angle == 0) & square


def evenly_spaced(count: int, wanted: int) -> np.ndarray:
    """At most ``wanted`` indices evenly spaced over ``range(count)``."""
    if count <= wanted:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(np.int64))


def _frames(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(K, 4, 4) column-vector transforms that put each point at the origin, its normal on +x."""
    out = np.zeros((len(points), 4, 4))
    for k in range(len(points)):
        rotation, translation = _frame(points[k], normals[k])
        out[k, :3, :3] = rotation
        out[k, :3, 3] = translation
        out[k, 3, 3] = 1.0
    return out


def _about_x(angles: np.ndarray) -> np.ndarray:
    """(K, 4, 4) rotations about +x by ``angles``."""
    out = np.zeros((len(angles), 4, 4))
    c, s = np.cos(angles), np.sin(angles)
    out[:, 0, 0] = 1.0
    out[:, 1, 1], out[:, 1, 2] = c, -s
    out[:, 2, 1], out[:, 2, 2] = s, c
    out[:, 3, 3] = 1.0
    return out


def _voxel_with_normals(
    points: np.ndarray, normals: np.ndarray, voxel: float
) -> tuple[np.ndarray, np.ndarray]:
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.normals = o3d.utility.Vector3dVector(normals)
    down = cloud.voxel_down_sample(voxel)
    out_normals = np.asarray(down.normals)
    length = np.linalg.norm(out_normals, axis=1, keepdims=True)
    keep = length[:, 0] > 0.3  # a voxel whose normals cancel out (a thin wall's two sides) says nothing
    return np.asarray(down.points)[keep], out_normals[keep] / length[keep]


class PPFModel:
    """An object's point-pair-feature table, built from its surface samples.

    Args:
        points: (M, 3) surface points, internal frame; normals: (M, 3) outward unit normals.
        diagonal: the object's bounding-box diagonal (same units).
        settings: the knobs.
    """

    def __init__(
        self, points: np.ndarray, normals: np.ndarray, diagonal: float, settings: PPFSettings = PPFSettings()
    ) -> None:
        self.settings = settings
        self.threads = VOTE_THREADS  # a frame's reference points vote in this many threads
        self.diagonal = float(diagonal)
        self.step = settings.sampling * self.diagonal
        self.points, self.normals = _voxel_with_normals(
            np.asarray(points, np.float64), np.asarray(normals, np.float64), self.step
        )
        spread = self.points - self.points.mean(axis=0)
        self.diameter = 2.0 * float(np.sqrt((spread * spread).sum(axis=1)).max())
        self.distance_bins = int(self.diameter / self.step) + 2
        bins = settings.angle_bins
        keys, refs, alphas = _model_pairs(
            self.points, self.normals, self.step, self.distance_bins, bins, self.diameter
        )
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        # A feature that many pairs share (flat faces, smooth blobs) says little about the pose
        # and costs a lookup of all of them: at most a bucket's cap of pairs, evenly spread, stay.
        first = np.searchsorted(keys, keys, side="left")
        size = np.maximum(np.searchsorted(keys, keys, side="right") - first, 1)
        rank = np.arange(len(keys)) - first
        table = self.distance_bins * bins**3
        self.tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        flat = coplanar(keys, bins)
        for cap in {settings.bucket_cap, settings.frame_bucket_cap}:
            caps = np.full(len(keys), cap, dtype=np.int64)
            if cap != settings.bucket_cap:  # the frame's table; a single cloud's keeps its own
                caps[flat] = min(cap, settings.frame_planar_cap)
            keep = (size <= caps) | ((rank * caps) // size != ((rank - 1) * caps) // size)
            self.tables[cap] = (
                np.searchsorted(keys[keep], np.arange(table + 1)).astype(np.int32),  # bin starts
                np.ascontiguousarray(refs[order[keep]]),
                np.ascontiguousarray(alphas[order[keep]]),
            )
        self.frames = _frames(self.points, self.normals)  # (M, 4, 4)
        self.acos_table = _acos_bins(bins)
        # Compile (or load from numba's cache) every loop now, not in a request's budget.
        self.hypotheses(self.points[:: max(1, len(self.points) // 64)])

    def scene(self, cloud: np.ndarray, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """The cloud subsampled on the model's grid, with normals in each orientation tried."""
        settings = self.settings
        points = np.asarray(cloud, dtype=np.float64)
        if len(points) > settings.max_scene_points:
            rng = np.random.default_rng(seed)
            points = points[rng.choice(len(points), settings.max_scene_points, replace=False)]
        estimate = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
        estimate.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(settings.normal_neighbours))
        normals = np.asarray(estimate.normals)
        centroid = points.mean(axis=0)
        _, vectors = np.linalg.eigh((points - centroid).T @ (points - centroid))
        thin = vectors[:, 0]
        orientations = []
        for sign in (1.0, -1.0):
            viewpoint = centroid + sign * 10.0 * self.diagonal * thin
            flip = np.sign(((viewpoint - points) * normals).sum(axis=1))
            orientations.append(normals * np.where(flip == 0, 1.0, flip)[:, None])
        outward = np.sign(((points - centroid) * normals).sum(axis=1))
        orientations.append(normals * np.where(outward == 0, 1.0, outward)[:, None])
        scenes = []
        for oriented in orientations:
            kept, kept_normals = _voxel_with_normals(points, oriented, self.step)
            if len(kept) > settings.max_voxels:  # a whole cloud: every voxel is not needed to vote
                pick = np.random.default_rng(seed).choice(len(kept), settings.max_voxels, replace=False)
                kept, kept_normals = kept[pick], kept_normals[pick]
            scenes.append((kept, kept_normals))
        return scenes

    def hypotheses(self, cloud: np.ndarray, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Object poses (rotation (3, 3), translation (3,), votes), most votes first.

        Every orientation of the cloud's normals is probed with a few reference points; the one
        whose best cluster has the most votes (the right orientation outvotes the others by far)
        votes with all its reference points. Its clusters come first, the probes' after them.
        """
        settings = self.settings
        scenes = [scene for scene in self.scene(cloud, seed) if len(scene[0]) >= 3]
        if not scenes:
            return []
        probes = []
        for points, normals in scenes:
            references = evenly_spaced(len(points), settings.probe_references)
            back, votes = self._votes(points, normals, references)
            probes.append((back, votes, self._clusters(back, votes)))
        lead = max(range(len(scenes)), key=lambda k: probes[k][2][0][2] if probes[k][2] else -1)
        points, normals = scenes[lead]
        probed = evenly_spaced(len(points), settings.probe_references)
        rest = np.setdiff1d(evenly_spaced(len(points), settings.references), probed)
        back, votes = self._votes(points, normals, rest)
        hypotheses = self._clusters(
            np.concatenate([probes[lead][0], back]), np.concatenate([probes[lead][1], votes])
        )
        for k, (_, _, clusters) in enumerate(probes):
            if k != lead:
                hypotheses += clusters
        return hypotheses

    def frame_hypotheses(
        self,
        points: np.ndarray,
        normals: np.ndarray,
        references: np.ndarray,
        count: int,
        per_place: tuple[float, int] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Object poses (rotation (3, 3), centre (3,), votes), most votes first, from a whole
        frame's points and sensor-facing normals (object units), ``references`` (indices) voting.

        Unlike :meth:`hypotheses`, nothing about the cloud is guessed: a frame holds many objects
        and its normals' orientation is known; up to ``count`` clusters are returned, and with
        ``per_place`` = (reach, most) at most ``most`` of them whose centres lie within ``reach``
        of each other's (a large surface outvotes a smaller instance elsewhere).
        """
        back, votes = self._votes(
            np.ascontiguousarray(points, dtype=np.float64),
            np.ascontiguousarray(normals, dtype=np.float64),
            np.asarray(references, dtype=np.int64),
            self.settings.frame_bucket_cap,
        )
        if len(votes) == 0:
            return []
        return self._averaged_clusters(back, votes, count, per_place)

    def _averaged_clusters(
        self, back: np.ndarray, votes: np.ndarray, count: int, per_place: tuple[float, int] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Like :meth:`_clusters`, but a cluster's pose is the vote-weighted mean of its members
        (rotations averaged as quaternions, scipy's ``Rotation.mean``), finer than any one
        member's 6-degree bins (Drost et al. average the same way); ``per_place`` as for
        :meth:`frame_hypotheses`, by the clusters' strongest members."""
        from scipy.spatial.transform import Rotation

        rotations, centres, weights, heads, scores, labels = self._grouped(back, votes)
        chosen: list[int] = []
        for h in np.argsort(-scores, kind="stable"):
            if len(chosen) == count:
                break
            if per_place is not None:
                reach, most = per_place
                near = np.linalg.norm(centres[heads[chosen]] - centres[heads[h]], axis=1) < reach
                if int(near.sum()) >= most:
                    continue
            chosen.append(int(h))
        out = []
        for h in chosen:
            members = np.flatnonzero(labels == h)
            # Row-vector rotations (points @ R) are the transposes of scipy's; the quaternion mean
            # of the inverses is the inverse of the mean, so the mean is the same rotation.
            mean = Rotation.from_matrix(rotations[members]).mean(weights[members]).as_matrix()
            centre = np.average(centres[members], axis=0, weights=weights[members])
            out.append((mean, centre, int(scores[h])))
        return out

    def _votes(
        self, points: np.ndarray, normals: np.ndarray, references: np.ndarray, cap: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Back transforms (K, 4, 4) of the reference points' accumulator peaks, and their votes,
        looked up in the table whose buckets hold at most ``cap`` pairs (default: a single
        cloud's, ``settings.bucket_cap``)."""
        settings = self.settings
        starts, refs, alphas = self.tables[settings.bucket_cap if cap is None else cap]

        def vote(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return _vote(
                points,
                normals,
                chosen,
                starts,
                refs,
                alphas,
                len(self.points),
                self.step,
                self.distance_bins,
                settings.angle_bins,
                self.diameter,
                settings.peaks,
                settings.spread,
                self.acos_table,
            )

        model_index, alpha, count = in_threads(vote, references, self.threads)
        valid = model_index >= 0  # (R, P)
        rows = np.repeat(references[:, None], settings.peaks, axis=1)[valid]
        scene_frames = _frames(points[rows], normals[rows])
        # scene -> model: inv(T_m) Rx(alpha) T_s (column vectors).
        back = np.linalg.inv(self.frames[model_index[valid]]) @ _about_x(alpha[valid]) @ scene_frames
        return back, count[valid]

    def _clusters(
        self, back: np.ndarray, votes: np.ndarray, count: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Greedy pose clustering (:func:`_cluster`); a cluster's pose is its strongest member,
        its score the votes of all its members."""
        rotations, centres, _, heads, scores, _ = self._grouped(back, votes)
        ranked = np.argsort(-scores, kind="stable")[: self.settings.hypotheses if count is None else count]
        return [(rotations[heads[h]], centres[heads[h]], int(scores[h])) for h in ranked]

    def _grouped(self, back: np.ndarray, votes: np.ndarray) -> tuple[np.ndarray, ...]:
        """The poses of back transforms, most votes first (rotations (K, 3, 3), centres (K, 3),
        votes (K,)), and their greedy clusters (:func:`_cluster`: heads, scores, each pose's
        cluster)."""
        settings = self.settings
        # The object pose of a back transform B (cloudpose.registration.refine.back_matrix): the rotation is
        # B's, and the translation, where the object's centre lies, -B_t @ R.
        rotations = np.ascontiguousarray(back[:, :3, :3])  # (K, 3, 3)
        centres = -np.einsum("ki,kij->kj", back[:, :3, 3], rotations)  # (K, 3)
        order = np.argsort(-votes, kind="stable")
        rotations, centres, weights = rotations[order], np.ascontiguousarray(centres[order]), votes[order]
        heads, scores, labels = _cluster(
            rotations,
            centres,
            weights.astype(np.int64),
            math.cos(math.radians(settings.cluster_degrees)),
            settings.cluster_distance * self.diagonal,
        )
        return rotations, centres, weights, heads, scores, labels


@njit(cache=True)
def _cluster(rotations, centres, votes, cos_limit, distance_limit):
    """Each pose, in the given order (most votes first), joins the first cluster whose head is
    within ``distance_limit`` and whose rotation is within the angle of ``cos_limit``."""
    heads = np.empty(len(votes), dtype=np.int64)
    scores = np.zeros(len(votes), dtype=np.int64)
    labels = np.empty(len(votes), dtype=np.int64)  # the cluster each pose joined
    count = 0
    limit2 = distance_limit * distance_limit
    for k in range(len(votes)):
        joined = False
        for h in range(count):
            head = heads[h]
            dx = centres[k, 0] - centres[head, 0]
            dy = centres[k, 1] - centres[head, 1]
            dz = centres[k, 2] - centres[head, 2]
            if dx * dx + dy * dy + dz * dz > limit2:
                continue
            trace = 0.0
            for a in range(3):
                for b in range(3):
                    trace += rotations[k, a, b] * rotations[head, a, b]
            if (trace - 1.0) / 2.0 >= cos_limit:
                scores[h] += votes[k]
                labels[k] = h
                joined = True
                break
        if not joined:
            heads[count] = k
            scores[count] = votes[k]
            labels[k] = count
            count += 1
    return heads[:count], scores[:count], labels
