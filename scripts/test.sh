#!/usr/bin/env bash
# The test command: install everything, build the docs site (strict: part of the test), then run
# the whole suite on the CPU (last, so that pytest's summary closes the output).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh all
scripts/docs.sh
status=0
.venv/bin/python -m pytest "$@" || status=$?
# pytest exits 5 when a selection collects no test; that is not a failure of the code.
if [ "$status" = 5 ]; then echo "no tests selected" >&2; exit 0; fi
exit "$status"
