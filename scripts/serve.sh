#!/usr/bin/env bash
# The main job: install, make the default model if there is none, serve it on :8000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh all
model_dir=${CLOUDPOSE_MODEL_DIR:-artifacts/default}
if [ ! -f "$model_dir/model.onnx" ]; then
  echo "no model in $model_dir: training the default (exam setting, N = 1024; about a minute on 2 CPU cores)" >&2
  .venv/bin/cloudpose train --config configs/default.yaml
  .venv/bin/cloudpose export runs/default --out "$model_dir"
  .venv/bin/cloudpose eval "$model_dir/model.onnx"
fi
port=${CLOUDPOSE_PORT:-8000}
cat >&2 <<TXT

cloudpose serves $model_dir/model.onnx on http://127.0.0.1:$port  (docs: /docs). Try:
  curl -s -X POST localhost:$port/v1/pose -H 'content-type: application/json' -d @$model_dir/example.json
  curl -s -X POST localhost:$port/v1/pose -F file=@$model_dir/example.xyz
$model_dir/example.json also holds the true answer (true_rotation, true_translation).

TXT
exec .venv/bin/cloudpose serve --host "${CLOUDPOSE_HOST:-127.0.0.1}" --port "$port" --model "$model_dir/model.onnx"
