"""Synthesized training and evaluation data: posed copies of one template (the exam setting).

Every function takes a seeded generator and never global RNG. Poses follow
:mod:`models.geometry`: ``cloud = template @ rotation + translation``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.geometry import apply_pose, invert_pose, random_rotation
from pipeline.data.mesh import Mesh, sample_surface
from pipeline.files import atomic_write_bytes


def make_template(mesh: Mesh, n_points: int, seed: int) -> np.ndarray:
    """The exam-setting template: N points on the mesh surface, seeded, in a fixed order.

    Returns:
        (N, 3) float32 in the canonical frame.
    """
    return sample_surface(mesh, n_points, np.random.default_rng(seed)).astype(np.float32)


@dataclass
class PoseBatch:
    """Posed copies of the template.

    Attributes:
        points: (B, N, 3) observed clouds.
        rotation: (B, 3, 3) object rotation, ``points = template @ rotation + translation``.
        translation: (B, 3) object translation.
    """

    points: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor


def sample_poses(
    batch: int, translation_half_range: float, generator: torch.Generator, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotations uniform on SO(3) and translations uniform in ±half_range per axis.

    Returns:
        rotation (B, 3, 3) and translation (B, 3), float32 on ``device``.
    """
    rotation = random_rotation(batch, generator=generator, device=device)
    translation = (torch.rand(batch, 3, generator=generator, device=device) * 2 - 1) * translation_half_range
    return rotation, translation


def exam_batch(
    template: torch.Tensor, batch: int, translation_half_range: float, generator: torch.Generator
) -> PoseBatch:
    """A batch of posed template copies, made on the template's device.

    Args:
        template: (N, 3) on the device to synthesize on.
    """
    rotation, translation = sample_poses(batch, translation_half_range, generator, template.device)
    points = apply_pose(template.expand(batch, -1, -1), rotation, translation)
    return PoseBatch(points=points, rotation=rotation, translation=translation)


def generator_for(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


def held_out_batch(template: np.ndarray, count: int, translation_half_range: float, seed: int) -> PoseBatch:
    """A reproducible set of poses, made on the CPU so it is the same on every machine.

    The seed space is disjoint from training (which seeds per step from the run seed), because
    callers pass ``seed + HELD_OUT_OFFSET``.
    """
    template_t = torch.as_tensor(template, dtype=torch.float32)
    return exam_batch(template_t, count, translation_half_range, generator_for(seed, "cpu"))


HELD_OUT_OFFSET = 1_000_003
VALIDATION_OFFSET = 2_000_003


def write_dataset(path: str | Path, template: np.ndarray, data: PoseBatch, meta: dict) -> Path:
    """Write clouds, poses and the template to one ``.npz`` file, atomically.

    The file holds ``points`` (B, N, 3), ``rotation`` (B, 3, 3) and ``translation`` (B, 3) of the
    object pose, ``inverse_rotation`` / ``inverse_translation`` (the back transform, so that
    ``template = points @ inverse_rotation + inverse_translation``), ``template`` (N, 3) and
    ``meta`` (a JSON string).
    """
    inverse_rotation, inverse_translation = invert_pose(data.rotation.double(), data.translation.double())
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        points=data.points.cpu().numpy().astype(np.float32),
        rotation=data.rotation.cpu().numpy().astype(np.float32),
        translation=data.translation.cpu().numpy().astype(np.float32),
        inverse_rotation=inverse_rotation.numpy().astype(np.float32),
        inverse_translation=inverse_translation.numpy().astype(np.float32),
        template=template.astype(np.float32),
        meta=np.asarray(json.dumps(meta)),
    )
    return atomic_write_bytes(path, buffer.getvalue())


@dataclass
class SensorSampler:
    """Sensor-like clouds for order-free models, synthesized on the training device.

    Full clouds are fresh samples of a dense surface bank (no point correspondence between
    clouds); partial clouds are subsamples of a bank of single views rendered on the CPU
    (:mod:`pipeline.data.views`). Both then get Gaussian noise, uniform outliers and a pose. The
    ground truth is the pose of the whole object, also for partial views.

    Attributes:
        surface: (S, 3) dense surface sample, canonical frame, on the device.
        view_points: (V_total, 3) all views' points, concatenated.
        view_offsets: (V + 1,) start of each view in ``view_points`` (int64).
        diagonal: bounding-box diagonal of the object.
    """

    surface: torch.Tensor
    view_points: torch.Tensor
    view_offsets: torch.Tensor
    diagonal: float

    @classmethod
    def build(
        cls,
        mesh: Mesh,
        views: list[np.ndarray],
        device: torch.device | str,
        seed: int,
        surface_points: int = 200_000,
    ) -> SensorSampler:
        surface = sample_surface(mesh, surface_points, np.random.default_rng(seed))
        lengths = np.array([len(view) for view in views], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        view_points = np.concatenate(views) if views else np.zeros((0, 3))
        return cls(
            surface=torch.as_tensor(surface, dtype=torch.float32, device=device),
            view_points=torch.as_tensor(view_points, dtype=torch.float32, device=device),
            view_offsets=torch.as_tensor(offsets, device=device),
            diagonal=mesh.diagonal,
        )

    def batch(
        self,
        batch: int,
        n_points: int,
        generator: torch.Generator,
        *,
        translation_half_range: float,
        partial_fraction: float,
        noise_max: float,
        outlier_max: float,
    ) -> PoseBatch:
        """``batch`` clouds of ``n_points`` points each.

        Args:
            partial_fraction: share of clouds that are single partial views.
            noise_max: per-cloud Gaussian noise sigma is uniform in [0, noise_max] diagonals.
            outlier_max: per-cloud outlier share is uniform in [0, outlier_max].
        """
        device = self.surface.device
        uniform = lambda *shape: torch.rand(*shape, generator=generator, device=device)  # noqa: E731
        canonical = self.surface[
            torch.randint(len(self.surface), (batch, n_points), generator=generator, device=device)
        ]  # (B, N, 3)
        view_count = len(self.view_offsets) - 1
        if view_count > 0 and partial_fraction > 0:
            partial = uniform(batch) < partial_fraction  # (B,)
            view = torch.randint(view_count, (batch,), generator=generator, device=device)
            start, stop = self.view_offsets[view], self.view_offsets[view + 1]
            index = start[:, None] + (uniform(batch, n_points) * (stop - start)[:, None]).long()  # (B, N)
            canonical = torch.where(partial[:, None, None], self.view_points[index], canonical)
        sigma = uniform(batch, 1, 1) * noise_max * self.diagonal
        canonical = canonical + sigma * torch.randn(canonical.shape, generator=generator, device=device)
        rotation, translation = sample_poses(batch, translation_half_range, generator, device)
        points = apply_pose(canonical, rotation, translation)
        if outlier_max > 0:
            low = points.amin(dim=1, keepdim=True)
            high = points.amax(dim=1, keepdim=True)
            outliers = low + (high - low) * uniform(batch, n_points, 3)
            is_outlier = uniform(batch, n_points, 1) < uniform(batch, 1, 1) * outlier_max
            points = torch.where(is_outlier, outliers, points)
        return PoseBatch(points=points, rotation=rotation, translation=translation)
