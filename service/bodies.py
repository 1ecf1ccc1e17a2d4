"""What can go wrong while a request body is read, shared by the API's routes and the viewer's."""

from __future__ import annotations


class BodyTooLarge(Exception):
    """The body grew past the service's limit while it was read."""


class BodyTooSlow(Exception):
    """The body arrived slower than the service's minimum rate."""
