#!/usr/bin/env bash
# The docs site (mkdocs-material, sources in docs/): write the generated references (the HTTP API
# from the service's OpenAPI document, the CLI from its typer app), then
#
#   scripts/docs.sh          build it into site/ in strict mode (any warning fails the build)
#   scripts/docs.sh serve    serve it on http://127.0.0.1:8001, rebuilt on every edit
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-build}
case "$mode" in build|serve) ;; *) echo "usage: $0 [build|serve]" >&2; exit 1 ;; esac
# material prints a notice about MkDocs 2 on every build; it says nothing about these pages.
export NO_MKDOCS_2_WARNING=1
.venv/bin/python scripts/docs_reference.py
if [ "$mode" = serve ]; then
  exec .venv/bin/mkdocs serve --dev-addr 127.0.0.1:8001
fi
.venv/bin/mkdocs build --strict
