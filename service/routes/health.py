"""Liveness and readiness: always open, and never waiting for the pose workers."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import schemas
from service.deps import Objects, Workers, current_hard
from service.errors import RETRY_AFTER_S
from service.responses import json_response

router = APIRouter()


@router.get("/health", response_model=schemas.Health)
async def health(objects: Objects) -> Response:
    """Liveness: the process answers. Never waits for the pose workers; needs no key."""
    default = objects.objects.get(objects.default) if objects.default else None
    return json_response(
        {
            "status": "ok",
            "model_id": default.model_id if default else None,
            "objects": list(objects.objects),
        }
    )


@router.get(
    "/ready",
    response_model=schemas.Ready,
    responses={503: {"model": schemas.Ready, "description": "Busy: the pose workers are full."}},
)
async def ready(request: Request, workers: Workers) -> Response:
    """Readiness: objects loaded and room in the pose workers (503 while saturated).
    ``hard_processes`` says whether the hard-cloud processes have loaded the store (until
    then, and for a moment after a reload, hard clouds get their best pose at once)."""
    busy = workers.saturated()
    hard = current_hard(request)
    hard_state = "off" if hard is None else "ready" if hard.ready() else "loading"
    return Response(
        orjson.dumps(
            {
                "status": "busy" if busy else "ready",
                "pending": workers.pending,
                "capacity": workers.threads + workers.queue_limit,
                "hard_processes": hard_state,
            }
        ),
        status_code=503 if busy else 200,
        media_type="application/json",
        headers={"retry-after": str(RETRY_AFTER_S)} if busy else None,
    )
