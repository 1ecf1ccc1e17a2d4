"""What cloudpose answers, as typed Python values: the results and errors that both the HTTP client
(:mod:`cloudpose.client`) and the in-process API (:mod:`cloudpose.estimator`) give.

Each result is read through the answer's wire model (:mod:`cloudpose.wire`, the models the
service's OpenAPI document is made of), so the service, this module and the document share one
definition of every field. Only numpy and pydantic here (no httpx, onnxruntime or open3d), so
anything may import it cheaply.

Convention (row vectors, as ``/v1/pose`` answers): ``canonical = points @ rotation + translation``
brings the observed points into the mesh file's frame, in the cloud's units. ``pose_matrix`` is
the object's pose for column vectors, ``[x_obs; 1] = pose_matrix @ [x_can; 1]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from cloudpose import wire

# Which error class an HTTP status becomes (the rest of 4xx: BadRequest; 5xx: ServerError).
INVALID_CLOUD_STATUSES = (413, 415, 422)
OVERLOADED_STATUSES = (429, 503)


class CloudposeError(Exception):
    """Any refusal or failure of cloudpose, remote or in process.

    Attributes:
        status: the HTTP status the service answers with (None when no answer came back).
        detail: the service's one-sentence ``detail``: what was wrong and what to send instead.
        request_id: the answer's ``X-Request-ID`` (for the service's logs), when there was one.
    """

    def __init__(self, status: int | None, detail: str, request_id: str | None = None) -> None:
        super().__init__(detail if status is None else f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.request_id = request_id


class BadRequest(CloudposeError):
    """A 4xx the request itself caused (malformed body, too slow, refused reload...)."""


class InvalidCloud(BadRequest):
    """The cloud cannot be used (422), is over the limits (413) or is of an unread type (415)."""


class Unauthorized(CloudposeError):
    """401: the service needs an API key and this one is missing or wrong."""


class Forbidden(CloudposeError):
    """403: the route is off (admin routes need API keys configured on the service)."""


class NotFound(CloudposeError):
    """404: an unknown object (the detail lists the known ones), or no default object."""


class Overloaded(CloudposeError):
    """503 (or 429): the service is busy; try again after ``retry_after`` seconds.

    Attributes:
        retry_after: the answer's ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(
        self, status: int | None, detail: str, request_id: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status, detail, request_id)
        self.retry_after = retry_after


class ServerError(CloudposeError):
    """A 5xx other than 503: a fault of the service (always a bug worth reporting)."""


class ServiceUnreachable(CloudposeError):
    """No answer came back: the connection failed or timed out (``status`` is None)."""


def error_for(
    status: int, detail: str, request_id: str | None = None, retry_after: float | None = None
) -> CloudposeError:
    """The typed error of an HTTP status and its ``detail``."""
    if status in OVERLOADED_STATUSES:
        return Overloaded(status, detail, request_id, retry_after)
    kinds: dict[int, type[CloudposeError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound}
    kind = kinds.get(status)
    if kind is None:
        kind = (
            InvalidCloud if status in INVALID_CLOUD_STATUSES else BadRequest if status < 500 else ServerError
        )
    return kind(status, detail, request_id)


def _matrix(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"expected an array of shape {shape}, got {array.shape}")
    return array


@dataclass(frozen=True)
class Fit:
    """How well the posed object's surface explains the cloud (the answer's ``confidence`` object).

    Attributes:
        confidence: 0..1, fitness discounted by the inlier RMSE.
        confident: whether the fit is good enough to trust.
        fitness: share of the cloud's points near the posed surface.
        inlier_rmse: RMSE of those points, cloud units (None without inliers).
        inlier_rmse_percent: the same in percent of the object's diagonal.
        hypotheses: how many starting poses the search tried.
        refined: whether registration ran.
        explained: whether the cloud's own scatter explains the RMSE.
        surface_noise: the cloud's own scatter, when it was measured.
    """

    confidence: float
    confident: bool
    fitness: float
    inlier_rmse: float | None
    inlier_rmse_percent: float | None
    hypotheses: int
    refined: bool
    explained: bool
    surface_noise: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fit:
        return cls.from_answer(wire.Confidence.model_validate(data))

    @classmethod
    def from_answer(cls, answer: wire.Confidence) -> Fit:
        """The fit from its validated wire model (the same fields, by name)."""
        return cls(**{item.name: getattr(answer, item.name) for item in fields(cls)})


@dataclass(frozen=True, eq=False)
class Candidate:
    """Another pose that fits about as well as the answer (why an ambiguous answer is not found).

    Attributes:
        rotation: (3, 3) back rotation, ``canonical = points @ rotation + translation``.
        translation: (3,) back translation, cloud units.
    """

    rotation: np.ndarray
    translation: np.ndarray
    fitness: float
    inlier_rmse: float | None
    confidence: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        return cls.from_answer(wire.Candidate.model_validate(data))

    @classmethod
    def from_answer(cls, answer: wire.Candidate) -> Candidate:
        return cls(
            rotation=_matrix(answer.rotation, (3, 3)),
            translation=_matrix(answer.translation, (3,)),
            fitness=answer.fitness,
            inlier_rmse=answer.inlier_rmse,
            confidence=answer.confidence,
        )


@dataclass(frozen=True, eq=False)
class SymmetryInfo:
    """The object's symmetry and the poses equivalent to the answer under it.

    Attributes:
        kind: e.g. ``"discrete"`` or ``"revolution"``.
        order: how many discrete turns map the object onto itself.
        equivalent_poses: (rotation (3, 3), translation (3,)) back transforms as good as the answer.
        axis: (3,) the axis of revolution (canonical frame), for such objects.
        axis_point: (3,) a point of that axis, cloud units.
    """

    kind: str
    order: int | None
    equivalent_poses: tuple[tuple[np.ndarray, np.ndarray], ...]
    axis: np.ndarray | None = None
    axis_point: np.ndarray | None = None
    note: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SymmetryInfo:
        return cls.from_answer(wire.SymmetryAnswer.model_validate(data))

    @classmethod
    def from_answer(cls, answer: wire.SymmetryAnswer) -> SymmetryInfo:
        return cls(
            kind=answer.kind,
            order=answer.order,
            equivalent_poses=tuple(
                (_matrix(pose.rotation, (3, 3)), _matrix(pose.translation, (3,)))
                for pose in answer.equivalent_poses
            ),
            axis=None if answer.axis is None else _matrix(answer.axis, (3,)),
            axis_point=None if answer.axis_point is None else _matrix(answer.axis_point, (3,)),
            note=answer.note,
        )


@dataclass(frozen=True, eq=False)
class PoseResult:
    """One cloud's pose, as ``POST /v1/pose`` answers it. Use it only when ``found`` is true.

    Attributes:
        found: whether the pose may be used (else ``reason`` says why).
        rotation: (3, 3) back rotation, ``canonical = points @ rotation + translation``.
        translation: (3,) back translation, in the cloud's units.
        pose_matrix: (4, 4) the object's pose for column vectors, ``[x_obs; 1] = M @ [x_can; 1]``.
        quaternion_xyzw: (4,) the rotation of ``pose_matrix``, scalar last.
        confidence: 0..1 (None for a model that does not refine, e.g. the exam setting).
        confident: whether the fit alone is trustworthy (``found`` also needs no rival pose).
        fit: the fit's figures, when it was measured.
        refined: whether registration followed the network.
        units: the cloud's units, declared or found (None when unknown).
        scale: the cloud's units in the object's units.
        reason: why the pose is not found.
        symmetry: the object's symmetry and the equivalent poses (None for an asymmetric object).
        candidates: other poses that fit about as well (an ambiguous view).
        warnings: what the service noticed (a size that does not fit, a budget that ran out).
        n_points: the cloud's points as the service read them.
        file: the uploaded file's name, for a file (batch answers name each).
        object: the object's name; model_id: its model.
        server_time_ms: how long the service took (in process: the estimate's time).
        request_id: the answer's request id (HTTP only).
        raw: the answer as JSON.
    """

    found: bool
    rotation: np.ndarray
    translation: np.ndarray
    pose_matrix: np.ndarray
    quaternion_xyzw: np.ndarray
    confidence: float | None
    confident: bool
    fit: Fit | None
    refined: bool
    units: str | None
    scale: float
    reason: str | None
    symmetry: SymmetryInfo | None
    candidates: tuple[Candidate, ...]
    warnings: tuple[str, ...]
    n_points: int
    file: str | None
    object: str | None
    model_id: str | None
    server_time_ms: float | None
    request_id: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def _fields_from_answer(
        cls, answer: wire.PoseAnswer, data: Mapping[str, Any], common: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The fields of a result from its validated answer and the answer's JSON (``raw``, and
        the keys a single answer carries beside the pose: ``object``, ``model_id``...)."""
        fit = None if answer.confidence is None else Fit.from_answer(answer.confidence)
        # A detection says whether it is confident; a pose answer's fit does.
        confident = answer.confident if isinstance(answer, wire.DetectionAnswer) else None
        merged = {**common, **data}
        return {
            "found": answer.found,
            "rotation": _matrix(answer.rotation, (3, 3)),
            "translation": _matrix(answer.translation, (3,)),
            "pose_matrix": _matrix(answer.pose_matrix, (4, 4)),
            "quaternion_xyzw": _matrix(answer.quaternion_xyzw, (4,)),
            "confidence": None if fit is None else fit.confidence,
            "confident": (fit is not None and fit.confident) if confident is None else confident,
            "fit": fit,
            "refined": answer.refined,
            "units": answer.units,
            "scale": answer.scale,
            "reason": answer.reason,
            "symmetry": None if not answer.symmetry else SymmetryInfo.from_json(answer.symmetry),
            "candidates": tuple(Candidate.from_answer(item) for item in answer.candidates or ()),
            "warnings": tuple(answer.warnings or ()),
            "n_points": answer.n_points,
            "file": answer.file,
            "object": merged.get("object"),
            "model_id": merged.get("model_id"),
            "server_time_ms": merged.get("server_time_ms"),
            "request_id": merged.get("request_id"),
            "raw": dict(data),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], common: Mapping[str, Any] | None = None) -> PoseResult:
        """A result from an answer's JSON (``common``: a batch's ``object``, ``model_id``...)."""
        return cls.from_answer(wire.PoseAnswer.model_validate(data), data, common)

    @classmethod
    def from_answer(
        cls, answer: wire.PoseAnswer, data: Mapping[str, Any], common: Mapping[str, Any] | None = None
    ) -> PoseResult:
        """A result from its validated answer and the answer's JSON, kept as ``raw``."""
        return cls(**cls._fields_from_answer(answer, data, common or {}))

    @property
    def object_rotation(self) -> np.ndarray:
        """(3, 3) the object's rotation for row vectors:
        ``points = canonical @ object_rotation + object_translation``."""
        return self.rotation.T

    @property
    def object_translation(self) -> np.ndarray:
        """(3,) the object's origin in the cloud's frame and units."""
        return self.pose_matrix[:3, 3].copy()

    def to_canonical(self, points: np.ndarray) -> np.ndarray:
        """The observed points moved into the object's frame.

        Args:
            points: (N, 3) in the cloud's frame and units.

        Returns:
            (N, 3) ``points @ rotation + translation``.
        """
        return np.asarray(points, dtype=np.float64) @ self.rotation + self.translation


@dataclass(frozen=True, eq=False)
class BatchResult:
    """``POST /v1/pose/batch``: one result per cloud, in the order sent.

    Attributes:
        poses: each cloud's result (``file`` names an uploaded file's).
    """

    poses: tuple[PoseResult, ...]
    object: str
    model_id: str
    server_time_ms: float | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchResult:
        answer = wire.BatchResponse.model_validate(data)
        common = {"object": answer.object, "model_id": answer.model_id}
        return cls(
            poses=tuple(
                PoseResult.from_answer(pose, raw, common)
                for pose, raw in zip(answer.poses, data["poses"], strict=True)
            ),
            object=answer.object,
            model_id=answer.model_id,
            server_time_ms=answer.server_time_ms,
            raw=dict(data),
        )

    def __len__(self) -> int:
        return len(self.poses)

    def __iter__(self):
        return iter(self.poses)

    def __getitem__(self, index: int) -> PoseResult:
        return self.poses[index]


@dataclass(frozen=True, eq=False)
class Detection(PoseResult):
    """One instance found in a frame (``POST /v1/detect``): a pose in the sensor's frame.

    Attributes:
        visible_fraction: share of the posed object's surface that the frame shows.
    """

    visible_fraction: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any], common: Mapping[str, Any] | None = None) -> Detection:
        return cls.from_answer(wire.DetectionAnswer.model_validate(data), data, common)

    @classmethod
    def from_answer(
        cls, answer: wire.DetectionAnswer, data: Mapping[str, Any], common: Mapping[str, Any] | None = None
    ) -> Detection:
        return cls(
            **cls._fields_from_answer(answer, data, common or {}), visible_fraction=answer.visible_fraction
        )


@dataclass(frozen=True, eq=False)
class DetectResult:
    """Every instance of the known objects in one frame, best first.

    Attributes:
        detections: the found instances.
        n_points: the frame's points (a depth image's pixels with a return).
        segments: how many segments the frame was cut into.
        complete: False when the detection budget ran out before every segment was looked at.
    """

    detections: tuple[Detection, ...]
    n_points: int
    segments: int
    complete: bool
    warnings: tuple[str, ...]
    server_time_ms: float | None
    request_id: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DetectResult:
        answer = wire.DetectResponse.model_validate(data)
        return cls(
            detections=tuple(
                Detection.from_answer(item, raw)
                for item, raw in zip(answer.detections, data["detections"], strict=True)
            ),
            n_points=answer.n_points,
            segments=answer.segments,
            complete=answer.complete,
            warnings=tuple(answer.warnings or ()),
            server_time_ms=answer.server_time_ms,
            request_id=answer.request_id,
            raw=dict(data),
        )


@dataclass(frozen=True, eq=False)
class Track:
    """What became of one previous pose (``POST /v1/track``).

    Attributes:
        object: the object's name.
        lost: True when the instance was not found near its previous pose (find it again with
            a detection).
        detection: its pose in this frame, when it was followed.
    """

    object: str
    lost: bool
    detection: Detection | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Track:
        return cls.from_answer(wire.TrackAnswer.model_validate(data), data)

    @classmethod
    def from_answer(cls, answer: wire.TrackAnswer, data: Mapping[str, Any]) -> Track:
        """A track from its validated answer; a followed one's JSON is a detection's."""
        return cls(answer.object, answer.lost, None if answer.lost else Detection.from_json(data))


@dataclass(frozen=True, eq=False)
class TrackResult:
    """The previous poses followed into a frame, in their order.

    Attributes:
        tracks: one per previous pose.
        lost: how many were lost.
        n_points: the frame's points.
    """

    tracks: tuple[Track, ...]
    lost: int
    n_points: int
    server_time_ms: float | None
    request_id: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrackResult:
        answer = wire.TrackResponse.model_validate(data)
        return cls(
            tracks=tuple(
                Track.from_answer(item, raw) for item, raw in zip(answer.tracks, data["tracks"], strict=True)
            ),
            lost=answer.lost,
            n_points=answer.n_points,
            server_time_ms=answer.server_time_ms,
            request_id=answer.request_id,
            raw=dict(data),
        )


@dataclass(frozen=True, eq=False)
class ObjectInfo:
    """A served object (``GET /v1/objects/{name}``).

    Attributes:
        name: what the routes call it.
        units: its units (None when it was added without them).
        metres_per_unit: one of its units in metres.
        diagonal: its bounding box's diagonal, in its units.
        extent: (3,) its bounding box's sides.
        symmetry: the package's symmetry, as JSON.
        model_id: its network's id (None for search alone).
        bench: the figures measured when it was added, as JSON.
    """

    name: str
    units: str | None
    metres_per_unit: float | None
    diagonal: float | None
    extent: np.ndarray | None
    symmetry: dict[str, Any] | None
    model_id: str | None
    trained: bool
    bench: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ObjectInfo:
        return cls.from_answer(wire.ObjectDescription.model_validate(data), data)

    @classmethod
    def from_answer(cls, answer: wire.ObjectDescription, data: Mapping[str, Any]) -> ObjectInfo:
        """An object from its validated description; its open objects (size, symmetry, bench)
        are kept as the JSON sent them."""
        size = data.get("size") or {}
        return cls(
            name=answer.name,
            units=answer.units,
            metres_per_unit=data.get("metres_per_unit"),
            diagonal=size.get("diagonal"),
            extent=None if size.get("extent") is None else np.asarray(size["extent"], dtype=np.float64),
            symmetry=data.get("symmetry"),
            model_id=answer.model_id,
            trained=answer.trained,
            bench=data.get("bench"),
            raw=dict(data),
        )


@dataclass(frozen=True, eq=False)
class ObjectList:
    """``GET /v1/objects``: the served objects and the one ``/v1/pose`` answers for."""

    objects: tuple[ObjectInfo, ...]
    default: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ObjectList:
        answer = wire.ObjectList.model_validate(data)
        objects = tuple(
            ObjectInfo.from_answer(item, raw)
            for item, raw in zip(answer.objects, data["objects"], strict=True)
        )
        return cls(objects, answer.default)

    def names(self) -> list[str]:
        return [item.name for item in self.objects]

    def __iter__(self):
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)


@dataclass(frozen=True, eq=False)
class ModelInfo:
    """``GET /v1/model``: the default object's model (``raw`` holds every field the service sends).

    Attributes:
        model_id: the model's id; kind: its network's kind; order_free: whether any order and
            size of cloud is taken (else the exam setting's exact N).
        n_points: the points the network sees.
        input_requirement: what clouds the model takes, in words.
        limits: the service's limits (max_points, max_body_bytes, max_batch, budgets).
        object: the default object.
    """

    model_id: str
    kind: str | None
    order_free: bool
    n_points: int | None
    input_requirement: str | None
    limits: dict[str, Any]
    object: ObjectInfo | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        answer = wire.ModelDescription.model_validate(data)
        return cls(
            model_id=answer.model_id,
            kind=answer.kind,
            order_free=answer.order_free,
            n_points=answer.n_points,
            input_requirement=answer.input_requirement,
            limits=dict(data["limits"]),  # as sent: a count stays an int
            object=ObjectInfo.from_answer(answer.object, data["object"]),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Health:
    """``GET /health``: the process answers; the default object's model and every served object."""

    status: str
    model_id: str | None
    objects: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        answer = wire.Health.model_validate(data)
        return cls(answer.status, answer.model_id, tuple(answer.objects))


@dataclass(frozen=True)
class Ready:
    """``GET /ready``: whether the pose workers have room (``status`` "ready" or "busy")."""

    status: str
    pending: int
    capacity: int
    hard_processes: str

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ready:
        answer = wire.Ready.model_validate(data)
        return cls(answer.status, answer.pending, answer.capacity, answer.hard_processes)
