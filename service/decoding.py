"""A read body (:mod:`service.forms`) into clouds and frames, in a pose worker (parsing is CPU work).

Every refusal is a :class:`~cloudpose.io.clouds.CloudError` with the status and ``detail`` the API
documents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from cloudpose.io.clouds import CloudError, as_cloud, read_cloud_file, read_frame_file
from cloudpose.settings import Settings
from service.forms import Body

DEPTH_FIELDS = ("fx", "fy", "cx", "cy", "depth_scale")


def request_units(query: str | None, body: str | None) -> str | None:
    """The cloud's declared unit: the query's or the body's, which must agree."""
    if query is not None and body is not None and query != body:
        raise CloudError(422, f"units given twice and differently: ?units={query} and 'units': {body!r}")
    return query if query is not None else body


def json_payload(body: bytes) -> tuple[Any, str | None]:
    """A JSON body and its ``units`` field."""
    if not body:
        raise CloudError(400, 'empty request body: send JSON like {"points": [[x, y, z], ...]}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise CloudError(400, f"malformed JSON: {error}") from error
    units = payload.get("units") if isinstance(payload, dict) else None
    if units is not None and not isinstance(units, str):
        raise CloudError(422, '\'units\' must be a unit name such as "mm", "m" or "in"')
    return payload, units


def clouds_from_json(body: bytes, settings: Settings, batch: bool) -> tuple[list[np.ndarray], str | None]:
    """Clouds and the ``units`` field of a JSON body."""
    payload, units = json_payload(body)
    if not batch:
        if not isinstance(payload, dict) or "points" not in payload:
            raise CloudError(422, "JSON body must be an object with a 'points' list of [x, y, z] triples")
        return [as_cloud(payload["points"], settings.max_points)], units
    clouds = payload.get("clouds") if isinstance(payload, dict) else None
    if not isinstance(clouds, list) or not clouds:
        raise CloudError(
            422, "JSON body must be an object with a non-empty 'clouds' list of {\"points\": [...]} objects"
        )
    if len(clouds) > settings.max_batch:
        raise CloudError(413, f"too many clouds: {len(clouds)} > limit {settings.max_batch}")
    result = []
    for index, cloud in enumerate(clouds):
        if not isinstance(cloud, dict) or "points" not in cloud:
            raise CloudError(422, f"clouds[{index}] must be an object with a 'points' list")
        result.append(as_cloud(cloud["points"], settings.max_points, where=f"clouds[{index}].points"))
    return result, units


def decode_clouds(
    body: Body, settings: Settings, batch: bool
) -> tuple[list[np.ndarray], list[str | None], str | None]:
    """Clouds, their file names (None for JSON) and the body's units, from a pose request's body."""
    if body.json is None:
        clouds = [
            read_cloud_file(upload.filename, upload.data, settings.max_points) for upload in body.uploads
        ]
        return clouds, [upload.filename for upload in body.uploads], None
    clouds, units = clouds_from_json(body.json, settings, batch)
    return clouds, [None] * len(clouds), units


def decode_frame(
    body: Body, settings: Settings, units: str | None = None
) -> tuple[np.ndarray, str | None, np.ndarray | None]:
    """The frame's points, the body's units and its viewpoint, from a frame request's body
    (``units``: the request's ``?units=``, which a depth image cannot take)."""
    from cloudpose.io.frames import depth_frame_points

    limit = settings.max_frame_points
    if body.json is not None:
        payload, body_units = json_payload(body.json)
        points, viewpoint = frame_from_payload(payload, limit)
        return points, body_units, viewpoint
    (upload,) = body.uploads
    if upload.field == "file":
        return read_frame_file(upload.filename, upload.data, limit), None, None
    if units not in (None, "m"):
        raise CloudError(
            422, "a depth image gives points in metres (depth_scale sets its raw unit): leave out ?units="
        )
    fields = {key: body.texts[key] for key in DEPTH_FIELDS if key in body.texts}
    return depth_frame_points(upload.filename, upload.data, fields, limit), None, None


def frame_from_payload(payload: Any, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A JSON frame body's points and viewpoint."""
    if not isinstance(payload, dict) or "points" not in payload:
        raise CloudError(422, "JSON body must be an object with a 'points' list of [x, y, z] triples")
    viewpoint = None
    if payload.get("viewpoint") is not None:
        viewpoint = as_cloud([payload["viewpoint"]], 1, where="viewpoint")[0]
    return as_cloud(payload["points"], limit), viewpoint
