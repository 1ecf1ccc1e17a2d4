"""The wire format: every answer of the HTTP API, once, as pydantic models.

The service states its answers with these models (its OpenAPI document), and the HTTP client
(:mod:`cloudpose.client`) and the in-process API (:mod:`cloudpose.estimator`) read the answers
through them into the result types of :mod:`cloudpose.results`; so a field added, renamed or
retyped here changes the document and both readers together.

Only pydantic here (no numpy, FastAPI, onnxruntime or open3d), so the client may import it cheaply.
The request bodies stay with the service (:mod:`service.schemas`): their limits are the service's.

Convention (row vectors): ``canonical = points @ rotation + translation`` brings the observed
points into the mesh file's frame, in the cloud's units.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class EquivalentPose(BaseModel):
    """A back transform as good as the answer under the object's symmetry."""

    rotation: Matrix3
    translation: list[float]


class SymmetryAnswer(BaseModel):
    """A pose answer's ``symmetry``: the object's symmetry and the poses equivalent to the answer
    under it (``axis`` and ``axis_point`` for an object of revolution)."""

    model_config = ConfigDict(extra="allow")

    kind: str
    order: int | None = None
    equivalent_poses: list[EquivalentPose] = []
    axis: list[float] | None = None
    axis_point: list[float] | None = None
    note: str | None = None


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
    # An open object in the document (its keys depend on the kind); SymmetryAnswer reads it.
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


# The viewer's answers (GET /v1/objects/{name}/geometry and /examples).


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
