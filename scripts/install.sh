#!/usr/bin/env bash
# Set up cloudpose in ./.venv. Used by `make serve`, `make test`, CI and the Dockerfile alike.
#
#   scripts/install.sh [serve|train|all]     (default: all = serve + train + dev tools)
#
# serve: onnxruntime + FastAPI + uvicorn + open3d, no torch (the API image).
# train: adds torch (CPU wheel, pinned), onnx, matplotlib, scipy, scikit-learn.
# Set CLOUDPOSE_TORCH_INDEX to a package index URL to take torch from there
# (the Dockerfile uses PyTorch's CPU index so the image gets no multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-all}
case "$profile" in serve|train|all) ;; *) echo "usage: $0 [serve|train|all]" >&2; exit 1 ;; esac

# open3d needs libusb and libgomp at import time.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || ! ldconfig -p 2>/dev/null | grep -q 'libgomp.so.1'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libgomp1 >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libgomp1 >/dev/null
  else
    echo "warning: install libusb-1.0-0 and libgomp1 with your package manager (open3d needs them)" >&2
  fi
fi

# The browser tests (all) drive Debian's chromium through Playwright, which never downloads a browser.
if [ "$profile" = all ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: the browser tests skip without chromium: install Debian's chromium package" >&2
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

case "$profile" in
  serve) "${pip[@]}" -e ".[serve]" ;;
  train|all)
    # Pin torch first: an unpinned torch would pull a CUDA build of several GB.
    if ! .venv/bin/python -c "import torch" 2>/dev/null; then
      "${pip[@]}" ${CLOUDPOSE_TORCH_INDEX:+--index-url "$CLOUDPOSE_TORCH_INDEX"} "torch==2.13.0"
    fi
    if [ "$profile" = train ]; then "${pip[@]}" -e ".[serve,train]"; else "${pip[@]}" -e ".[serve,train,dev]"; fi
    ;;
esac
echo "cloudpose installed in .venv ($profile)" >&2
