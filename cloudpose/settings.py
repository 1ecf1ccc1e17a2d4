"""Service settings, read from the environment (prefix ``CLOUDPOSE_``) when the app is created."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from cloudpose.store.package import LayeredStore, ObjectStore

# The variables of the two store fields, which do not follow the prefix + field name rule:
# CLOUDPOSE_STORE names the user's store (what ``cloudpose object add`` writes to), served beside
# the shipped objects; a store served alone (``cloudpose serve --store``) has a variable of its own.
STORE_VARIABLES = {"user_store": "CLOUDPOSE_STORE", "store": "CLOUDPOSE_ONLY_STORE"}


class _Environment(EnvSettingsSource):
    """The ``CLOUDPOSE_*`` variables, the two store fields taken from :data:`STORE_VARIABLES`."""

    def __call__(self) -> dict[str, Any]:
        values = {key: value for key, value in super().__call__().items() if key not in STORE_VARIABLES}
        for field_name, variable in STORE_VARIABLES.items():
            if os.environ.get(variable, "").strip():
                values[field_name] = os.environ[variable].strip()
        return values


class Settings(BaseSettings):
    """Limits, budgets, security and the objects to serve.

    Attributes:
        store: serve exactly this object store, every package in it (``cloudpose serve --store``;
            ``CLOUDPOSE_ONLY_STORE``); None serves the shipped objects and the user's store.
        user_store: the user's store (``CLOUDPOSE_STORE``; None: ``objects`` in the user's data
            folder), served beside the shipped objects when ``store`` is None.
        watch_store_s: how often the served stores are looked at for added, replaced or removed
            packages, which are then loaded as a reload loads them (0: never; SIGHUP still reloads).
        default_object: the object ``/v1/pose`` answers for (the only one, if the store holds
            one and this one is absent).
        model_path: serve this bare exported ONNX model (sidecar beside it) instead of the store.
        max_points: largest cloud accepted, in points (larger clouds get 413).
        max_body_bytes: largest request body accepted (larger bodies get 413).
        max_batch: most clouds in one batch request.
        max_frame_points: largest whole frame ``/v1/detect`` accepts, in points or pixels (a VGA
            depth camera gives 307,200).
        detect_budget_s: how long one frame's detection may run; past it the detections so far
            are the answer, with a warning.
        threads: onnxruntime intra-op threads (1 keeps latency low under concurrent requests).
        pose_budget_ms: how long one cloud's search may run; past it the answer is the best pose
            so far, marked not found. The hardest single views of the bunny need about 0.9 s on
            2 CPU cores, so the default leaves them room.
        batch_budget_s: cap on a whole batch's search (each cloud still gets at most
            ``pose_budget_ms``; clouds after the cap get their best pose at once).
        pool_threads: pose jobs computing at once in one process.
        queue_limit: pose jobs waiting at most; beyond, 503 with Retry-After.
        queue_timeout_s: longest wait for a free worker before 503.
        slow_after_ms: a cloud still computing after this long is hard: it yields the CPU to
            easy ones and takes turns with other hard ones (``hard_lanes`` at once).
        hard_lanes: hard clouds computing at once.
        hard_processes: hard clouds compute in ``hard_lanes`` processes of their own at a lower
            priority (``service.hard``), so they cannot slow easy ones down through the
            interpreter lock; False keeps them in this process's threads.
        body_timeout_s: a request body must arrive within this (else 408 and the connection
            is closed).
        header_timeout_s: a request's headers must arrive within this of connecting.
        keep_alive_s: an idle kept-alive connection is closed after this.
        max_connections: open connections at most; the longest-idle one makes room for a new one.
        api_keys: comma-separated keys; when set, every route except ``/health`` and ``/ready``
            needs one (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``).
        cors_origins: comma-separated origins allowed by CORS (none: CORS off).
        log_format: ``json`` (one JSON object a line) or ``text``.
    """

    model_config = SettingsConfigDict(env_prefix="CLOUDPOSE_")

    store: Path | None = None
    user_store: Path | None = None
    watch_store_s: float = Field(default=2.0, ge=0)
    default_object: str = "bunny"
    model_path: Path | None = None
    max_points: int = Field(default=250_000, gt=0)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_batch: int = Field(default=256, gt=0)
    max_frame_points: int = Field(default=1_000_000, gt=0)
    detect_budget_s: float = Field(default=10.0, gt=0)
    threads: int = Field(default=1, gt=0)
    pose_budget_ms: float = Field(default=1000.0, gt=0)
    batch_budget_s: float = Field(default=20.0, gt=0)
    pool_threads: int = Field(default=4, gt=0)
    queue_limit: int = Field(default=64, ge=0)
    queue_timeout_s: float = Field(default=10.0, gt=0)
    slow_after_ms: float = Field(default=50.0, gt=0)
    hard_lanes: int = Field(default=1, gt=0)
    hard_processes: bool = True
    body_timeout_s: float = Field(default=20.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=4096, gt=0)
    api_keys: str = ""
    cors_origins: str = ""
    log_format: str = Field(default="json", pattern="^(json|text)$")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _Environment(settings_cls), dotenv_settings, file_secret_settings)

    def object_store(self) -> ObjectStore:
        """The store served: ``store`` alone, else the shipped objects with the user's store."""
        return ObjectStore(self.store) if self.store is not None else LayeredStore(self.user_store)

    def keys(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    def origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]
