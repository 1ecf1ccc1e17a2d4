"""The served objects: every one, one by name, and the default object's model."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service import schemas
from service.deps import ObjectName, Objects, ServiceSettings
from service.responses import json_response

router = APIRouter()


@router.get("/v1/objects", response_model=schemas.ObjectList)
async def list_objects(objects: Objects) -> Response:
    """Every served object: name, units, size, symmetry, model id, bench figures."""
    return json_response(
        {
            "objects": [served.describe() for served in objects.objects.values()],
            "default": objects.default,
        }
    )


@router.get(
    "/v1/objects/{name}",
    response_model=schemas.ObjectDescription,
    responses=schemas.error_responses(404, 422),
)
async def describe_object(name: ObjectName, objects: Objects) -> Response:
    """One served object."""
    return json_response(objects.get(name).describe())


@router.get("/v1/model", response_model=schemas.ModelDescription, responses=schemas.error_responses(404))
async def model(objects: Objects, settings: ServiceSettings) -> Response:
    """The default object's model: kind, expected N, convention, units, limits, and its figures:
    ``metrics.served`` (network + refinement, as served) beside ``metrics.network_only``."""
    served = objects.get(None)
    description = served.estimator.describe()
    description["object"] = served.describe()
    # The labelled card (served figures and the network's alone), not the bare validation figures.
    description["metrics"] = description["object"]["metrics"]
    description["limits"] = {
        "max_points": settings.max_points,
        "max_body_bytes": settings.max_body_bytes,
        "max_batch": settings.max_batch,
        "pose_budget_ms": settings.pose_budget_ms,
        "batch_budget_s": settings.batch_budget_s,
    }
    return json_response(description)
