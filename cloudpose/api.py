"""The public surface of cloudpose for Python programs: the HTTP client, and the same answers
computed in process.

    from cloudpose import Client, Estimator

    with Client("http://127.0.0.1:8000") as client:  # a running `cloudpose serve`
        result = client.pose(points)  # (N, 3) array, a cloud file's path, or a list of [x, y, z]

    estimator = Estimator.from_store()  # no server: the shipped objects and yours, loaded here
    result = estimator.pose(points, object="bunny", units="mm")

Both give a :class:`PoseResult` (``canonical = points @ result.rotation + result.translation``)
and raise the same typed errors (:class:`InvalidCloud`, :class:`NotFound`...) with the service's
``detail``. Importing the client loads only numpy and httpx; the in-process API (``Estimator``,
``PoseEstimator``) loads onnxruntime and open3d when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudpose.client import AsyncClient, Client
from cloudpose.results import (
    BadRequest,
    BatchResult,
    Candidate,
    CloudposeError,
    Detection,
    DetectResult,
    Fit,
    Forbidden,
    Health,
    InvalidCloud,
    ModelInfo,
    NotFound,
    ObjectInfo,
    ObjectList,
    Overloaded,
    PoseResult,
    Ready,
    ServerError,
    ServiceUnreachable,
    SymmetryInfo,
    Track,
    TrackResult,
    Unauthorized,
)

if TYPE_CHECKING:
    from cloudpose.estimation.inference import Pose, PoseEstimator
    from cloudpose.estimator import Estimator
    from cloudpose.io.clouds import CloudError
    from cloudpose.io.frames import Intrinsics

# Names whose modules load the serving stack, imported when first asked for.
_LAZY = {
    "Estimator": "cloudpose.estimator",
    "PoseEstimator": "cloudpose.estimation.inference",
    "Pose": "cloudpose.estimation.inference",
    "CloudError": "cloudpose.io.clouds",
    "Intrinsics": "cloudpose.io.frames",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cloudpose' has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "BadRequest",
    "BatchResult",
    "Candidate",
    "Client",
    "CloudError",
    "CloudposeError",
    "DetectResult",
    "Detection",
    "Estimator",
    "Fit",
    "Forbidden",
    "Health",
    "Intrinsics",
    "InvalidCloud",
    "ModelInfo",
    "NotFound",
    "ObjectInfo",
    "ObjectList",
    "Overloaded",
    "Pose",
    "PoseEstimator",
    "PoseResult",
    "Ready",
    "ServerError",
    "ServiceUnreachable",
    "SymmetryInfo",
    "Track",
    "TrackResult",
    "Unauthorized",
]
