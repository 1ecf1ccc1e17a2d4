#!/usr/bin/env bash
# The main job: install, then serve the shipped objects (data/objects: the bunny) and the user's
# own (what `cloudpose object add` put in CLOUDPOSE_STORE, else ~/.local/share/cloudpose/objects)
# on :8000, without training.
# With CLOUDPOSE_MODEL_PATH pointing at a model that does not exist yet, it installs the training
# extras, trains the exam-setting default from scratch (--fresh: never an old run's checkpoint;
# 600 steps, 6 s on an idle 2-core CPU, 33 s with the cores shared), exports and evaluates it
# there (9 s shared) and serves that instead.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${CLOUDPOSE_PORT:-8000}
if [ -n "${CLOUDPOSE_MODEL_PATH:-}" ]; then
  model=$CLOUDPOSE_MODEL_PATH
  if [ -f "$model" ]; then
    scripts/install.sh serve
  else
    scripts/install.sh all
    echo "no model at $model: training the exam-setting default (N = 1024)" >&2
    .venv/bin/cloudpose train --config configs/default.yaml --out-dir "$(dirname "$model")/run" --fresh
    .venv/bin/cloudpose export "$(dirname "$model")/run" --out "$(dirname "$model")"
    .venv/bin/cloudpose eval "$model"
  fi
  serve=(--model "$model")
  example=$(dirname "$model")
else
  scripts/install.sh serve
  serve=()
  example=data/objects/bunny
fi
cat >&2 <<TXT

cloudpose serves on http://127.0.0.1:$port  (see a pose: /viewer; docs: /docs; objects: /v1/objects). Try:
  curl -s -X POST localhost:$port/v1/pose -H 'content-type: application/json' -d @$example/example.json
  curl -s -X POST localhost:$port/v1/pose -F file=@$example/example.xyz
$example/example.json also holds the true answer (true_rotation, true_translation).
A whole depth frame:  curl -s -X POST 'localhost:$port/v1/detect?units=m' -F file=@data/objects/bunny/example_frame.npy
Add your own object:  .venv/bin/cloudpose object add NAME MESH_FILE --units mm   (served within seconds)

TXT
exec .venv/bin/cloudpose serve --host "${CLOUDPOSE_HOST:-127.0.0.1}" --port "$port" "${serve[@]}"
