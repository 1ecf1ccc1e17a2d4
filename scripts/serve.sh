#!/usr/bin/env bash
# The main job: install, then serve the shipped order-free bunny model on :8000 (no training).
# With CLOUDPOSE_MODEL_PATH pointing at a model that does not exist yet, it trains the
# exam-setting default (about a minute on 2 CPU cores), exports it there and serves that.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${CLOUDPOSE_MODEL_PATH:-models/pretrained/bunny_pointnet/model.onnx}
if [ -f "$model" ]; then
  scripts/install.sh serve
else
  scripts/install.sh all
  echo "no model at $model: training the exam-setting default (N = 1024)" >&2
  .venv/bin/cloudpose train --config configs/default.yaml
  .venv/bin/cloudpose export runs/default --out "$(dirname "$model")"
  .venv/bin/cloudpose eval "$model"
fi
folder=$(dirname "$model")
port=${CLOUDPOSE_PORT:-8000}
cat >&2 <<TXT

cloudpose serves $model on http://127.0.0.1:$port  (docs: /docs). Try:
  curl -s -X POST localhost:$port/v1/pose -H 'content-type: application/json' -d @$folder/example.json
  curl -s -X POST localhost:$port/v1/pose -F file=@$folder/example.xyz
$folder/example.json also holds the true answer (true_rotation, true_translation).

TXT
exec .venv/bin/cloudpose serve --host "${CLOUDPOSE_HOST:-127.0.0.1}" --port "$port" --model "$model"
