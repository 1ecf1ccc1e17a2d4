#!/usr/bin/env sh
# Train on the reserved GPU (or the CPU), export and evaluate into the shared volume.
set -eu
config=${CLOUDPOSE_TRAIN_CONFIG:-configs/default.yaml}
cloudpose train --config "$config" --out-dir /models/runs/default
cloudpose export /models/runs/default --out /models/default
cloudpose eval /models/default/model.onnx
