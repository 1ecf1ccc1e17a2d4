"""Service settings, read from the environment (prefix ``CLOUDPOSE_``) when the app is created."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = Path("models/objects")


class Settings(BaseSettings):
    """Limits and the objects to serve.

    Attributes:
        store: the object store; every package in it is served.
        default_object: the object ``/v1/pose`` answers for (the only one, if the store holds
            one and this one is absent).
        model_path: serve this bare exported ONNX model (sidecar beside it) instead of the store.
        max_points: largest cloud accepted, in points (larger clouds get 413).
        max_body_bytes: largest request body accepted (larger bodies get 413).
        max_batch: most clouds in one ``/v1/pose/batch`` request.
        threads: onnxruntime intra-op threads (1 keeps latency low under concurrent requests).
    """

    model_config = SettingsConfigDict(env_prefix="CLOUDPOSE_")

    store: Path = DEFAULT_STORE
    default_object: str = "bunny"
    model_path: Path | None = None
    max_points: int = Field(default=250_000, gt=0)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_batch: int = Field(default=256, gt=0)
    threads: int = Field(default=1, gt=0)
