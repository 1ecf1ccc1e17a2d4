"""Error answers: every refusal is ``{"detail": "..."}`` with its status, never a traceback.

A :class:`~cloudpose.io.clouds.CloudError` raised anywhere in a route becomes its status and
detail (a 401 says how to authenticate); a full pose pool is a 503 with ``Retry-After``; a bad
query parameter is a 422 whose detail names it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from cloudpose.io.clouds import CloudError
from service.compute import Saturated
from service.responses import error_message

# What a busy service asks clients to wait, in seconds (503 answers and a busy /ready).
RETRY_AFTER_S = 1


async def cloud_error(_: Request, error: CloudError) -> Response:
    headers = {"www-authenticate": "Bearer"} if error.status == 401 else None
    return error_message(error.status, error.detail, headers)


async def saturated(_: Request, error: Saturated) -> Response:
    return error_message(
        503, f"busy: {error}; retry in {RETRY_AFTER_S} s", {"retry-after": str(RETRY_AFTER_S)}
    )


async def invalid_parameters(_: Request, error: RequestValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
    )
    return error_message(422, f"invalid request parameters: {problems}")


def add_error_handlers(app: FastAPI) -> None:
    """Answer the service's refusals as ``{"detail": ...}`` with their status."""
    app.add_exception_handler(CloudError, cloud_error)
    app.add_exception_handler(Saturated, saturated)
    app.add_exception_handler(RequestValidationError, invalid_parameters)
