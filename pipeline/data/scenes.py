"""Cluttered depth frames for detection: known objects resting on a table, seen by a depth sensor.

A frame is what a pinhole depth camera (OpenCV's sensor frame: camera at the origin looking along
+z, x right, y down; metres) records of a support plane (a large thin box, the "table") carrying
copies of the target objects and distractors in physically plausible resting poses:

* poses: each object rests on the plane in one of its stable poses (trimesh's
  ``compute_stable_poses``, drawn by their probabilities), turned by a random yaw about the plane
  normal, at a random spot on the visible part of the plane whose bounding circle overlaps no other;
  a share of the objects goes close beside one already placed, bounding circles overlapping but
  meshes a few millimetres apart (touching copies, occlusion);
* rendering: one open3d ``RaycastingScene`` with one geometry per object and one ray per pixel
  centre; depth is z in the camera frame (not the ray length);
* sensor noise (:class:`NoiseModel`): depth-dependent Gaussian noise, quantization to the depth
  unit, dropout at depth discontinuities, at grazing incidence and at random.

Poses follow the convention of :mod:`models.geometry` (row vectors): an object whose canonical
points ``X`` are its mesh's own coordinates appears in the sensor frame as ``X @ R + t``, with
``R`` (3, 3) a rotation and ``t`` (3,) in metres. Meshes are given in metres (callers scale them).

Every function takes a seeded ``numpy.random.Generator`` and never touches global state: one seed
gives one frame, bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from cloudpose.geometry.resting import RestingPose, rest_on, resting_poses
from cloudpose.io import frames
from cloudpose.io.frames import valid_points

if TYPE_CHECKING:
    import trimesh

Kind = Literal["target", "distractor", "support"]

# Spacing of the surface sample that checks two objects do not interpenetrate.
SURFACE_SPACING_M = 0.002
NO_RETURN = -1  # label of the support plane and of pixels without a return
DISTRACTOR = -2  # label of distractor pixels


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole depth camera (OpenCV convention: pixel (u, v) has its centre at (u, v)).

    Attributes:
        width, height: image size in pixels.
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels.
        depth_scale: metres per unit of a 16-bit depth image, as sensors store it (0.001: mm);
            also the depth quantization step of :class:`NoiseModel`. Frames themselves are in metres.
    """

    width: int = 640
    height: int = 480
    fx: float = 525.0
    fy: float = 525.0
    cx: float = 319.5
    cy: float = 239.5
    depth_scale: float = 0.001

    def pinhole(self) -> frames.Intrinsics:
        """The service's intrinsics of this camera (what a depth-image request sends)."""
        return frames.Intrinsics(self.fx, self.fy, self.cx, self.cy, self.depth_scale)

    def scaled(self, factor: float) -> Intrinsics:
        """The same camera at ``factor`` times the resolution (same field of view)."""
        width, height = round(self.width * factor), round(self.height * factor)
        return Intrinsics(
            width=width,
            height=height,
            fx=self.fx * factor,
            fy=self.fy * factor,
            cx=(self.cx + 0.5) * factor - 0.5,
            cy=(self.cy + 0.5) * factor - 0.5,
            depth_scale=self.depth_scale,
        )


@functools.lru_cache(maxsize=8)
def _pixel_rays(intrinsics: Intrinsics) -> np.ndarray:
    """Rays through the pixel centres, (H, W, 6) float32: origin 0, direction with z = 1.

    With z = 1 the hit distance ``t`` that open3d returns (in units of the direction's length) is
    the depth z itself.
    """
    u = (np.arange(intrinsics.width) - intrinsics.cx) / intrinsics.fx
    v = (np.arange(intrinsics.height) - intrinsics.cy) / intrinsics.fy
    rays = np.zeros((intrinsics.height, intrinsics.width, 6), dtype=np.float32)
    rays[..., 3] = u[None, :]
    rays[..., 4] = v[:, None]
    rays[..., 5] = 1.0
    rays.flags.writeable = False
    return rays


def back_project(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Organized points of a depth image taken by this camera (:func:`cloudpose.io.frames.back_project`,
    which the service applies to uploaded depth images, after a check of the size).

    Args:
        depth: (H, W) depth z in metres, 0 where there is no return.
        intrinsics: the camera that took it.

    Returns:
        (H, W, 3) points in the sensor frame, in depth's float dtype; NaN where ``depth == 0``.
    """
    depth = np.asarray(depth)
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(
            f"depth has shape {depth.shape}, intrinsics say {(intrinsics.height, intrinsics.width)}"
        )
    return frames.back_project(depth, intrinsics.pinhole())


def project(points: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Pixel coordinates of points in the sensor frame.

    Args:
        points: (N, 3) with z > 0.

    Returns:
        (N, 2) float64 (u, v): column and row, pixel centres at integers.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    z = points[:, 2]
    return np.stack(
        [intrinsics.fx * points[:, 0] / z + intrinsics.cx, intrinsics.fy * points[:, 1] / z + intrinsics.cy],
        axis=1,
    )


@dataclass(frozen=True)
class NoiseModel:
    """A structured-light depth sensor's errors (Kinect v1-like defaults).

    Applied in this order to the exact ray-cast depth ``z``:

    1. Gaussian noise along z with standard deviation ``sigma_base_m + sigma_quadratic_per_m * z**2
       + sigma_angle_m / sqrt(z) * θ² / (π/2 - θ)²`` (θ: incidence angle), the axial model of
       Nguyen, Izadi and Lovell (3DIMPVT 2012) with its offset folded into ``sigma_base_m``: about
       1.5 mm at 1 m and 4.5 mm at 2 m head-on.
    2. Quantization to the sensor's depth unit (``Intrinsics.depth_scale``) when ``quantize``.
    3. Dropout: every pixel within ``edge_width_px`` of a depth discontinuity (a neighbour with no
       return, or one whose depth differs by more than ``edge_jump_px`` pixel footprints ``z / f``;
       a continuous surface makes such jumps only beyond ~85° incidence) is lost with probability
       ``edge_dropout``; returns at incidence beyond ``grazing_start_deg`` are lost with a
       probability growing linearly to 1 at ``grazing_max_deg``; any other pixel is lost with
       probability ``dropout``; and depths outside ``range_m`` are lost.

    Attributes:
        sigma_base_m: noise floor (m).
        sigma_quadratic_per_m: growth with depth (1/m): sigma grows with z².
        sigma_angle_m: growth towards grazing incidence (m·√m).
        quantize: round depth to ``Intrinsics.depth_scale``.
        edge_jump_px: discontinuity threshold, in pixel footprints.
        edge_width_px: how far (pixels) the edge dropout reaches from a discontinuity.
        edge_dropout: probability of losing an edge pixel.
        grazing_start_deg: incidence where returns start to be lost.
        grazing_max_deg: incidence beyond which no return survives.
        dropout: probability of losing any other pixel.
        range_m: (min, max) depth the sensor measures.
    """

    sigma_base_m: float = 0.0005
    sigma_quadratic_per_m: float = 0.001
    sigma_angle_m: float = 0.0001
    quantize: bool = True
    edge_jump_px: float = 12.0
    edge_width_px: int = 1
    edge_dropout: float = 0.9
    grazing_start_deg: float = 65.0
    grazing_max_deg: float = 80.0
    dropout: float = 0.005
    range_m: tuple[float, float] = (0.3, 5.0)

    @classmethod
    def none(cls) -> NoiseModel:
        """A perfect sensor: the exact ray-cast depth, every hit kept."""
        return cls(
            sigma_base_m=0.0,
            sigma_quadratic_per_m=0.0,
            sigma_angle_m=0.0,
            quantize=False,
            edge_dropout=0.0,
            grazing_start_deg=90.0,
            grazing_max_deg=90.0,
            dropout=0.0,
            range_m=(0.0, np.inf),
        )

    def sigma(self, depth: np.ndarray, incidence_deg: np.ndarray | float = 0.0) -> np.ndarray:
        """Standard deviation (m) of the depth noise at ``depth`` (m) and ``incidence_deg``."""
        depth = np.asarray(depth, dtype=np.float64)
        theta = np.deg2rad(np.minimum(incidence_deg, 89.0))
        sigma = self.sigma_base_m + self.sigma_quadratic_per_m * depth**2
        if self.sigma_angle_m:
            sigma = sigma + self.sigma_angle_m / np.sqrt(np.maximum(depth, 1e-6)) * (
                theta**2 / (np.pi / 2 - theta) ** 2
            )
        return sigma


def _shifted_pairs(
    shape: tuple[int, int], dv: int, du: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Index pairs (a, b) such that b is a's neighbour at offset (dv, du), dv >= 0."""
    height, width = shape
    rows_a, rows_b = slice(0, height - dv), slice(dv, height)
    if du >= 0:
        cols_a, cols_b = slice(0, width - du), slice(du, width)
    else:
        cols_a, cols_b = slice(-du, width), slice(0, width + du)
    return (rows_a, cols_a), (rows_b, cols_b)


_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))  # each unordered 8-neighbour pair once


def depth_discontinuities(
    depth: np.ndarray, intrinsics: Intrinsics, jump_px: float, width_px: int = 1
) -> np.ndarray:
    """Returns at or near a depth discontinuity.

    A pair of 8-neighbours is discontinuous when exactly one has a return, or when their depths
    differ by more than ``jump_px`` pixel footprints (``z / f`` times the pixels' distance).

    Args:
        depth: (H, W) metres, 0 for no return.
        jump_px: threshold in pixel footprints.
        width_px: pixels within this 8-neighbour distance of a discontinuous pair are marked.

    Returns:
        (H, W) bool, only where ``depth > 0``.
    """
    valid = depth > 0
    focal = float(np.sqrt(intrinsics.fx * intrinsics.fy))
    edge = np.zeros(depth.shape, dtype=bool)
    for dv, du in _NEIGHBOURS:
        a, b = _shifted_pairs(depth.shape, dv, du)
        near = np.minimum(depth[a], depth[b])
        threshold = jump_px * np.hypot(dv, du) * near / focal
        jump = (valid[a] != valid[b]) | (np.abs(depth[a] - depth[b]) > threshold)
        edge[a] |= jump
        edge[b] |= jump
    for _ in range(max(0, width_px - 1)):
        grown = edge.copy()
        for dv, du in _NEIGHBOURS:
            a, b = _shifted_pairs(depth.shape, dv, du)
            grown[a] |= edge[b]
            grown[b] |= edge[a]
        edge = grown
    return edge & valid


def apply_noise(
    depth: np.ndarray,
    incidence_deg: np.ndarray,
    intrinsics: Intrinsics,
    noise: NoiseModel,
    rng: np.random.Generator,
) -> np.ndarray:
    """What the sensor reports for an exact depth image (see :class:`NoiseModel` for the steps).

    Args:
        depth: (H, W) exact depth z in metres, 0 for no hit.
        incidence_deg: (H, W) angle between each pixel's ray and the surface normal it hits.
        rng: seeded generator; one uniform and one normal draw per pixel, whatever the model.

    Returns:
        (H, W) float32 metres, 0 where the return is lost.
    """
    hit = depth > 0
    keep_probability = np.where(hit, 1.0 - noise.dropout, 0.0)
    span = noise.grazing_max_deg - noise.grazing_start_deg
    if span > 0:
        grazing_keep = np.clip((noise.grazing_max_deg - incidence_deg) / span, 0.0, 1.0)
    else:
        grazing_keep = (incidence_deg <= noise.grazing_max_deg).astype(np.float64)
    keep_probability = keep_probability * grazing_keep
    if noise.edge_dropout > 0:
        edge = depth_discontinuities(depth, intrinsics, noise.edge_jump_px, noise.edge_width_px)
        keep_probability = np.where(edge, keep_probability * (1.0 - noise.edge_dropout), keep_probability)
    kept = rng.random(depth.shape) < keep_probability
    gaussian = rng.standard_normal(depth.shape)
    measured = depth.astype(np.float64)
    measured = measured + gaussian * noise.sigma(measured, incidence_deg)
    if noise.quantize:
        measured = np.round(measured / intrinsics.depth_scale) * intrinsics.depth_scale
    low, high = noise.range_m
    kept &= (measured >= low) & (measured <= high) & (measured > 0)
    return np.where(kept, measured, 0.0).astype(np.float32)


@dataclass(eq=False)
class SceneObject:
    """An object that can appear in a frame.

    Attributes:
        name: what instances of it are called.
        mesh: trimesh.Trimesh in metres, its own coordinates being the canonical frame.
    """

    name: str
    mesh: trimesh.Trimesh

    @functools.cached_property
    def resting_poses(self) -> list[RestingPose]:
        """Its stable poses on a plane, most probable first (computed once)."""
        return resting_poses(self.mesh)

    @functools.cached_property
    def surface_sample(self) -> np.ndarray:
        """(M, 3) points spread over its surface at most ``SURFACE_SPACING_M`` apart (seeded)."""
        import trimesh

        count = int(np.clip(self.mesh.area / SURFACE_SPACING_M**2, 500, 50_000))
        points, _ = trimesh.sample.sample_surface(self.mesh, count, seed=0)
        return np.asarray(points, dtype=np.float64)

    @functools.cached_property
    def _triangles(self) -> tuple[np.ndarray, np.ndarray]:
        vertices = np.asarray(self.mesh.vertices, dtype=np.float64)
        faces = np.ascontiguousarray(self.mesh.faces, dtype=np.uint32)
        return vertices, faces


@dataclass
class Placement:
    """An object at a pose in the sensor frame: ``canonical @ rotation + translation``.

    Attributes:
        scene_object: what is placed.
        rotation: (3, 3).
        translation: (3,) metres.
        kind: targets become :class:`Instance` s; distractors and the support are clutter.
    """

    scene_object: SceneObject
    rotation: np.ndarray
    translation: np.ndarray
    kind: Kind = "target"

    def vertices(self) -> np.ndarray:
        """(V, 3) float64 mesh vertices in the sensor frame."""
        return self.scene_object._triangles[0] @ self.rotation + self.translation


@dataclass(frozen=True)
class SupportPlane:
    """The table's top face in the sensor frame.

    Attributes:
        axes: (3, 3) rows e1, e2, n: two in-plane axes and the normal towards the camera
            (right-handed), so plane coordinates ``p`` map to the sensor frame as ``p @ axes + origin``.
        origin: (3,) a point of the plane (metres), where the optical axis meets it.
        size_m: side of the square top face, centred on ``origin``.
        thickness_m: of the box below it.
    """

    axes: np.ndarray
    origin: np.ndarray
    size_m: float = 1.5
    thickness_m: float = 0.02

    @property
    def normal(self) -> np.ndarray:
        """(3,) unit normal, pointing to the camera's side."""
        return self.axes[2]

    @property
    def coefficients(self) -> np.ndarray:
        """(4,) (a, b, c, d): sensor-frame points on the plane have a x + b y + c z + d = 0."""
        return np.append(self.normal, -self.normal @ self.origin)

    def placement(self) -> Placement:
        """The table as a box whose top face is the plane."""
        import trimesh

        box = trimesh.creation.box(extents=(self.size_m, self.size_m, self.thickness_m))
        return Placement(
            SceneObject("support", box),
            self.axes.copy(),
            self.origin - 0.5 * self.thickness_m * self.normal,
            kind="support",
        )

    def rest(
        self, pose: RestingPose, position_m: tuple[float, float], yaw_rad: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sensor-frame pose of an object resting on the plane.

        Args:
            pose: how it rests (one of ``SceneObject.resting_poses``).
            position_m: (2,) plane coordinates of its bounding circle's centre.
            yaw_rad: turn about the plane normal.

        Returns:
            rotation (3, 3) and translation (3,) such that ``canonical @ rotation + translation``
            is the object in the sensor frame.
        """
        in_plane = np.array([position_m[0], position_m[1], 0.0]) @ self.axes + self.origin
        return rest_on(pose, self.axes, in_plane, yaw_rad)


def support_plane(
    tilt_deg: float, distance_m: float, roll_deg: float = 0.0, size_m: float = 1.5, thickness_m: float = 0.02
) -> SupportPlane:
    """A table that the camera looks down onto.

    Args:
        tilt_deg: angle between the optical axis and the plane's (inward) normal; 0 looks straight
            down, towards 90 looks along the table. The image's up (-y) is the table's far side.
        distance_m: where the optical axis meets the plane, along the axis.
        roll_deg: turn of the table about the optical axis.
    """
    tilt, roll = np.deg2rad(tilt_deg), np.deg2rad(roll_deg)
    c, s = np.cos(roll), np.sin(roll)
    roll_rows = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    normal = np.array([0.0, -np.sin(tilt), -np.cos(tilt)]) @ roll_rows
    across = np.array([1.0, 0.0, 0.0]) @ roll_rows
    e1 = across - (across @ normal) * normal
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    axes = np.stack([e1, e2, normal])
    return SupportPlane(axes, np.array([0.0, 0.0, distance_m]), size_m, thickness_m)


@dataclass
class Instance:
    """Ground truth of one target instance in a frame.

    Attributes:
        name: its object's name.
        rotation: (3, 3) and translation: (3,) its pose in the sensor frame,
            ``canonical @ rotation + translation``, canonical being the mesh file's coordinates.
        visible_fraction: its pixels in the frame (occlusion only, before sensor dropout) over
            the pixels it covers when rendered alone with the same camera, in [0, 1].
        mask: (H, W) bool, its pixels with a valid return.
        n_points: ``mask.sum()``.
    """

    name: str
    rotation: np.ndarray
    translation: np.ndarray
    visible_fraction: float
    mask: np.ndarray
    n_points: int


@dataclass
class Frame:
    """One depth frame and its ground truth.

    Attributes:
        depth: (H, W) float32 metres, 0 where there is no return.
        labels: (H, W) int32: index into ``instances`` where a target has a valid return,
            -2 (``DISTRACTOR``) for distractors, -1 (``NO_RETURN``) for the support plane and
            pixels without a return.
        instances: the target instances, in placement order.
        intrinsics: the camera.
        plane: (4,) coefficients of the support plane (see :attr:`SupportPlane.coefficients`),
            or None when the frame has no support.
    """

    depth: np.ndarray
    labels: np.ndarray
    instances: list[Instance]
    intrinsics: Intrinsics
    plane: np.ndarray | None = None

    def points(self) -> np.ndarray:
        """(N, 3) float32 valid returns in the sensor frame, in raster order."""
        return valid_points(back_project(self.depth, self.intrinsics))

    def point_labels(self) -> np.ndarray:
        """(N,) int32 labels of :meth:`points`, in the same order."""
        return self.labels[self.depth > 0]

    def depth_units(self) -> np.ndarray:
        """(H, W) uint16 depth in ``intrinsics.depth_scale`` units, as a 16-bit depth PNG stores it."""
        units = np.round(self.depth.astype(np.float64) / self.intrinsics.depth_scale)
        return np.clip(units, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _tensor_scene(placements: list[Placement]):
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    ids = []
    for placement in placements:
        ids.append(
            scene.add_triangles(
                o3d.core.Tensor(placement.vertices().astype(np.float32)),
                o3d.core.Tensor(placement.scene_object._triangles[1]),
            )
        )
    return scene, np.asarray(ids, dtype=np.int64)


def _cast(scene, rays: np.ndarray):
    """Hit depth (z), geometry id (-1: none) and incidence angle (deg) of (..., 6) rays."""
    import open3d as o3d

    shape = rays.shape[:-1]
    hits = scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays).reshape(-1, 6)))
    t_hit = hits["t_hit"].numpy().reshape(shape)
    hit = np.isfinite(t_hit)
    geometry = np.where(hit, hits["geometry_ids"].numpy().reshape(shape).astype(np.int64), -1)
    normals = hits["primitive_normals"].numpy().reshape(shape + (3,))
    directions = rays[..., 3:]
    cos = np.abs(np.einsum("...i,...i->...", normals, directions)) / np.linalg.norm(directions, axis=-1)
    incidence_deg = np.where(hit, np.rad2deg(np.arccos(np.clip(cos, 0.0, 1.0))), 90.0)
    return np.where(hit, t_hit, 0.0).astype(np.float32), geometry, incidence_deg


def _alone_pixels(
    placement: Placement, rays: np.ndarray, intrinsics: Intrinsics
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixels the placement covers when rendered alone: a window of the image and its hit mask."""
    vertices = placement.vertices()
    if len(vertices) == 0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), dtype=bool)
    if (vertices[:, 2] > 1e-6).all():
        uv = project(vertices, intrinsics)
        u0 = int(np.clip(np.floor(uv[:, 0].min()) - 1, 0, intrinsics.width))
        u1 = int(np.clip(np.ceil(uv[:, 0].max()) + 2, 0, intrinsics.width))
        v0 = int(np.clip(np.floor(uv[:, 1].min()) - 1, 0, intrinsics.height))
        v1 = int(np.clip(np.ceil(uv[:, 1].max()) + 2, 0, intrinsics.height))
    else:  # reaches behind the camera: its projection is unbounded
        u0, u1, v0, v1 = 0, intrinsics.width, 0, intrinsics.height
    window = (slice(v0, v1), slice(u0, u1))
    if u1 <= u0 or v1 <= v0:
        return window, np.zeros((v1 - v0, u1 - u0), dtype=bool)
    scene, _ = _tensor_scene([placement])
    depth, _, _ = _cast(scene, rays[window])
    return window, depth > 0


def render_frame(
    placements: list[Placement],
    rng: np.random.Generator,
    intrinsics: Intrinsics = Intrinsics(),
    noise: NoiseModel = NoiseModel(),
    plane: np.ndarray | None = None,
) -> Frame:
    """Render objects at given poses and add the sensor's noise.

    Args:
        placements: what is where; the targets among them become ``Frame.instances`` in order.
        rng: seeded generator for the noise.
        intrinsics: the camera.
        noise: the sensor's errors; ``NoiseModel.none()`` gives the exact ray-cast depth.
        plane: (4,) support-plane coefficients to store in the frame, if any.

    Returns:
        The frame.
    """
    rays = _pixel_rays(intrinsics)
    scene, geometry_ids = _tensor_scene(placements)
    exact_depth, geometry, incidence_deg = _cast(scene, rays)
    placement_of = np.full(int(geometry_ids.max(initial=-1)) + 2, -1, dtype=np.int64)
    placement_of[geometry_ids] = np.arange(len(placements))
    placement_index = placement_of[geometry]  # (H, W), -1 where nothing was hit (index -1 -> last)
    depth = apply_noise(exact_depth, incidence_deg, intrinsics, noise, rng)

    label_of = np.full(len(placements) + 1, NO_RETURN, dtype=np.int32)  # last entry: no hit
    targets = [i for i, placement in enumerate(placements) if placement.kind == "target"]
    for i, placement in enumerate(placements):
        if placement.kind == "distractor":
            label_of[i] = DISTRACTOR
    label_of[targets] = np.arange(len(targets), dtype=np.int32)
    labels = np.where(depth > 0, label_of[placement_index], NO_RETURN).astype(np.int32)

    instances = []
    for label, i in enumerate(targets):
        placement = placements[i]
        window, alone = _alone_pixels(placement, rays, intrinsics)
        seen = (placement_index[window] == i) & alone
        covered = int(alone.sum())
        mask = labels == label
        instances.append(
            Instance(
                name=placement.scene_object.name,
                rotation=np.asarray(placement.rotation, dtype=np.float64).copy(),
                translation=np.asarray(placement.translation, dtype=np.float64).copy(),
                visible_fraction=float(seen.sum()) / covered if covered else 0.0,
                mask=mask,
                n_points=int(mask.sum()),
            )
        )
    return Frame(depth=depth, labels=labels, instances=instances, intrinsics=intrinsics, plane=plane)


@dataclass(frozen=True)
class SceneCounts:
    """How many objects a frame holds (ranges inclusive).

    Attributes:
        target_copies: copies of each target object.
        distractors: distractor instances, each drawn uniformly from the distractor objects.
    """

    target_copies: tuple[int, int] = (0, 2)
    distractors: tuple[int, int] = (1, 4)


@dataclass(frozen=True)
class SceneLayout:
    """Where the table is and how objects are spread on it.

    The defaults suit targets of :attr:`REFERENCE_DIAGONAL_M`; :meth:`for_size` scales the
    camera, the table and the clearance to other sizes, and frames made without a layout get
    :meth:`for_targets`.

    Attributes:
        tilt_deg: range of the angle between the optical axis and the table's normal.
        distance_m: range of the distance along the optical axis to the table.
        roll_deg: the table turns about the optical axis by up to this much either way.
        size_m: side of the square table.
        thickness_m: of the table.
        margin: an object's centre projects at least this fraction of the image size from its
            border.
        candidates: positions tried per object before it is left out.
        touching: share of the objects (after the first) placed close beside one already on
            the table: bounding circles may overlap (centres ``touch_closeness`` of the two radii
            apart) as long as the meshes keep ``clearance_m`` apart, so copies touch, their
            segments merge, and the one farther from the camera is partly hidden.
        touch_closeness: range of the centre distance of close objects, as a share of the sum
            of their bounding radii.
        clearance_m: least distance between the surfaces of two objects (no interpenetration).
        max_range_m: an object's centre lies at most this far from the camera (the far side of
            a steeply seen table shows small parts as a handful of noisy points).
    """

    tilt_deg: tuple[float, float] = (35.0, 75.0)
    distance_m: tuple[float, float] = (0.6, 1.2)
    roll_deg: float = 10.0
    size_m: float = 1.5
    thickness_m: float = 0.02
    margin: float = 0.08
    candidates: int = 256
    touching: float = 0.7
    touch_closeness: tuple[float, float] = (0.4, 0.95)
    clearance_m: float = 0.003
    max_range_m: float = np.inf

    # The defaults were set for targets of this bounding-box diagonal (the shipped 0.25 m bunny).
    REFERENCE_DIAGONAL_M: ClassVar[float] = 0.25

    @classmethod
    def for_size(cls, diagonal_m: float) -> SceneLayout:
        """A table and camera for objects of this bounding-box diagonal (the largest target's):
        the camera 2.4-4.8 diagonals from the table along its axis (at least 0.5-0.8 m, a depth
        camera's near range), objects within 8 diagonals (at least 1.2 m) of it, a table at least
        five diagonals (and 1.5 m) wide, surfaces kept 1.2 % of a diagonal (at most 3 mm) apart;
        the defaults' distances for the 0.25 m bunny."""
        near, far = max(0.5, 2.4 * diagonal_m), max(0.8, 4.8 * diagonal_m)
        return cls(
            distance_m=(near, far),
            max_range_m=max(1.2, 8.0 * diagonal_m),
            size_m=max(cls.size_m, 5.0 * diagonal_m),
            clearance_m=min(cls.clearance_m, 0.012 * diagonal_m),
        )

    @classmethod
    def for_targets(cls, targets: list[SceneObject]) -> SceneLayout:
        """The layout of frames made without one: scaled to the largest target's diagonal
        (:meth:`for_size`); targets of the reference's size (to 1 %), and frames without
        targets, keep the defaults, which the shipped bunny's frames were made with."""
        diagonals = [float(np.linalg.norm(item.mesh.extents)) for item in targets]
        largest = max(diagonals, default=cls.REFERENCE_DIAGONAL_M)
        if abs(largest - cls.REFERENCE_DIAGONAL_M) <= 0.01 * cls.REFERENCE_DIAGONAL_M:
            return cls()
        return cls.for_size(largest)


CLEARANCE_TRIES = 24  # close candidates whose meshes are checked before an object is left out


def _clear_of(surface: np.ndarray, placed: list[Placement], nearby: list[int], clearance: float) -> bool:
    """Whether surface points (M, 3) of a new object keep ``clearance`` from the placed meshes
    ``nearby`` (no interpenetration: where two surfaces cross, sample points lie on both)."""
    import open3d as o3d

    scene, _ = _tensor_scene([placed[i] for i in nearby])
    distance = scene.compute_distance(o3d.core.Tensor(surface.astype(np.float32))).numpy()
    return bool(distance.min() >= clearance)


def make_frame(
    targets: list[SceneObject],
    distractors: list[SceneObject],
    rng: np.random.Generator,
    intrinsics: Intrinsics = Intrinsics(),
    counts: SceneCounts = SceneCounts(),
    noise: NoiseModel = NoiseModel(),
    layout: SceneLayout | None = None,
) -> Frame:
    """A random cluttered frame: :func:`place_objects`, rendered with the sensor's noise.

    Args:
        targets, distractors, rng, intrinsics, counts, layout: as for :func:`place_objects`.
        noise: the sensor's errors.

    Returns:
        The frame; ``Frame.plane`` is the table's top face.
    """
    placements, table = place_objects(targets, distractors, rng, intrinsics, counts, layout)
    return render_frame(placements, rng, intrinsics, noise, plane=table.coefficients)


def place_objects(
    targets: list[SceneObject],
    distractors: list[SceneObject],
    rng: np.random.Generator,
    intrinsics: Intrinsics = Intrinsics(),
    counts: SceneCounts = SceneCounts(),
    layout: SceneLayout | None = None,
) -> tuple[list[Placement], SupportPlane]:
    """Targets and distractors resting on a table in front of the camera.

    Every target object gets ``counts.target_copies`` copies, then ``counts.distractors``
    distractors are drawn; each rests in a stable pose drawn by probability, with a uniform yaw,
    at a uniform spot of the table whose centre is visible (``layout.margin``) and whose bounding
    circle overlaps no other; a share (``layout.touching``) goes close beside one already placed
    instead, its mesh clear of the others'. Targets are placed first, so they win the room; an object that
    finds no room among ``layout.candidates`` spots is left out.

    Args:
        targets: objects whose instances carry ground truth.
        distractors: clutter.
        rng: seeded generator; the only source of randomness.
        intrinsics: the camera.
        counts: how many of each.
        layout: the table and the spread of objects; None: :meth:`SceneLayout.for_targets`.

    Returns:
        The placements (the table first) and the table.
    """
    if layout is None:
        layout = SceneLayout.for_targets(targets)
    table = support_plane(
        tilt_deg=rng.uniform(*layout.tilt_deg),
        distance_m=rng.uniform(*layout.distance_m),
        roll_deg=rng.uniform(-layout.roll_deg, layout.roll_deg),
        size_m=layout.size_m,
        thickness_m=layout.thickness_m,
    )
    items = _draw_items(targets, distractors, rng, counts)
    placements = [table.placement()]
    circles: list[tuple[np.ndarray, float]] = []  # (centre (2,), radius) in plane coordinates
    for scene_object, kind in items:
        found = _find_room(scene_object, rng, intrinsics, layout, table, placements, circles)
        if found is None:
            continue
        centre, radius, rotation, translation = found
        placements.append(Placement(scene_object, rotation, translation, kind))
        circles.append((centre, radius))
    return placements, table


def _draw_items(
    targets: list[SceneObject], distractors: list[SceneObject], rng: np.random.Generator, counts: SceneCounts
) -> list[tuple[SceneObject, Kind]]:
    """The objects of a frame in the order they are placed: target copies, then distractors."""
    items: list[tuple[SceneObject, Kind]] = []
    for target in targets:
        low, high = counts.target_copies
        items += [(target, "target")] * int(rng.integers(low, high + 1))
    low, high = counts.distractors
    n_distractors = int(rng.integers(low, high + 1)) if distractors else 0
    items += [
        (distractors[int(k)], "distractor") for k in rng.integers(len(distractors) or 1, size=n_distractors)
    ]
    return items


def _find_room(
    scene_object: SceneObject,
    rng: np.random.Generator,
    intrinsics: Intrinsics,
    layout: SceneLayout,
    table: SupportPlane,
    placements: list[Placement],
    circles: list[tuple[np.ndarray, float]],
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray] | None:
    """A resting pose of one object on the table, clear of those placed (see :func:`place_objects`).

    Args:
        circles: the placed objects' bounding circles, ``(centre (2,), radius)`` in plane
            coordinates, in the order of ``placements[1:]``.

    Returns:
        ``(centre (2,), radius, rotation (3, 3), translation (3,))``, or None where no candidate
        spot has room.
    """
    half = layout.size_m / 2.0
    margin_u, margin_v = layout.margin * intrinsics.width, layout.margin * intrinsics.height
    poses = scene_object.resting_poses
    probabilities = np.array([pose.probability for pose in poses])
    pose = poses[int(rng.choice(len(poses), p=probabilities / probabilities.sum()))]
    reach = half - pose.radius
    candidates = rng.uniform(-1.0, 1.0, size=(layout.candidates, 2)) * max(reach, 0.0)  # (C, 2)
    yaws = rng.uniform(0.0, 2.0 * np.pi, size=layout.candidates)
    close = bool(circles) and rng.uniform() < layout.touching
    if close:  # beside an object already placed, circles overlapping
        centre, radius = circles[int(rng.integers(len(circles)))]
        # In front of it or behind it as the camera sees it (within about 45 degrees of the
        # line of sight along the table), where one hides part of the other.
        towards = -(np.append(centre, 0.0) @ table.axes + table.origin) @ table.axes[:2].T  # (2,)
        sight = np.arctan2(towards[1], towards[0])
        behind = rng.integers(2, size=layout.candidates) * np.pi
        angles = sight + behind + rng.normal(0.0, np.pi / 4, size=layout.candidates)
        distances = (radius + pose.radius) * rng.uniform(*layout.touch_closeness, size=layout.candidates)
        candidates = centre + distances[:, None] * np.column_stack([np.cos(angles), np.sin(angles)])
    lifted = np.column_stack([candidates, np.full(len(candidates), pose.height / 2.0)])  # (C, 3)
    centres = lifted @ table.axes + table.origin
    ok = (reach > 0) & (np.abs(candidates) <= reach).all(axis=1) & (centres[:, 2] > 0.05)
    ok &= np.linalg.norm(centres, axis=1) <= layout.max_range_m
    uv = project(np.where(ok[:, None], centres, 1.0), intrinsics)
    ok &= (uv[:, 0] >= margin_u) & (uv[:, 0] <= intrinsics.width - 1 - margin_u)
    ok &= (uv[:, 1] >= margin_v) & (uv[:, 1] <= intrinsics.height - 1 - margin_v)
    apart = np.stack(
        [np.linalg.norm(candidates - centre, axis=1) >= radius + pose.radius for centre, radius in circles]
        or [np.ones(len(candidates), dtype=bool)],
        axis=1,
    )  # (C, placed): bounding circles clear of each placed object
    chosen = np.flatnonzero(ok & (apart.all(axis=1) | close))
    for k in chosen[: CLEARANCE_TRIES if close else 1]:
        rotation, translation = table.rest(pose, tuple(candidates[k]), float(yaws[k]))
        nearby = [i + 1 for i in np.flatnonzero(~apart[k])]  # placements[0] is the table
        if not nearby or _clear_of(
            scene_object.surface_sample @ rotation + translation, placements, nearby, layout.clearance_m
        ):
            return candidates[k], pose.radius, rotation, translation
    return None


@dataclass(frozen=True)
class CameraMotion:
    """How the camera moves between the frames of a sequence (a camera on a robot arm, or held).

    Attributes:
        turn_deg: each frame the camera circles the middle of the targets by this much about the
            table's normal (and by ``tilt_share`` of it about a random axis);
        shift_m: and moves this far in a random direction;
        jitter: each frame's turn and shift vary by up to this share either way.
        tilt_share: see ``turn_deg``.
    """

    turn_deg: float = 2.0
    shift_m: float = 0.005
    jitter: float = 0.3
    tilt_share: float = 0.3


def _rotation_about(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """(3, 3) rotation by ``angle_rad`` about ``axis`` for row vectors (``p @ R``)."""
    from scipy.spatial.transform import Rotation

    axis = axis / np.linalg.norm(axis)
    return Rotation.from_rotvec(axis * angle_rad).as_matrix().T


def moved(placements: list[Placement], rotation: np.ndarray, translation: np.ndarray) -> list[Placement]:
    """The placements as a camera sees them after it moved: every sensor-frame point ``p``
    becomes ``p @ rotation + translation``.

    Args:
        placements: what is where, in the old sensor frame.
        rotation: (3, 3) and translation: (3,) metres, the old sensor frame to the new one.
    """
    return [
        Placement(
            item.scene_object, item.rotation @ rotation, item.translation @ rotation + translation, item.kind
        )
        for item in placements
    ]


def frame_sequence(
    targets: list[SceneObject],
    distractors: list[SceneObject],
    rng: np.random.Generator,
    length: int,
    intrinsics: Intrinsics = Intrinsics(),
    counts: SceneCounts = SceneCounts(),
    noise: NoiseModel = NoiseModel(),
    layout: SceneLayout | None = None,
    motion: CameraMotion = CameraMotion(),
):
    """Frames of one scene seen by a moving camera (:class:`CameraMotion`), for tracking: the
    objects stay where :func:`place_objects` put them, and each frame's ground truth is their
    pose in that frame's sensor frame.

    Args:
        targets, distractors, rng, intrinsics, counts, noise, layout: as for :func:`make_frame`.
        length: number of frames.
        motion: how the camera moves from one frame to the next.

    Yields:
        ``length`` frames, in order; ``Frame.plane`` is the table's top face in each.
    """
    placements, table = place_objects(targets, distractors, rng, intrinsics, counts, layout)
    normal, offset = table.normal, float(table.coefficients[3])
    centres = [item.translation for item in placements if item.kind == "target"]
    pivot = np.mean(centres, axis=0) if centres else table.origin.copy()
    tilt_axis = rng.normal(size=3)
    for index in range(length):
        if index:
            wobble = 1.0 + motion.jitter * rng.uniform(-1.0, 1.0, size=2)
            turn = np.deg2rad(motion.turn_deg) * wobble[0]
            rotation = _rotation_about(normal, turn) @ _rotation_about(tilt_axis, motion.tilt_share * turn)
            direction = rng.normal(size=3)
            shift = motion.shift_m * wobble[1] * direction / np.linalg.norm(direction)
            translation = pivot - pivot @ rotation + shift  # turn about the pivot, then shift
            placements = moved(placements, rotation, translation)
            pivot = pivot @ rotation + translation
            normal = normal @ rotation
            offset -= float(normal @ translation)
        yield render_frame(placements, rng, intrinsics, noise, plane=np.append(normal, offset))


def package_object(package) -> SceneObject:
    """A store package's object as frames place it: its mesh file in metres.

    Args:
        package: a :class:`cloudpose.store.package.ObjectPackage` whose units are known.

    Raises:
        ValueError: the package has no units, so it has no size in a metric frame.
    """
    import trimesh

    if package.metres_per_unit is None:
        raise ValueError(f"object {package.name!r} was added without units: a frame is in metres")
    mesh = trimesh.load(package.mesh_path, force="mesh")
    mesh.apply_scale(package.metres_per_unit)
    return SceneObject(package.name, mesh)


def save_frame(frame: Frame, stem: Path, cloud: bool = True, about: dict | None = None) -> list[Path]:
    """Write a frame as a depth sensor gives it, with its camera and ground truth.

    Files (``stem`` plus a suffix)::

        .png   16-bit depth in ``depth_scale`` units (0: no return), as ``POST /v1/detect`` takes
               it in the field ``depth``
        .json  ``camera``: fx, fy, cx, cy, depth_scale, the fields that go with the PNG; ``size``
               (width, height); ``instances``: each target's object and true pose, as an answer
               gives it (``canonical = points @ rotation + translation``, metres, the mesh file's
               coordinates; ``pose_matrix`` for column vectors) with its visible fraction; plus
               ``about`` (e.g. the command and seed that made it)
        .npy   (N, 3) float32 valid points in the sensor frame, metres (``cloud=True``)

    Returns:
        The paths written.
    """
    import json

    from PIL import Image

    stem.parent.mkdir(parents=True, exist_ok=True)
    depth_path = stem.with_name(stem.name + ".png")
    Image.fromarray(frame.depth_units()).save(depth_path, format="PNG", optimize=True)
    instances = []
    for instance in frame.instances:
        rotation, translation = instance.rotation, instance.translation  # observed = canonical @ R + t
        pose_matrix = np.eye(4)
        pose_matrix[:3, :3], pose_matrix[:3, 3] = rotation.T, translation
        instances.append(
            {
                "object": instance.name,
                "rotation": rotation.T.tolist(),
                "translation": (-translation @ rotation.T).tolist(),
                "pose_matrix": pose_matrix.tolist(),
                "visible_fraction": round(instance.visible_fraction, 4),
                "n_points": instance.n_points,
            }
        )
    camera = frame.intrinsics
    description = {
        "depth": depth_path.name,
        "cloud": stem.name + ".npy" if cloud else None,
        "camera": {
            "fx": camera.fx,
            "fy": camera.fy,
            "cx": camera.cx,
            "cy": camera.cy,
            "depth_scale": camera.depth_scale,
        },
        "size": [camera.width, camera.height],
        "units": "m",
        "convention": "canonical (mesh file coordinates, metres) = points @ rotation + translation",
        "instances": instances,
        **(about or {}),
    }
    json_path = stem.with_name(stem.name + ".json")
    json_path.write_text(json.dumps(description, indent=2) + "\n")
    written = [depth_path, json_path]
    if cloud:
        cloud_path = stem.with_name(stem.name + ".npy")
        np.save(cloud_path, frame.points().astype(np.float32))
        written.append(cloud_path)
    return written
