"""The OpenAPI document's parts that FastAPI cannot infer: the request bodies and live examples.

The pose and frame routes read their bodies themselves (JSON or multipart on one route, parsed in
a worker), so their ``requestBody`` is declared here from the pydantic models of
:mod:`service.schemas`. :func:`openapi_document` adds what only the running service knows: the
served object names as the values of ``{name}``, and a real cloud as the JSON example.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from fastapi import FastAPI

from cloudpose.estimation.served import ObjectRegistry
from service import schemas
from service.decoding import DEPTH_FIELDS
from service.web import example_cloud

POSE_PATHS = ("/v1/pose", "/v1/objects/{name}/pose")
BATCH_PATHS = ("/v1/pose/batch", "/v1/objects/{name}/pose/batch")
BINARY = {"type": "string", "format": "binary"}


def body_doc(model: type[schemas.BaseModel], file_field: str, many: bool) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is ``model`` as JSON, or files in ``file_field``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schemas.inline_schema(model)},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [file_field],
                        "properties": {
                            file_field: {"type": "array", "items": BINARY, "minItems": 1} if many else BINARY
                        },
                    }
                },
            },
        }
    }


def _frame_doc(model: type[schemas.BaseModel], **texts: dict[str, Any]) -> dict[str, Any]:
    """A frame route's body: ``model`` as JSON, or a cloud file or a depth image (and ``texts``)."""
    document = body_doc(model, "file", many=False)
    document["requestBody"]["content"]["multipart/form-data"]["schema"] = {
        "type": "object",
        "properties": {
            "file": {**BINARY, "description": "A cloud file of the frame."},
            "depth": {
                **BINARY,
                "description": "A depth image (16-bit .png or .npy (H, W)), with the intrinsics.",
            },
            **{name: {"type": "number"} for name in DEPTH_FIELDS},
            **texts,
        },
    }
    return document


POSE_BODY = body_doc(schemas.CloudBody, "file", many=False)
BATCH_BODY = body_doc(schemas.BatchBody, "files", many=True)
DETECT_BODY = _frame_doc(schemas.DetectBody)
TRACK_BODY = _frame_doc(
    schemas.TrackBody,
    previous={
        "type": "string",
        "description": "JSON list of the previous poses: [{object, rotation, translation}], as /v1/detect "
        "or /v1/track answered them.",
    },
)


def add_request_examples(document: dict[str, Any], registry: ObjectRegistry | None) -> None:
    """Put a real cloud (the shipped example) as the JSON example of the pose routes' bodies (and
    of ``/v1/track``'s, with a pose to follow), so that "Try it out" in ``/docs`` answers 200."""
    points = None if registry is None else example_cloud(registry)
    if points is None:
        return
    name = registry.default or next(iter(registry.objects))
    previous = [{"object": name, "rotation": np.eye(3).tolist(), "translation": [0.0, 0.0, 0.0]}]
    bodies = (
        (POSE_PATHS, {"points": points}),
        (BATCH_PATHS, {"clouds": [{"points": points}]}),
        (("/v1/track",), {"points": points, "previous": previous}),
    )
    for paths, example in bodies:
        for path in paths:
            operation = document["paths"].get(path, {}).get("post")
            if operation is not None:
                operation["requestBody"]["content"]["application/json"]["example"] = example


def _status_order(item: tuple[str, Any]) -> int:
    status = item[0]
    return int(status) if status.isdigit() else 1000


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document of ``app``, with the served object names as the values of ``{name}``,
    the shipped example cloud as the pose bodies' example, and each operation's answers in
    status order."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        app.openapi_schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        # Each operation's answers in status order, whether its route or its router (the key
        # check's 401) declared them.
        for path in app.openapi_schema["paths"].values():
            for operation in path.values():
                operation["responses"] = dict(sorted(operation["responses"].items(), key=_status_order))
    document = copy.deepcopy(app.openapi_schema)
    registry = getattr(app.state, "objects", None)
    add_request_examples(document, registry)
    if registry is not None:
        for path in document["paths"].values():
            for operation in path.values():
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "path" and parameter["name"] == "name":
                        parameter["schema"]["enum"] = list(registry.objects)
    return document
