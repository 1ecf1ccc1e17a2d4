"""Service settings, read from the environment (prefix ``CLOUDPOSE_``) when the app is created."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = Path("models/pretrained/bunny_pointnet/model.onnx")


class Settings(BaseSettings):
    """Limits and the model to serve.

    Attributes:
        model_path: exported ONNX model; its sidecar ``model.json`` must sit beside it.
        max_points: largest cloud accepted, in points (larger clouds get 413).
        max_body_bytes: largest request body accepted (larger bodies get 413).
        max_batch: most clouds in one ``/v1/pose/batch`` request.
        threads: onnxruntime intra-op threads (1 keeps latency low under concurrent requests).
    """

    model_config = SettingsConfigDict(env_prefix="CLOUDPOSE_")

    model_path: Path = DEFAULT_MODEL
    max_points: int = Field(default=250_000, gt=0)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_batch: int = Field(default=256, gt=0)
    threads: int = Field(default=1, gt=0)
