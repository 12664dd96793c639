# syntax=docker/dockerfile:1
# The image the Helm chart (helm/eigenloop) runs: the `eigenloop` console script and nothing
# else. One Dockerfile, two variants, chosen by a build arg:
#
#   docker build --build-arg VARIANT=cpu  -t eigenloop/eigenloop:0.1.0-cpu  .
#   docker build --build-arg VARIANT=cuda -t eigenloop/eigenloop:0.1.0-cuda .
#
# cpu:  torch from the PyTorch CPU wheel index (TORCH_INDEX), a few hundred MB, at the version
#       pinned in requirements/runtime.lock; everything else from requirements/runtime-cpu.lock.
# cuda: everything from requirements/runtime.lock, torch's PyPI wheels included, which bundle the
#       CUDA runtime libraries (the nvidia-* wheels). The driver comes from the node through the
#       NVIDIA container toolkit, so both variants share the same slim Python base and the same
#       user, paths and entrypoint.
# The lock files pin every package with sha256 hashes (`make lock`), at the versions `make test`
# runs, so an image is rebuilt from the same files or not at all.
# The chart picks the tag "<appVersion>-<variant>" (cuda when gpu.enabled).
#
# Kafka and ClickHouse are external in the cluster: no Java, no broker jars in the image.

ARG BASE=python:3.11-slim-bookworm

# ---- build: a virtualenv with torch and the package, compiled extensions included ----------
FROM ${BASE} AS build
ARG VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The sha256 of the CPU torch wheel (cp311, manylinux x86_64) for the version runtime.lock pins.
# The lock cannot carry it: `make lock` resolves from PyPI, whose torch is the CUDA build, and the
# CPU index was not reachable where the lock was made. Without this arg the cpu variant's torch is
# pinned by version only (fetched over TLS from TORCH_INDEX); set it for a hash-checked build.
ARG TORCH_CPU_SHA256=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# Compilers only for the rare dependency without a wheel; they stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/runtime.lock requirements/runtime-cpu.lock ./requirements/
# The dependencies before the code, so a code change does not download torch again. --no-deps:
# each lock is complete (pip check below proves it), and it keeps pip from reaching for the CUDA
# wheels the CPU torch does not need. `torch==<v>` also matches the CPU index's "<v>+cpu".
RUN set -e; \
    case "$VARIANT" in \
      cpu)  v=$(sed -n 's/^torch==\([^ ]*\) .*/\1/p' requirements/runtime.lock); \
            test -n "$v"; \
            echo "torch==$v${TORCH_CPU_SHA256:+ --hash=sha256:$TORCH_CPU_SHA256}" > /tmp/torch-cpu.txt; \
            pip install --no-deps --index-url "$TORCH_INDEX" -r /tmp/torch-cpu.txt; \
            pip install --no-deps --require-hashes -r requirements/runtime-cpu.lock ;; \
      cuda) pip install --no-deps --require-hashes -r requirements/runtime.lock ;; \
      *)    echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY learners ./learners
COPY streams ./streams
COPY daemon ./daemon
# A plain (non-editable) install: the runtime stage copies only /opt/venv, not /src. --no-deps:
# nothing is resolved past the lock; pip check fails if pyproject.toml declares a dependency the
# lock lacks (run `make lock`), or if a lock misses something a package requires.
RUN pip install --no-deps . \
 && pip check \
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
