# syntax=docker/dockerfile:1
# The image the Helm chart (helm/eigenloop) runs: the `eigenloop` console script and nothing
# else. One Dockerfile, two variants, chosen by a build arg:
#
#   docker build --build-arg VARIANT=cpu  -t eigenloop/eigenloop:0.1.0-cpu  .
#   docker build --build-arg VARIANT=cuda -t eigenloop/eigenloop:0.1.0-cuda .
#
# cpu:  torch from the PyTorch CPU wheel index (TORCH_INDEX), a few hundred MB.
# cuda: torch's default Linux wheels, which bundle the CUDA runtime libraries (the nvidia-*
#       wheels). The driver comes from the node through the NVIDIA container toolkit, so both
#       variants share the same slim Python base and the same user, paths and entrypoint.
# The chart picks the tag "<appVersion>-<variant>" (cuda when gpu.enabled).
#
# Kafka and ClickHouse are external in the cluster: no Java, no broker jars in the image.

ARG BASE=python:3.11-slim-bookworm

# ---- build: a virtualenv with torch and the package, compiled extensions included ----------
FROM ${BASE} AS build
ARG VARIANT=cpu
# A pip requirement specifier for torch; pin it for reproducible images.
ARG TORCH_SPEC="torch>=2.4"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# Compilers only for the rare dependency without a wheel; they stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch in its own layer: the largest dependency and the one that differs per variant, so a code
# change does not download it again.
RUN case "$VARIANT" in \
      cpu)  pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX" ;; \
      cuda) pip install "$TORCH_SPEC" ;; \
      *)    echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY learners ./learners
COPY streams ./streams
COPY daemon ./daemon
# A plain (non-editable) install: the runtime stage copies only /opt/venv, not /src. torch is
# already satisfied, so the CPU variant keeps its CPU build.
RUN pip install . \
 && eigenloop --help > /dev/null

# ---- runtime: the virtualenv, a non-root user, nothing to build with ------------------------
FROM ${BASE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="eigenloop" \
      org.opencontainers.image.description="eigenloop daemon, streams worker and analytics sink" \
      io.eigenloop.variant="${VARIANT}"
# The uid/gid the chart's securityContext expects (securityContext.runAsUser: 10001).
RUN groupadd --system --gid 10001 eigenloop \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin eigenloop \
 && mkdir -p /var/lib/eigenloop \
 && chown 10001:10001 /var/lib/eigenloop
COPY --from=build /opt/venv /opt/venv
# HOME and the caches point at /tmp because the chart mounts the root filesystem read-only;
# NVIDIA_* tell the container toolkit what the cuda variant needs (ignored without a GPU).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    EIGENLOOP_DATA_DIR=/var/lib/eigenloop \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/eigenloop
# /healthz, /readyz, /metrics, /kill, /snapshot
EXPOSE 8787
ENTRYPOINT ["eigenloop"]
CMD ["daemon"]
