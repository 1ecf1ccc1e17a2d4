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
from pipeline.files import atomic_write_bytes
from pipeline.mesh import Mesh, sample_surface


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


def held_out_batch(
    template: np.ndarray, count: int, translation_half_range: float, seed: int
) -> PoseBatch:
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
