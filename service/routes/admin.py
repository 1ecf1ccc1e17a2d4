"""Administration: reloading the object store (needs API keys to be configured)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cloudpose.io.clouds import CloudError
from cloudpose.store.package import StoreError
from service import schemas
from service.lifecycle import reload_objects
from service.responses import json_response

router = APIRouter()


@router.post("/v1/admin/reload", response_model=schemas.Reloaded, responses=schemas.error_responses(403, 409))
async def admin_reload(request: Request) -> Response:
    """Reload and verify the object store; the old objects serve until the new ones are ready
    (a broken package is refused and nothing changes). Needs API keys to be configured."""
    if not request.app.state.api_keys:
        raise CloudError(403, "admin routes are off: start the service with CLOUDPOSE_API_KEYS set")
    try:
        registry = await reload_objects(request.app)
    except StoreError as error:
        raise CloudError(409, f"reload refused, still serving the previous objects: {error}") from error
    return json_response({"objects": registry.model_ids()})
