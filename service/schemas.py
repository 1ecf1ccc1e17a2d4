"""The API's request bodies and error statuses, for the OpenAPI document; the answers' models are
the library's wire format (:mod:`cloudpose.wire`), re-exported here for the routes.

The routes parse bodies themselves (JSON and multipart share a route, and a cloud of 250,000
points is parsed in a worker thread, not by pydantic on the event loop), so the body models
describe what is sent; their limits are the service's. Tests check the answers against the wire
models, which the client and the in-process API read them with.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from cloudpose.estimation.inference import MIN_POINTS
from cloudpose.io.clouds import MAX_ABS_COORDINATE
from cloudpose.store.package import UNITS_M
from cloudpose.wire import (
    BatchResponse,
    DetectResponse,
    ErrorBody,
    Examples,
    Geometry,
    Health,
    ModelDescription,
    ObjectDescription,
    ObjectList,
    PoseResponse,
    Ready,
    Reloaded,
    TrackResponse,
)

# The answers' models the routes name as ``schemas.X`` (defined once, in cloudpose.wire).
__all__ = [
    "BaseModel",
    "BatchBody",
    "BatchResponse",
    "CloudBody",
    "DetectBody",
    "DetectResponse",
    "ErrorBody",
    "Examples",
    "Geometry",
    "Health",
    "ModelDescription",
    "ObjectDescription",
    "ObjectList",
    "PoseResponse",
    "PreviousPose",
    "Ready",
    "Reloaded",
    "TrackBody",
    "TrackResponse",
    "error_responses",
    "inline_schema",
]

Coordinate = Annotated[float, Field(ge=-MAX_ABS_COORDINATE, le=MAX_ABS_COORDINATE)]
Point = Annotated[list[Coordinate], Field(min_length=3, max_length=3)]
UnitName = Literal[tuple(UNITS_M)]  # type: ignore[valid-type]


class CloudBody(BaseModel):
    """One cloud: ``points`` as [x, y, z] rows, any order, in the object's units or ``units``."""

    points: list[Point] = Field(
        min_length=MIN_POINTS,
        description="The cloud's points, one [x, y, z] each (an exam-setting model takes exactly its N).",
    )
    units: UnitName | None = Field(default=None, description="What the points are in (or ?units=).")


class BatchCloud(BaseModel):
    points: list[Point] = Field(min_length=MIN_POINTS)


class BatchBody(BaseModel):
    """Several clouds of one object."""

    clouds: list[BatchCloud] = Field(min_length=1, description="Each cloud's points.")
    units: UnitName | None = Field(default=None, description="What every cloud's points are in.")


class DetectBody(BaseModel):
    """A whole sensor frame: its points in the sensor's frame (camera at the origin looking along
    +z, as a depth camera gives them), in ``units`` (metres unless ?units= says otherwise)."""

    points: list[Point] = Field(min_length=1, description="The frame's points, one [x, y, z] each.")
    viewpoint: Point | None = Field(
        default=None, description="Where the sensor was, when the points are not in its own frame."
    )
    units: UnitName | None = Field(default=None, description="What the points are in (or ?units=).")


class PreviousPose(BaseModel):
    """An instance's pose in the frame before, as ``/v1/detect`` or ``/v1/track`` answered it."""

    object: str
    rotation: list[Point] = Field(min_length=3, max_length=3, description="3x3 back rotation.")
    translation: Point


class TrackBody(DetectBody):
    previous: list[PreviousPose] = Field(min_length=1, description="The poses to follow, most trusted first.")


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined (OpenAPI request bodies cannot see them)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries with :class:`ErrorBody` for these statuses."""
    meaning = {
        400: "Malformed body (not JSON, broken multipart, empty).",
        401: "An API key is required and was missing or wrong.",
        403: "Admin routes are off (no API keys are configured).",
        404: "Unknown object (the detail lists the known ones).",
        408: "The request body did not arrive in time.",
        409: "The object store failed verification; the served objects are unchanged.",
        413: "Too large: body bytes, points per cloud or clouds per batch.",
        415: "Unsupported content type or cloud file type.",
        422: "Unusable content: wrong shape, NaN/Inf, absurd coordinates, unknown units, bad parameters.",
        503: "Busy: the pose workers are full; retry after the Retry-After seconds.",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}
