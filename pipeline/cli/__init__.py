"""The ``cloudpose`` command (typer): :mod:`pipeline.cli.app` holds its commands."""

from pipeline.cli.app import app, main

__all__ = ["app", "main"]
