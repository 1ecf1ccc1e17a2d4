# syntax=docker/dockerfile:1
# Stages: `api` (serving image, no torch), `trainer` (torch with CUDA, for the GPU),
# `bundler` (CPU torch, trains the default model baked into the api image).
# Every stage installs with scripts/install.sh, the same script as local setup.
FROM python:3.11-slim AS source
WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY scripts ./scripts
COPY configs ./configs
COPY data ./data
COPY models ./models
COPY pipeline ./pipeline
COPY service ./service

FROM source AS bundler
ENV CLOUDPOSE_TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN scripts/install.sh train \
    && .venv/bin/cloudpose train --config configs/default.yaml \
    && .venv/bin/cloudpose export runs/default --out /bundled/default \
    && .venv/bin/cloudpose eval /bundled/default/model.onnx

FROM source AS trainer
# PyPI's torch wheel for Linux carries CUDA, so this stage trains on the reserved GPU.
RUN scripts/install.sh train
ENV PATH=/app/.venv/bin:$PATH
CMD ["scripts/docker-train.sh"]

FROM source AS api
RUN scripts/install.sh serve
COPY --from=bundler /bundled/default /app/artifacts/default
ENV PATH=/app/.venv/bin:$PATH
EXPOSE 8000
CMD ["scripts/docker-api.sh"]
