#!/usr/bin/env sh
# Add an object to the shared store on the reserved GPU (CUDA when available, else the CPU):
# check the mesh, find its symmetries, train within the budget, export, bench, package.
#   CLOUDPOSE_OBJECT=part CLOUDPOSE_MESH=/models/part.stl CLOUDPOSE_UNITS=mm docker compose --profile train run --rm trainer
set -eu
name=${CLOUDPOSE_OBJECT:-bunny}
mesh=${CLOUDPOSE_MESH:-data/bunny.ply}
mkdir -p /models/objects
[ -d /models/objects/bunny ] || cp -r /app/data/objects/bunny /models/objects/  # keep serving the bunny
mode=""
if [ -d "/models/objects/$name" ] || [ -d "/models/runs/$name" ]; then mode=--retrain; fi
exec cloudpose object add "$name" "$mesh" --train ${CLOUDPOSE_UNITS:+--units "$CLOUDPOSE_UNITS"} $mode \
  --time-budget-s "${CLOUDPOSE_TIME_BUDGET_S:-600}" --store /models/objects --runs-dir /models/runs
