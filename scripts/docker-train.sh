#!/usr/bin/env sh
# Train on the reserved GPU (CUDA when available, else the CPU), export into the shared volume,
# and benchmark the result there.
set -eu
config=${CLOUDPOSE_TRAIN_CONFIG:-configs/pointnet.yaml}
cloudpose train --config "$config" --out-dir /models/runs/default
cloudpose export /models/runs/default --out /models/default
cloudpose bench /models/default/model.onnx --count 100 --methods network,network+refine --out /models/default/bench
