"""cloudpose: the rigid pose of known objects in point clouds and depth frames.

The public surface is :mod:`cloudpose.api` (``Client``, ``Estimator`` and the result types),
re-exported here. The library's layers, each a sub-package: :mod:`cloudpose.geometry` and
:mod:`cloudpose.io` at the bottom, then :mod:`cloudpose.store`, :mod:`cloudpose.registration`,
:mod:`cloudpose.estimation` and :mod:`cloudpose.detection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudpose import api
from cloudpose.api import (
    AsyncClient,
    BadRequest,
    BatchResult,
    Candidate,
    Client,
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
    __all__,
)

if TYPE_CHECKING:
    from cloudpose.estimation.inference import Pose, PoseEstimator
    from cloudpose.estimator import Estimator
    from cloudpose.io.clouds import CloudError
    from cloudpose.io.frames import Intrinsics


def __getattr__(name: str) -> Any:
    # The in-process API's names (onnxruntime, open3d), loaded when first asked for.
    return getattr(api, name)
