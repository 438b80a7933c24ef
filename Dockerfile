# syntax=docker/dockerfile:1
#
# One image runs either service:  docker run IMAGE encoder [FLAGS]  |  docker run IMAGE decoder
#
#   docker build -t reprocodec:cuda .                     # GPU nodes (default)
#   docker build -t reprocodec:cpu --build-arg VARIANT=cpu .
#
# VARIANT=cuda installs PyPI's default Linux torch wheel, which is a CUDA build that carries its
# own CUDA runtime libraries (nvidia-* wheels): the host needs only the NVIDIA driver and the
# NVIDIA container toolkit, so no multi-gigabyte CUDA base image is needed. VARIANT=cpu installs
# the CPU-only wheel of the same torch version (about a tenth of the size). The torch and
# torchvision versions are read from pyproject.toml's `server` extra, so the pins live in one
# place. The shipped weights are package data (reprocodec/weights): installing the package bakes
# them in, and nothing is downloaded at run time.

ARG VARIANT=cuda
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# Build stage: a virtual environment with the package and its `server` extra.
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT
# Where the CPU-only torch wheels come from (the VARIANT=cpu image only).
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/reprocodec
ENV PATH=/opt/reprocodec/bin:$PATH

WORKDIR /src
# torch first, in its own layer (gigabytes for the CUDA build): rebuilt only when pyproject.toml
# changes, not on every source change.
COPY pyproject.toml ./
COPY deploy/docker/torch_requirements.py /tmp/torch_requirements.py
RUN <<'SH'
set -eu
python /tmp/torch_requirements.py pyproject.toml > /tmp/torch-requirements.txt
case "$VARIANT" in
  cuda) pip install -r /tmp/torch-requirements.txt ;;  # the default index's Linux torch: CUDA
  cpu) pip install --index-url "$TORCH_CPU_INDEX_URL" -r /tmp/torch-requirements.txt ;;
  *) echo "VARIANT must be cuda or cpu, not '$VARIANT'" >&2; exit 1 ;;
esac
SH

COPY README.md ./
COPY reprocodec ./reprocodec
COPY server ./server
COPY client ./client
# A regular (not editable) install: the venv is self-contained and /src stays behind. The
# check (python -P: the installed package, not /src) fails the build when no weights were
# packaged, since the services could not start. The versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[server]" \
 && python -P -c "from importlib.resources import files; \
w = [p.name for p in files('reprocodec').joinpath('weights').iterdir() if p.name.endswith('.pt')]; \
assert w, 'no weights in reprocodec/weights'; print('weights:', sorted(w))"

# ---------------------------------------------------------------------------------------------
# Runtime stage: the venv, two small scripts, an unprivileged user. No compiler, no sources.
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT

LABEL org.opencontainers.image.title="reprocodec" \
      org.opencontainers.image.description="Learned compression that decodes bit-exactly on any hardware" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 reprocodec \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/reprocodec --create-home \
      --shell /usr/sbin/nologin reprocodec

COPY --from=build /opt/reprocodec /opt/reprocodec
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/reprocodec-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.sh /usr/local/bin/reprocodec-healthcheck

# The numerics profile defaults to the variant's ("cuda" or "cpu"; the device follows from the
# profile); a deployment picks another with REPROCODEC_PROFILE or --profile.
ENV PATH=/opt/reprocodec/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/reprocodec \
    XDG_CACHE_HOME=/tmp/reprocodec-cache \
    REPROCODEC_PROFILE=${VARIANT} \
    REPROCODEC_HOST=0.0.0.0

USER 10001:10001
WORKDIR /home/reprocodec

# gRPC (encoder, decoder) and Prometheus metrics (encoder, decoder).
EXPOSE 50051 50052 9101 9102

# The standard grpc.health.v1 check, by the package's own client (no extra binary): it asks the
# port the entrypoint started the service on.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["reprocodec-healthcheck"]

ENTRYPOINT ["reprocodec-entrypoint"]
CMD ["encoder"]
