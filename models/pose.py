"""Pose regressors. Each maps a batch of clouds (B, N, 3) to the object pose.

Outputs follow :mod:`models.geometry`: ``rotation_raw`` (B, 3, 3), not yet projected onto
SO(3), and ``translation`` (B, 3), such that ``observed ≈ canonical @ rotation + translation``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.exam.activations import make_activation

MODEL_KINDS = ("flat_fc", "pointnet")


class FlatPoseRegressor(nn.Module):
    """The exam's regressor (8.2/8.3): flatten (B, N, 3) to (B, 3N), fully connected layers, 12 outputs.

    With no hidden layer it is one linear map, which can represent the pose of copies of one
    template exactly (centered least squares). Hidden layers use the given activation.

    Args:
        n_points: N, the number of points per cloud (fixed: the input layer has 3N features).
        hidden: widths of the hidden layers; empty for a single linear layer.
        activation: "relu", "elu" or "none".
        scale: length unit the network works in (the mesh's bounding-box diagonal), so inputs
            and translation targets are of order one whatever the mesh's units.
    """

    def __init__(
        self,
        n_points: int,
        hidden: Sequence[int] = (),
        activation: str = "none",
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.n_points = n_points
        widths = [3 * n_points, *hidden, 12]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(width_in, width_out))
            if index < len(widths) - 2:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: points (B, N, 3). Returns: rotation_raw (B, 3, 3), translation (B, 3)."""
        batch = points.shape[0]
        features = (points / self.scale).reshape(batch, -1)  # (B, N*3)
        out = self.net(features)  # (B, 12)
        rotation_raw = out[:, :9].reshape(batch, 3, 3)
        translation = out[:, 9:] * self.scale
        return rotation_raw, translation


def build_pose_model(kind: str, n_points: int, **kwargs) -> nn.Module:
    """Build a pose regressor from the arguments a checkpoint stores."""
    if kind == "flat_fc":
        return FlatPoseRegressor(n_points, **kwargs)
    if kind == "pointnet":
        return PointNetPoseRegressor(**kwargs)
    raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")


class PointNetPoseRegressor(nn.Module):
    """Order-free regressor: a shared per-point MLP, max and mean pooling, then a pose head.

    The output does not depend on the order of the points and accepts any N >= 1. The cloud is
    centred on its own centroid first, so the network sees a translation-free shape; the head
    predicts the rotation (9 numbers, projected onto SO(3) downstream, Levinson et al. 2020) and
    the offset from the cloud's centroid to the object's, which differ for partial views.

    Args:
        widths: per-point MLP widths; the last is the global feature size.
        head: hidden widths of the pose head.
        activation: "relu", "elu" or "none".
        scale: length unit (the mesh's bounding-box diagonal).
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256),
        head: Sequence[int] = (256, 128),
        activation: str = "relu",
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in = 3
        for width in widths:
            layers += [nn.Linear(width_in, width), make_activation(activation)]
            width_in = width
        self.point_mlp = nn.Sequential(*layers)
        head_layers: list[nn.Module] = []
        width_in = 2 * widths[-1]
        for width in head:
            head_layers += [nn.Linear(width_in, width), make_activation(activation)]
            width_in = width
        head_layers.append(nn.Linear(width_in, 12))
        self.head = nn.Sequential(*head_layers)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: points (B, N, 3). Returns: rotation_raw (B, 3, 3), translation (B, 3)."""
        batch = points.shape[0]
        centroid = points.mean(dim=1)  # (B, 3)
        local = (points - centroid[:, None, :]) / self.scale  # (B, N, 3)
        features = self.point_mlp(local)  # (B, N, C)
        pooled = torch.cat([features.max(dim=1).values, features.mean(dim=1)], dim=-1)  # (B, 2C)
        out = self.head(pooled)  # (B, 12)
        rotation_raw = out[:, :9].reshape(batch, 3, 3)
        translation = centroid + out[:, 9:] * self.scale
        return rotation_raw, translation
