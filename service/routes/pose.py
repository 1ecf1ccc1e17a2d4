"""Poses of clouds of one object: ``/v1/pose`` (the default object) and ``/v1/objects/{name}/pose``,
each also as a batch.

The route reads the body on the event loop, then parses, checks and estimates in one job of the
bounded pose pool (``service.compute``) under a compute budget (``cloudpose.budget``); a full pool
is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import time

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import State

from cloudpose.budget import Budget, TurnedHard
from cloudpose.estimation.answers import pose_answer
from cloudpose.estimation.served import ObjectPose, ServedObject
from service import schemas
from service.decoding import decode_clouds, request_units
from service.deps import ObjectName, Objects, Refine, RequestId, Units
from service.forms import Body, read_clouds
from service.openapi import BATCH_BODY, POSE_BODY

router = APIRouter()
POSE_ERRORS = schemas.error_responses(400, 404, 408, 413, 415, 422, 503)


def estimate_clouds(
    state: State, served: ServedObject, clouds: list[np.ndarray], refine: bool, units: str | None
) -> list[ObjectPose]:
    """Each cloud under its budget (the per-cloud allowance, within the batch's cap); a cloud
    that turns out to be hard goes, with the rest of the request, to a hard-cloud process,
    or gets its best pose at once when those are all busy."""
    settings, workers = state.settings, state.workers
    per_cloud_s = settings.pose_budget_ms / 1000
    total_s = min(settings.batch_budget_s, per_cloud_s * len(clouds))
    batch_end, end_wall = time.monotonic() + total_s, time.time() + total_s

    def left() -> float:
        return max(0.0, min(per_cloud_s, batch_end - time.monotonic()))

    try:
        return served.estimate(clouds, refine, units, budgets=lambda: workers.budget(left(), per_cloud_s))
    except TurnedHard as turned:
        rest = clouds[len(turned.answered) :]
        hard = state.hard  # the processes now: a reload may have replaced them
        answers = (
            hard.estimate(served.name, rest, refine, units, per_cloud_s, end_wall)
            if hard is not None
            else None
        )
        where = "process" if answers is not None else "at once"
        if answers is None:  # every hard-cloud process is busy: the best pose within what is left
            answers = served.estimate(
                rest, refine, units, budgets=lambda: Budget(left(), nominal_s=per_cloud_s)
            )
        state.metrics.hard_clouds.labels(served.name, where).inc(len(rest))
        return turned.answered + answers


def pose_job(
    state: State,
    served: ServedObject,
    body: Body,
    refine: bool,
    units: str | None,
    batch: bool,
    request_id: str,
) -> bytes:
    """Parse, check and estimate (a worker thread); returns the JSON answer."""
    started = time.perf_counter()
    clouds, names, body_units = decode_clouds(body, state.settings, batch)
    units = request_units(units, body_units)
    for index, points in enumerate(clouds):
        served.check_cloud(points, where=f"clouds[{index}]" if batch else "points")
    results = estimate_clouds(state, served, clouds, refine, units)
    state.metrics.observe(served, results, time.perf_counter() - started)
    answer = pose_answer(served, results, clouds, names, started, batch, request_id)
    return orjson.dumps(answer)


async def answer(
    request: Request,
    served: ServedObject,
    refine: bool,
    units: str | None,
    batch: bool,
    request_id: str,
) -> Response:
    """Read the body here, then pose it in a worker."""
    state = request.app.state
    body = await read_clouds(request, state.settings, batch)
    workers, metrics = state.workers, state.metrics
    metrics.queue(workers.pending + 1)
    try:
        encoded = await workers.run(
            lambda: pose_job(state, served, body, refine, units, batch, request_id),
            state.settings.queue_timeout_s,
        )
    finally:
        metrics.queue(workers.pending)
    return Response(encoded, media_type="application/json")


def pose_route(path: str, batch: bool):
    """``router.post`` with a pose route's documented body, answer and errors."""
    return router.post(
        path,
        openapi_extra=BATCH_BODY if batch else POSE_BODY,
        response_model=schemas.BatchResponse if batch else schemas.PoseResponse,
        responses=POSE_ERRORS,
    )


@pose_route("/v1/pose", batch=False)
async def pose(
    request: Request, objects: Objects, request_id: RequestId, refine: Refine = True, units: Units = None
) -> Response:
    """Pose of one cloud of the default object: JSON ``{"points": [[x, y, z], ...]}`` or a file
    (.ply, .pcd, .xyz, .npy) in the multipart field ``file``."""
    return await answer(request, objects.get(None), refine, units, False, request_id)


@pose_route("/v1/pose/batch", batch=True)
async def pose_batch(
    request: Request, objects: Objects, request_id: RequestId, refine: Refine = True, units: Units = None
) -> Response:
    """Poses of several clouds of the default object: JSON ``{"clouds": [...]}`` or files."""
    return await answer(request, objects.get(None), refine, units, True, request_id)


@pose_route("/v1/objects/{name}/pose", batch=False)
async def object_pose(
    name: ObjectName,
    request: Request,
    objects: Objects,
    request_id: RequestId,
    refine: Refine = True,
    units: Units = None,
) -> Response:
    """Pose of one cloud of the named object (file frame, the cloud's units)."""
    return await answer(request, objects.get(name), refine, units, False, request_id)


@pose_route("/v1/objects/{name}/pose/batch", batch=True)
async def object_pose_batch(
    name: ObjectName,
    request: Request,
    objects: Objects,
    request_id: RequestId,
    refine: Refine = True,
    units: Units = None,
) -> Response:
    """Poses of several clouds of the named object."""
    return await answer(request, objects.get(name), refine, units, True, request_id)
