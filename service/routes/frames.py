"""Instances in whole sensor frames: found (``/v1/detect``) and followed from the frame before
(``/v1/track``). Frames are read here and searched in a pose worker, as clouds are."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import State

from cloudpose.estimation.served import ServedObject
from cloudpose.io.clouds import CloudError
from service import schemas
from service.decoding import decode_frame, frame_from_payload, json_payload, request_units
from service.deps import Objects, RequestId, Units
from service.forms import Body, read_frame
from service.openapi import DETECT_BODY, TRACK_BODY
from service.routes.pose import POSE_ERRORS

router = APIRouter()


def detect_job(
    state: State,
    objects: dict[str, ServedObject],
    body: Body,
    units: str | None,
    max_instances: int | None,
    request_id: str,
) -> bytes:
    """Parse the frame and find every instance (a worker thread); returns the JSON answer."""
    from cloudpose.detection.detect import detect

    settings = state.settings
    started = time.perf_counter()
    points, body_units, viewpoint = decode_frame(body, settings, units)
    units = request_units(units, body_units) or "m"
    report = detect(points, objects, units, viewpoint, max_instances, budget_s=settings.detect_budget_s)
    return orjson.dumps(
        {
            **report.answer(len(points), settings.detect_budget_s),
            "server_time_ms": (time.perf_counter() - started) * 1000,
            "request_id": request_id,
        }
    )


@router.post(
    "/v1/detect", openapi_extra=DETECT_BODY, response_model=schemas.DetectResponse, responses=POSE_ERRORS
)
async def detect_route(
    request: Request,
    registry: Objects,
    request_id: RequestId,
    objects: Annotated[
        str | None,
        Query(description="Comma-separated object names to look for (default: every served object)."),
    ] = None,
    max_instances: Annotated[int | None, Query(ge=1, description="At most this many detections.")] = None,
    units: Units = None,
) -> Response:
    """Every instance of the known objects in a whole sensor frame: JSON ``{"points": [...]}``
    (sensor frame, metres unless ``units``), a cloud file in ``file`` (organized clouds may
    mark missing returns with NaN), or a depth image in ``depth`` with ``fx``, ``fy``, ``cx``,
    ``cy`` (and ``depth_scale``), back-projected on the server. Each detection's pose follows
    ``/v1/pose``'s convention."""
    names = list(registry.objects)
    if objects is not None:
        names = [name.strip() for name in objects.split(",") if name.strip()]
    chosen = {name: registry.get(name) for name in names}
    if not chosen:
        raise CloudError(422, "objects names no object: give comma-separated names, or leave it out")
    state = request.app.state
    body = await read_frame(request, state.settings)
    encoded = await state.workers.run(
        lambda: detect_job(state, chosen, body, units, max_instances, request_id),
        state.settings.queue_timeout_s,
    )
    return Response(encoded, media_type="application/json")


def _frame_and_previous(body: Body, state: State, units: str | None) -> tuple[Any, str | None, Any, Any]:
    """A track request's frame (points, body units, viewpoint) and its previous poses as sent."""
    if body.json is not None:
        payload, body_units = json_payload(body.json)
        points, viewpoint = frame_from_payload(payload, state.settings.max_frame_points)
        return points, body_units, viewpoint, payload.get("previous")
    points, body_units, viewpoint = decode_frame(body, state.settings, units)
    previous_text = body.texts.get("previous")
    if previous_text is None:
        raise CloudError(422, "a multipart track request needs the field 'previous' (a JSON list)")
    try:
        previous = orjson.loads(previous_text)
    except orjson.JSONDecodeError:
        raise CloudError(422, "the field 'previous' is not valid JSON") from None
    return points, body_units, viewpoint, previous


def track_job(
    state: State, objects: dict[str, ServedObject], body: Body, units: str | None, request_id: str
) -> bytes:
    """Parse the frame and the previous poses, and follow each (a worker thread)."""
    from cloudpose.detection.track import PreviousPose, track

    started = time.perf_counter()
    points, body_units, viewpoint, previous = _frame_and_previous(body, state, units)
    poses = PreviousPose.parse(previous, objects)
    report = track(points, objects, poses, request_units(units, body_units) or "m", viewpoint)
    return orjson.dumps(
        {
            "tracks": report.answers(poses),
            "lost": report.lost,
            "n_points": int(len(points)),
            "server_time_ms": (time.perf_counter() - started) * 1000,
            "request_id": request_id,
        }
    )


@router.post(
    "/v1/track", openapi_extra=TRACK_BODY, response_model=schemas.TrackResponse, responses=POSE_ERRORS
)
async def track_route(
    request: Request, registry: Objects, request_id: RequestId, units: Units = None
) -> Response:
    """The instances of the frame before, followed into this frame (a sensor that moves, or
    parts that move, a little between frames): the same frame bodies as ``/v1/detect``, with
    the previous poses (``[{object, rotation, translation}]``, as ``/v1/detect`` answers
    them) in the JSON body's ``previous`` or the multipart field ``previous``. Each comes
    back, in order, followed or ``lost`` (moved too far, hidden, or gone: find it again
    with ``/v1/detect``)."""
    state = request.app.state
    body = await read_frame(request, state.settings)
    objects = dict(registry.objects)
    encoded = await state.workers.run(
        lambda: track_job(state, objects, body, units, request_id), state.settings.queue_timeout_s
    )
    return Response(encoded, media_type="application/json")
