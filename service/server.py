"""Running the API under uvicorn, guarded against slow and idle clients.

uvicorn closes a kept-alive connection that stays idle, but it has no deadline for a request's
headers and no cap on open connections: a client that connects and sends nothing, or one header
line every few seconds, holds a file descriptor forever, and enough of them leave none for
``/health``. :class:`GuardedProtocol` adds both:

- a connection must deliver a request's headers within ``header_timeout_s`` of connecting (or of
  the request's first byte), else it is closed;
- when more than ``max_connections`` are open, the longest-idle one (no request in progress) is
  closed to make room, so new clients (a health check) still get in; only when every connection
  is busy is the newcomer refused.

The request body's deadline is the app's (``service.middleware.RequestGuard``), which can still answer 408.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("cloudpose.server")


class ServerConfig(uvicorn.Config):
    """uvicorn's config plus the guards of :class:`GuardedProtocol` (pickled into workers)."""

    def __init__(
        self, *args: Any, header_timeout_s: float = 10.0, max_connections: int = 4096, **kwargs: Any
    ):
        super().__init__(*args, http=GuardedProtocol, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections


# Connections with no request in progress, oldest first (one event loop per process).
_idle: OrderedDict[GuardedProtocol, None] = OrderedDict()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a cap on open connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _idle[self] = None
        self._arm_header_timer()
        if len(self.connections) > self.config.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        _idle.pop(self, None)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        _idle.pop(self, None)
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            _idle[self] = None
            _idle.move_to_end(self)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.config.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        for protocol in _idle:
            if protocol is not self:
                _idle.pop(protocol)
                protocol.transport.close()
                return
        _idle.pop(self, None)
        self.transport.close()


def raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def serve(
    host: str,
    port: int,
    workers: int = 1,
    header_timeout_s: float = 10.0,
    keep_alive_s: float = 5.0,
    max_connections: int = 4096,
    log_config: dict[str, Any] | None = None,
) -> None:
    """Serve ``service.app:create_app`` (settings from the environment) until stopped.

    With ``workers`` > 1, uvicorn's supervisor runs that many processes on one socket, restarts
    any that die, and on SIGHUP replaces them one by one (each new one loads and verifies the
    object store before the old one stops).
    """
    files = raise_file_limit()
    if max_connections > files - 64:
        logger.warning("max connections %d lowered to %d by the open-file limit", max_connections, files - 64)
        max_connections = max(1, files - 64)
    config = ServerConfig(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        timeout_keep_alive=int(keep_alive_s),
        header_timeout_s=header_timeout_s,
        max_connections=max_connections,
        log_config=log_config,
        access_log=False,
        backlog=4096,
    )
    server = uvicorn.Server(config)
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
