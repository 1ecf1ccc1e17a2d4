"""Logging of the served API: one JSON object a line (python-json-logger), or plain text.

Handed to uvicorn as its ``log_config``, so every worker process logs the same way. The access
log is cloudpose's own (``cloudpose.access``: request id, route, status, duration), not uvicorn's.
"""

from __future__ import annotations

from typing import Any

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_config(log_format: str = "json", level: str = "INFO") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dictionary for ``json`` or ``text`` lines on stderr."""
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "uvicorn": quiet,
            "uvicorn.error": quiet,
            "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
            "cloudpose": quiet,
        },
    }
