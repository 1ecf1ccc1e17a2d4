# syntax=docker/dockerfile:1
# Stages: `api` (serving image, no torch, bundles the shipped order-free model) and `trainer`
# (torch with CUDA, for the GPU). Both install with scripts/install.sh, as local setup does.
FROM python:3.11-slim AS source
WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY scripts ./scripts
COPY configs ./configs
COPY data ./data
COPY models ./models
COPY pipeline ./pipeline
COPY service ./service
COPY cloudpose ./cloudpose

FROM source AS trainer
# PyPI's torch wheel for Linux carries CUDA, so this stage trains on the reserved GPU.
RUN scripts/install.sh train
ENV PATH=/app/.venv/bin:$PATH
CMD ["scripts/docker-train.sh"]

FROM source AS api
RUN scripts/install.sh serve
# Large request buffers go to mmap and back to the system when freed, so a burst of big clouds
# does not leave the heap grown (two passes of the hostile-input corpus: 3-27 MB, not 70-130).
ENV PATH=/app/.venv/bin:$PATH MALLOC_MMAP_THRESHOLD_=131072
EXPOSE 8000
CMD ["scripts/docker-api.sh"]
