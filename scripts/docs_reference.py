"""Write the docs site's generated reference pages: the HTTP API from the service's own OpenAPI
document, the command line from the typer app.

    .venv/bin/python scripts/docs_reference.py [--out docs/reference]

Writes ``openapi.json`` (the document ``GET /openapi.json`` serves), ``http.md`` (every operation:
parameters, request bodies, every response status with its schema) and ``cli.md`` (every command
of ``cloudpose`` with its help and options). They are build output, not sources: ``make docs``
writes them before ``mkdocs build``, and git ignores them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
# Documented with API keys configured, so the 401 of every guarded route is listed.
DOCUMENTED_API_KEY = "documented-key"
HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head", "options")


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI document, as a service with default settings and API keys serves it
    (no ``CLOUDPOSE_*`` variable of this shell changes it)."""
    from cloudpose.estimator import ArgumentSettings
    from service.app import create_app

    return create_app(ArgumentSettings(api_keys=DOCUMENTED_API_KEY)).openapi()


def _cell(text: Any) -> str:
    """Text fit for one markdown table cell: one line, pipes escaped."""
    return re.sub(r"\s+", " ", str(text)).strip().replace("|", "\\|")


def _prose(text: str) -> str:
    """A docstring-like description as markdown: its paragraphs kept, RST's ``code`` as code."""
    return "\n\n".join(re.sub(r"\s+", " ", part).strip() for part in text.strip().split("\n\n"))


def _schema_anchor(name: str) -> str:
    return "schema-" + name.lower()


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def schema_type(schema: dict[str, Any]) -> str:
    """A short markdown description of a schema's type: ``array of number``, a link to a named
    schema, ``string or null``, an enum's values."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{_schema_anchor(name)})"
    if "anyOf" in schema or "oneOf" in schema:
        kinds = " or ".join(schema_type(option) for option in schema.get("anyOf", schema.get("oneOf")))
    elif "allOf" in schema:
        kinds = " and ".join(schema_type(option) for option in schema["allOf"])
    elif schema.get("type") == "array":
        kinds = "array of " + schema_type(schema.get("items", {}))
    elif "const" in schema:
        kinds = f"`{json.dumps(schema['const'])}`"
    else:
        kinds = schema.get("type", "any")
        if "format" in schema:
            kinds += f" ({schema['format']})"
    if "enum" in schema:
        kinds += ": one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    return kinds


def schema_constraints(schema: dict[str, Any]) -> str:
    """The limits a schema states (items, range, default), as a short phrase."""
    parts = []
    for key, words in (
        ("minItems", "at least {} items"),
        ("maxItems", "at most {} items"),
        ("minimum", "≥ {}"),
        ("exclusiveMinimum", "> {}"),
        ("maximum", "≤ {}"),
        ("exclusiveMaximum", "< {}"),
        ("minLength", "at least {} characters"),
        ("maxLength", "at most {} characters"),
        ("pattern", "matches `{}`"),
    ):
        if key in schema:
            parts.append(words.format(schema[key]))
    for option in schema.get("anyOf", []):
        if option.get("type") != "null" and "$ref" not in option:
            parts.append(schema_constraints(option))
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        inner = schema_constraints(schema["items"])
        if inner:
            parts.append(f"each: {inner}")
    if "default" in schema:
        parts.append(f"default `{json.dumps(schema['default'])}`")
    return "; ".join(part for part in parts if part)


def properties_table(schema: dict[str, Any]) -> list[str]:
    """A table of an object schema's properties: name, type, required, description."""
    properties = schema.get("properties", {})
    if not properties:
        extra = schema.get("additionalProperties")
        return ["Any JSON object." if extra in (None, True) else f"An object of {schema_type(extra)}."]
    required = set(schema.get("required", []))
    lines = ["| field | type | required | description |", "| --- | --- | --- | --- |"]
    for name, field in properties.items():
        notes = [field.get("description", "")]
        limits = schema_constraints(field)
        if limits:
            notes.append(f"({limits})")
        lines.append(
            f"| `{name}` | {_cell(schema_type(field))} | {'yes' if name in required else 'no'} "
            f"| {_cell(' '.join(note for note in notes if note))} |"
        )
    return lines


def _body_schema(schema: dict[str, Any]) -> list[str]:
    """A request body's schema: a link for a named one, its fields for an inline object."""
    if "$ref" in schema:
        return [f"Schema: {schema_type(schema)}."]
    lines = []
    if schema.get("description"):
        lines += [_prose(schema["description"]), ""]
    if schema.get("type") == "object":
        lines += properties_table(schema)
    else:
        lines.append(f"Schema: {schema_type(schema)}.")
    return lines


def _operation_anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def operation_section(
    path: str, method: str, operation: dict[str, Any], security: dict[str, Any]
) -> list[str]:
    """One operation's section: summary, description, key, parameters, body, responses."""
    lines = [f"## `{method.upper()} {path}` {{#{_operation_anchor(method, path)}}}", ""]
    lines += [f"**{operation.get('summary', operation.get('operationId', ''))}**", ""]
    if operation.get("description"):
        lines += [_prose(operation["description"]), ""]
    if operation.get("security"):
        schemes = [name for requirement in operation["security"] for name in requirement]
        keys = " or ".join(f"`{security.get(name, {}).get('description', name)}`" for name in schemes)
        lines += [f"Needs an API key when the service has keys configured: {keys}.", ""]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += [
            "### Parameters",
            "",
            "| name | in | type | required | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for parameter in parameters:
            schema = parameter.get("schema", {})
            notes = [parameter.get("description", schema.get("description", ""))]
            limits = schema_constraints(schema)
            if limits:
                notes.append(f"({limits})")
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | {_cell(schema_type(schema))} "
                f"| {'yes' if parameter.get('required') else 'no'} "
                f"| {_cell(' '.join(note for note in notes if note))} |"
            )
        lines.append("")
    body = operation.get("requestBody")
    if body:
        needed = "required" if body.get("required") else "optional"
        lines += ["### Request body", "", f"The body is {needed}; one of:", ""]
        for content_type, content in body.get("content", {}).items():
            lines += [f"`{content_type}`", ""]
            lines += _body_schema(content.get("schema", {})) + [""]
    lines += [
        "### Responses",
        "",
        "| status | description | content | schema |",
        "| --- | --- | --- | --- |",
    ]
    for status, response in operation.get("responses", {}).items():
        contents = response.get("content") or {"": {}}
        for content_type, content in contents.items():
            schema = content.get("schema")
            lines.append(
                f"| {status} | {_cell(response.get('description', ''))} "
                f"| {f'`{content_type}`' if content_type else '–'} "
                f"| {_cell(schema_type(schema)) if schema else '–'} |"
            )
    lines.append("")
    return lines


def http_page(document: dict[str, Any]) -> str:
    """The HTTP reference page: every operation of the document, then every named schema."""
    info = document.get("info", {})
    security = document.get("components", {}).get("securitySchemes", {})
    lines = [
        "# HTTP reference",
        "",
        f"{info.get('title', '')} {info.get('version', '')}: {info.get('summary', '')}.",
        "",
        "Generated from the service's own OpenAPI document, the one a running service serves at",
        "`/openapi.json` and renders at `/docs` (download: [openapi.json](openapi.json)). It was",
        "generated with API keys configured: without keys, no route answers 401, and",
        '`POST /v1/admin/reload` answers 403. Every error answer is `{"detail": "..."}`. The',
        "guide to these routes is [The HTTP API](../guides/http-api.md).",
        "",
        "| operation | summary |",
        "| --- | --- |",
    ]
    operations = [
        (path, method, operation)
        for path, item in document.get("paths", {}).items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]
    for path, method, operation in operations:
        summary = _cell(operation.get("summary", ""))
        lines.append(f"| [`{method.upper()} {path}`](#{_operation_anchor(method, path)}) | {summary} |")
    lines.append("")
    for path, method, operation in operations:
        lines += operation_section(path, method, operation, security)
    lines += ["## Schemas", ""]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        lines += [f"### {name} {{#{_schema_anchor(name)}}}", ""]
        if schema.get("description"):
            lines += [_prose(schema["description"]), ""]
        is_object = schema.get("type", "object") == "object"
        lines += properties_table(schema) if is_object else [schema_type(schema)]
        lines.append("")
    return "\n".join(lines)


def _commands(command: Any, context: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Every command under ``command``, depth first, with its context and its full name."""
    yield path, command, context
    if hasattr(command, "list_commands"):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not getattr(sub, "hidden", False):
                sub_context = type(context)(sub, info_name=name, parent=context)
                yield from _commands(sub, sub_context, f"{path} {name}")


def _escape(text: str) -> str:
    """Help text as literal markdown (no emphasis, links or HTML by accident)."""
    text = re.sub(r"([\\`*_\[\]#])", r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _local(text: str) -> str:
    """A default shown with this checkout's paths, written as the reader's."""
    text = text.replace(str(REPOSITORY) + "/", "")
    return text.replace(str(Path.home()), "~")


def cli_page() -> str:
    """The CLI reference page: every command of ``cloudpose``, its usage, help and parameters."""
    import typer.main

    from pipeline.cli.app import app

    root = typer.main.get_command(app)
    context_class = root.context_class
    lines = [
        "# CLI reference",
        "",
        "Every command of `cloudpose`, generated from the command line itself (`cloudpose COMMAND",
        "--help` prints the same). The guide to them is",
        "[Command line and training](../guides/training.md).",
        "",
    ]
    for path, command, context in _commands(root, context_class(root, info_name="cloudpose"), "cloudpose"):
        level = "#" * (1 + max(path.count(" "), 1))  # cloudpose and its commands ##, subcommands ###
        lines += [f"{level} `{path}`", ""]
        usage = _local(command.get_usage(context)).strip()
        lines += ["```text", re.sub(r"\s+", " ", usage), "```", ""]
        if command.help:
            lines += [_escape(_prose(command.help)), ""]
        if hasattr(command, "list_commands"):
            names = command.list_commands(context)
            if names:
                lines += ["| command | what |", "| --- | --- |"]
                for name in names:
                    sub = command.get_command(context, name)
                    summary = sub.get_short_help_str(limit=200) if sub is not None else ""
                    lines.append(f"| `{path} {name}` | {_cell(_escape(summary))} |")
                lines.append("")
        records = []
        for parameter in command.get_params(context):
            record = parameter.get_help_record(context)
            if record is None:
                continue
            names, text = record
            kind = "argument" if parameter.param_type_name == "argument" else "option"
            records.append(f"| `{_cell(_local(names))}` | {kind} | {_cell(_escape(_local(text)))} |")
        if records:
            lines += ["| parameter | kind | help |", "| --- | --- | --- |", *records, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=REPOSITORY / "docs" / "reference", help="folder to write into"
    )
    arguments = parser.parse_args()
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))
    arguments.out.mkdir(parents=True, exist_ok=True)
    document = openapi_document()
    (arguments.out / "openapi.json").write_text(json.dumps(document, indent=2) + "\n")
    (arguments.out / "http.md").write_text(http_page(document) + "\n")
    (arguments.out / "cli.md").write_text(cli_page() + "\n")
    print(f"wrote openapi.json, http.md and cli.md to {arguments.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
