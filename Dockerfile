# syntax=docker/dockerfile:1
# mixprec: control plane, CLI and worker agent in one image; `mixprec` is the entrypoint.
#
#   docker build -t mixprec:0.1.0 .                                  # CPU torch (default)
#   docker build -t mixprec:0.1.0-cu128 --build-arg TORCH_VARIANT=cu128 .   # CUDA 12.8 torch
#   docker build -t mixprec:0.1.0-llm --build-arg EXTRAS=worker,llm .       # + Gemma 3 270M and GGUF files
#                                                                          #   (Gemma's own terms apply to its weights)
#
# The chart runs `mixprec server`, `mixprec migrate` and `mixprec worker` from it; its GPU workers
# (worker.gpu.enabled) run the CUDA variant, tagged VERSION-cu128 as above, with --device=cuda.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# torch comes from PyTorch's own wheel index: `cpu` or a CUDA variant such as `cu126`, `cu128`.
ARG TORCH_VARIANT=cpu
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG EXTRAS=worker
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mixprec
ENV PATH=/opt/mixprec/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mixprec ./mixprec
COPY controlplane ./controlplane
COPY worker ./worker
COPY migrations ./migrations
RUN pip install ".[${EXTRAS}]" && mixprec --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
# A fixed, unprivileged uid: the chart's runAsUser and fsGroup name the same one.
ARG UID=10001
RUN groupadd --system --gid ${UID} mixprec \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /home/mixprec --create-home mixprec
COPY --from=build /opt/mixprec /opt/mixprec
# The root filesystem is read-only in the chart: caches go to /tmp (an emptyDir there); nothing is
# ever downloaded at run time (the MiniLM weights ship inside a Python package).
ENV PATH=/opt/mixprec/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/home/mixprec \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER ${UID}:${UID}
WORKDIR /home/mixprec
# Control plane: gRPC, plaintext gRPC health (probes), metrics, web dashboard. Worker: inference, health, metrics.
EXPOSE 50051 50052 9464 8080 50061 50062 9465
ENTRYPOINT ["mixprec"]
CMD ["--help"]
