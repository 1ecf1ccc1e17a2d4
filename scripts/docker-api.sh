#!/usr/bin/env sh
# Serve the object store in the shared volume when the trainer has added objects there, else the
# bundled store (the shipped bunny).
set -eu
shared=${CLOUDPOSE_SHARED_STORE:-/models/objects}
if ls "$shared"/*/object.json >/dev/null 2>&1; then store=$shared; else store=/app/data/objects; fi
echo "serving the object store $store" >&2
exec cloudpose serve --host 0.0.0.0 --port 8000 --store "$store"
