"""The routes' dependencies: what ``create_app`` puts on ``app.state``, as ``Annotated`` types.

``app.state`` holds the served objects (``objects``, swapped whole by a reload), the settings, the
pose workers, the metrics, the hard-cloud processes (``hard``, None when off) and the API keys.
Dependencies and cheap endpoints are ``async def``: FastAPI runs plain ``def`` ones in the thread
pool, a thread hop per call that costs more than the work they do.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cloudpose.estimation.served import ObjectRegistry
from cloudpose.io.clouds import CloudError
from cloudpose.settings import Settings
from cloudpose.store.package import UNITS_M
from service.compute import PoseWorkers
from service.hard import HardProcesses
from service.metrics import ServiceMetrics


async def get_objects(request: Request) -> ObjectRegistry:
    return request.app.state.objects


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_workers(request: Request) -> PoseWorkers:
    return request.app.state.workers


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_request_id(request: Request) -> str:
    """The id :class:`service.middleware.RequestGuard` gave the request."""
    return request.scope["state"].get("request_id", "")


def current_hard(request: Request) -> HardProcesses | None:
    """The hard-cloud processes now (a reload replaces them), or None when they are off."""
    return request.app.state.hard


BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
HEADER_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")


async def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    key: Annotated[str | None, Depends(HEADER_KEY)],
) -> None:
    """With API keys configured, a valid one is needed (compared in constant time)."""
    api_keys: list[bytes] = request.app.state.api_keys
    if not api_keys:
        return
    # Every credential offered must be valid: a wrong Authorization beside a right X-API-Key is
    # still refused. An Authorization that is not Bearer offers an empty (invalid) key.
    offered = []
    if "authorization" in request.headers:
        offered.append(credentials.credentials if credentials else "")
    if key is not None:
        offered.append(key)
    if not offered or not all(_valid_key(candidate.encode(), api_keys) for candidate in offered):
        raise CloudError(401, "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key'")


def _valid_key(offered: bytes, api_keys: list[bytes]) -> bool:
    matched = False
    for valid in api_keys:  # every key is compared, so timing tells nothing about which
        matched |= hmac.compare_digest(offered, valid)
    return matched


Objects = Annotated[ObjectRegistry, Depends(get_objects)]
ServiceSettings = Annotated[Settings, Depends(get_settings)]
Workers = Annotated[PoseWorkers, Depends(get_workers)]
Metrics = Annotated[ServiceMetrics, Depends(get_metrics)]
RequestId = Annotated[str, Depends(get_request_id)]
ObjectName = Annotated[str, "the object's name, as listed by GET /v1/objects"]
Refine = Annotated[
    bool,
    Query(
        description="Register the cloud against the object's surface after the network (order-free models)."
    ),
]
Units = Annotated[
    str | None,
    Query(
        json_schema_extra={"enum": list(UNITS_M)},
        description="What the points are in; the answer comes back in them. Without it, a cloud "
        "whose size does not fit the object is tried at the usual unit scales.",
    ),
]
