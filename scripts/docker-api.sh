#!/usr/bin/env sh
# Serve the model in the shared volume when the trainer has put one there, else the bundled one.
set -eu
shared=${CLOUDPOSE_SHARED_MODEL:-/models/default/model.onnx}
if [ -f "$shared" ]; then model=$shared; else model=/app/models/pretrained/bunny_pointnet/model.onnx; fi
echo "serving $model" >&2
exec cloudpose serve --host 0.0.0.0 --port 8000 --model "$model"
