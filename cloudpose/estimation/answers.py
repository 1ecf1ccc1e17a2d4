"""The pose answer as JSON: the one builder behind ``POST /v1/pose`` and :class:`cloudpose.Estimator`.

The HTTP routes send this dict as the answer, and the in-process estimator parses it into the
client's dataclasses (:mod:`cloudpose.results`), so the two answer the same cloud with the same
keys, in the same order.

One cloud's answer is its :meth:`ObjectPose.to_dict` followed by ``n_points`` and, for an uploaded
file, ``file``; then come the object's ``object``, ``model_id`` and ``server_time_ms`` (and
``request_id`` over HTTP). A batch holds the clouds' answers under ``poses``, followed by the same
three keys.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cloudpose.estimation.served import ObjectPose, ServedObject


def cloud_answer(pose: ObjectPose, points: np.ndarray, file: str | None) -> dict[str, Any]:
    """One cloud's answer.

    Args:
        pose: the cloud's estimate.
        points: (N, 3) the cloud as it was read.
        file: the uploaded file's name (None or empty for a JSON body or an array).
    """
    return {**pose.to_dict(), "n_points": int(points.shape[0]), **({"file": file} if file else {})}


def pose_answer(
    served: ServedObject,
    poses: Sequence[ObjectPose],
    clouds: Sequence[np.ndarray],
    files: Sequence[str | None],
    started: float,
    batch: bool,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The answer to a pose request: one cloud's, or a batch's.

    Args:
        served: the object the clouds were posed as.
        poses: each cloud's estimate, in the order sent.
        clouds: (N, 3) each cloud as it was read.
        files: each cloud's file name (None for a JSON body or an array).
        started: ``time.perf_counter()`` when the request began; ``server_time_ms`` counts from it.
        batch: answer ``{"poses": [...], ...}`` (else the one cloud's answer and the object's keys).
        request_id: the request's id, the last key of a single answer (None: no such key).
    """
    answers = [
        cloud_answer(pose, points, file) for pose, points, file in zip(poses, clouds, files, strict=True)
    ]
    common = {
        "object": served.name,
        "model_id": served.model_id,
        "server_time_ms": (time.perf_counter() - started) * 1000,
    }
    if batch:
        return {"poses": answers, **common}
    return {**answers[0], **common, **({"request_id": request_id} if request_id is not None else {})}
