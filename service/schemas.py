"""Request and response models of the API, for the OpenAPI document.

The routes parse bodies themselves (JSON and multipart share a route, and a cloud of 250,000
points is parsed in a worker thread, not by pydantic on the event loop), so these models
describe what is sent and received; tests check the answers against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudpose.estimation.inference import MIN_POINTS
from cloudpose.io.clouds import MAX_ABS_COORDINATE
from cloudpose.store.package import UNITS_M

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


class ErrorBody(BaseModel):
    """Every error answer: one sentence that says what was wrong and what to send instead."""

    detail: str


class Confidence(BaseModel):
    model_config = ConfigDict(extra="allow")

    confidence: float
    confident: bool
    fitness: float
    inlier_rmse: float | None
    inlier_rmse_percent: float | None
    hypotheses: int
    refined: bool
    explained: bool
    surface_noise: float | None


Matrix3 = Annotated[list[Annotated[list[float], Field(min_length=3, max_length=3)]], Field(min_length=3)]


class Candidate(BaseModel):
    rotation: Matrix3
    translation: list[float]
    fitness: float
    inlier_rmse: float | None
    confidence: float


class PoseAnswer(BaseModel):
    """One cloud's pose. ``canonical = points @ rotation + translation`` (row vectors, the mesh
    file's frame, the cloud's units). Use it only when ``found`` is true."""

    found: bool = Field(description="Whether the pose may be used; see reason when not.")
    rotation: Matrix3
    translation: list[float]
    pose_matrix: Annotated[list[list[float]], Field(min_length=4, max_length=4)]
    quaternion_xyzw: list[float]
    refined: bool
    confidence: Confidence | None
    units: str | None
    scale: float
    reason: str | None = None
    symmetry: dict[str, Any] | None = None
    candidates: list[Candidate] | None = None
    warnings: list[str] | None = None
    n_points: int
    file: str | None = Field(
        default=None,
        description="The uploaded file this answer is for (a batch of files answers in their order); "
        "absent for a JSON body.",
    )


class PoseResponse(PoseAnswer):
    object: str
    model_id: str
    server_time_ms: float
    request_id: str | None = None


class BatchResponse(BaseModel):
    poses: list[PoseAnswer]
    object: str
    model_id: str
    server_time_ms: float


class DetectBody(BaseModel):
    """A whole sensor frame: its points in the sensor's frame (camera at the origin looking along
    +z, as a depth camera gives them), in ``units`` (metres unless ?units= says otherwise)."""

    points: list[Point] = Field(min_length=1, description="The frame's points, one [x, y, z] each.")
    viewpoint: Point | None = Field(
        default=None, description="Where the sensor was, when the points are not in its own frame."
    )
    units: UnitName | None = Field(default=None, description="What the points are in (or ?units=).")


class DetectionAnswer(PoseAnswer):
    object: str
    confident: bool
    visible_fraction: float


class DetectResponse(BaseModel):
    detections: list[DetectionAnswer] = Field(description="Found instances, best first.")
    n_points: int
    segments: int
    complete: bool = Field(description="False when the detection budget ran out before every segment.")
    warnings: list[str] | None = None
    server_time_ms: float
    request_id: str | None = None


class PreviousPose(BaseModel):
    """An instance's pose in the frame before, as ``/v1/detect`` or ``/v1/track`` answered it."""

    object: str
    rotation: list[Point] = Field(min_length=3, max_length=3, description="3x3 back rotation.")
    translation: Point


class TrackBody(DetectBody):
    previous: list[PreviousPose] = Field(min_length=1, description="The poses to follow, most trusted first.")


class TrackAnswer(BaseModel):
    """A followed pose (the fields of a detection), or ``lost: true`` with the object alone."""

    model_config = ConfigDict(extra="allow")
    lost: bool
    object: str


class TrackResponse(BaseModel):
    tracks: list[TrackAnswer] = Field(description="One per previous pose, in their order.")
    lost: int = Field(description="How many were lost (find them again with /v1/detect).")
    n_points: int
    server_time_ms: float
    request_id: str | None = None


class Health(BaseModel):
    status: Literal["ok"]
    model_id: str | None
    objects: list[str]


class Ready(BaseModel):
    status: Literal["ready", "busy"]
    pending: int
    capacity: int
    hard_processes: Literal["ready", "loading", "off"]


class Reloaded(BaseModel):
    objects: dict[str, str] = Field(description="Served object names and their model ids.")


Measured = Annotated[
    str | None,
    Field(description="When the figures were measured (ISO 8601, UTC); null when not recorded."),
]


class SetFigures(BaseModel):
    """One method's figures on one benchmark set (``cloudpose bench``)."""

    model_config = ConfigDict(extra="allow")

    count: int
    rotation_median_deg: float | None = None
    rotation_p99_deg: float | None = None
    success_5deg: float | None = None
    found_rate: float | None = None
    found_wrong: float | None = None
    add_s_median_pct: float | None = None
    median_ms: float | None = None


class ServedFigures(BaseModel):
    """The figures of the answers /v1/pose gives (for an order-free model, network + refinement)."""

    model_config = ConfigDict(extra="allow")

    what: str = Field(description="What was measured, in words.")
    measured: Measured
    command: str | None = Field(description="The command that measured them.")
    seed: int | None
    sets: dict[str, SetFigures] | None = Field(description="Figures by benchmark set; null when none.")
    note: str | None = Field(default=None, description="How to measure figures that are missing.")


class BenchFigures(BaseModel):
    what: str
    measured: Measured
    command: str | None
    seed: int | None
    sets: dict[str, SetFigures] | None


class ValidationFigures(BaseModel):
    """The network's own figures on its validation set, at the end of training."""

    model_config = ConfigDict(extra="allow")

    what: str
    measured: Measured
    count: int | None = None
    rotation_median_deg: float | None = None
    success_5deg: float | None = None


class NetworkOnlyFigures(BaseModel):
    """The network alone, without refinement: where refinement starts, not what /v1/pose answers."""

    what: str
    validation: ValidationFigures | None
    bench: BenchFigures | None


class ModelCard(BaseModel):
    """An object's figures, each labelled: the served answers' and the network's alone."""

    served: ServedFigures
    network_only: NetworkOnlyFigures


class ObjectDescription(BaseModel):
    """One served object: name, units, size, symmetry, model id and its labelled figures."""

    model_config = ConfigDict(extra="allow")

    name: str
    units: str | None
    metres_per_unit: float | None
    size: dict[str, Any]
    symmetry: dict[str, Any]
    model_id: str | None
    trained: bool
    bench: dict[str, Any] | None = Field(description="The package's recorded bench, as recorded.")
    metrics: ModelCard


class ObjectList(BaseModel):
    objects: list[ObjectDescription]
    default: str | None


class ModelDescription(BaseModel):
    """The default object's model: kind, expected N, convention, units, labelled figures, limits."""

    model_config = ConfigDict(extra="allow")

    model_id: str
    kind: str
    order_free: bool
    n_points: int
    convention: Any
    units: Any
    metrics: ModelCard
    input_requirement: str
    object: ObjectDescription
    limits: dict[str, float]


# The viewer's routes (service.routes.viewer).


class Mesh(BaseModel):
    vertices: list[list[float]] = Field(description="(V, 3) vertex positions, canonical frame.")
    faces: list[list[int]] = Field(description="(F, 3) vertex indices of each triangle.")


class Geometry(BaseModel):
    """An object's model to draw, in the canonical frame and the object's units."""

    object: str
    units: str | None = Field(description="The object's units (None when it was added without).")
    frame: str
    points: list[list[float]] = Field(description="A thinned surface sample, (M, 3).")
    mesh: Mesh | None = Field(description="The mesh, when it is small enough to send.")


class Example(BaseModel):
    file: str
    bytes: int


class Examples(BaseModel):
    object: str
    examples: list[Example] = Field(description="The example clouds shipped in the object's package.")


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
