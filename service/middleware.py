"""The service's ASGI middleware: the body-size limit and the outermost request guard.

:class:`RequestGuard` wraps everything: it gives each request its id, writes the one access-log
line and holds the body to its deadline. :class:`BodySizeLimit` answers 413 for a body over the
service's limit, declared or streamed, before a route reads it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.bodies import BodyTooLarge, BodyTooSlow
from service.metrics import ServiceMetrics
from service.responses import error_message

access_log = logging.getLogger("cloudpose.access")

REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


class BodySizeLimit:
    """ASGI middleware answering 413 for bodies over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_message(
            413,
            f"request body is larger than this service's limit of {self.max_bytes} bytes",
            {"connection": "close"},
        )
        await response(scope, receive, send)


class RequestGuard:
    """Outermost ASGI middleware: request id, one access-log line, the body deadline, and quiet
    client disconnects.

    - ``X-Request-ID``: the client's (if it is a short token) or a new one; echoed in the answer.
    - The body must arrive within ``body_timeout_s`` of the request's start: else 408 and the
      connection is closed (a client sending a byte every few seconds holds nothing for long).
    - A client that goes away mid-request is one log line, never a traceback.
    """

    def __init__(self, app: ASGIApp, body_timeout_s: float, metrics: ServiceMetrics) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        deadline = time.monotonic() + self.body_timeout_s
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise BodyTooSlow from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        outcome = None
        try:
            await self.app(scope, timed_receive, tagged_send)
        except BodyTooSlow:
            outcome = "body too slow"
            if not status:
                response = error_message(
                    408,
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    {"connection": "close"},
                )
                await response(scope, receive, tagged_send)
        except ClientDisconnect:
            outcome = "client disconnected"
        finally:
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status or None,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                    **({"outcome": outcome} if outcome else {}),
                },
            )
