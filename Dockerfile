# One image runs either service:  docker run IMAGE encoder [FLAGS]  |  docker run IMAGE decoder
#
#   scripts/build-image.sh cpu|cuda [--base IMAGE] [--index URL]   (docker, podman or buildah)
#   docker build -t reprocodec:cuda .                              (GPU nodes, the default)
#   docker build -t reprocodec:cpu --build-arg VARIANT=cpu .
#
# Plain Dockerfile syntax on purpose: no parser directive, no heredocs, no BuildKit-only flags,
# so the classic docker builder, BuildKit and buildah/podman all build it. buildah and podman
# keep HEALTHCHECK only in docker format (`--format docker`; scripts/build-image.sh passes it).
#
# Build arguments (nothing names a host; where packages come from is the builder's choice):
#   BASE_IMAGE           a Debian-family image with python3 (3.11+) and its venv module, used for
#                        both stages: python:3.11-slim-bookworm, or one made from Debian's archive
#                        alone by deploy/docker/debian-base.sh
#   PIP_INDEX_URL        Python package index (unset: pip's default); PIP_EXTRA_INDEX_URL and
#   PIP_EXTRA_INDEX_URL  PIP_TRUSTED_HOST as pip reads them. They appear in the image history:
#   PIP_TRUSTED_HOST     put no credentials in them.
#   VARIANT              cuda (default) or cpu
#
# VARIANT=cuda installs the registry's Linux torch wheel with its CUDA runtime wheels (nvidia-*):
# the host needs only the NVIDIA driver and container toolkit, no CUDA base image.
# VARIANT=cpu installs the same torch wheel (the registry has no CPU-only one of the pinned
# version) without the ~3 GB of CUDA runtime packages, and deploy/docker/cuda_stubs.py builds
# stand-ins for the CUDA libraries torch's binaries name, which report "no GPU". Its CPU
# kernels are then exactly those of the cuda image, the test environment and the calibration.
# All pins live in pyproject.toml. The shipped weights are their own distribution,
# reprocodec-weights (reprocodec/weights/pyproject.toml; the reprocodec wheel is the light client
# and has none), installed here from the build context and checked against the SHA-256 in their
# json at build time; nothing is downloaded at run time.

ARG VARIANT=cuda
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# Build stage: a virtual environment with the package and its `server` dependencies.
FROM ${BASE_IMAGE} AS build
ARG VARIANT
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

# The base must bring Python 3.11+ with venv (Debian: python3-venv); say so if it does not.
RUN python3 -c "import sys, ensurepip, venv; assert sys.version_info >= (3, 11), sys.version" \
 && python3 -m venv /opt/reprocodec
ENV PATH=/opt/reprocodec/bin:$PATH

WORKDIR /src
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/cuda_stubs.py /tmp/build/

# Dependencies first, in their own layer (gigabytes for cuda): rebuilt only when pyproject.toml
# changes. cpu: resolve exactly as cuda would, install that minus the CUDA runtime packages
# without letting pip re-add them, then build the library stand-ins (gcc only in this stage).
# hadolint ignore=DL3008
RUN set -eu; \
    python /tmp/build/requirements.py server pyproject.toml > /tmp/build/server.txt; \
    case "$VARIANT" in \
      cuda) pip install -r /tmp/build/server.txt ;; \
      cpu) pip install --dry-run --ignore-installed --quiet --report /tmp/build/resolved.json -r /tmp/build/server.txt \
        && python /tmp/build/requirements.py without-cuda /tmp/build/resolved.json > /tmp/build/cpu.txt \
        && pip install --no-deps -r /tmp/build/cpu.txt \
        && if ! command -v cc >/dev/null; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; fi \
        && python /tmp/build/cuda_stubs.py "$(python -c 'import sysconfig; print(sysconfig.get_path("platlib"))')" /opt/reprocodec/cuda-stubs \
        && echo /opt/reprocodec/cuda-stubs > /etc/ld.so.conf.d/reprocodec-cuda-stubs.conf && ldconfig ;; \
      *) echo "VARIANT must be cuda or cpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac

COPY README.md ./
COPY reprocodec ./reprocodec
COPY server ./server
COPY client ./client
COPY deploy/docker/verify_install.py /tmp/build/
# A regular (not editable) install of the package and of its weights: the venv is
# self-contained and /src stays behind. Its dependencies are all in place (pip check proves it),
# then the weights, the cpu variant's CPU-only state and an encode + verified decode of a sample
# are checked.
RUN pip install --no-deps . ./reprocodec/weights \
 && python /tmp/build/requirements.py check "$VARIANT" \
 && python -P /tmp/build/verify_install.py "$VARIANT"

# ---------------------------------------------------------------------------------------------
# Runtime stage: the venv, two small scripts, an unprivileged user. No compiler, no sources.
FROM ${BASE_IMAGE} AS runtime
ARG VARIANT

LABEL org.opencontainers.image.title="reprocodec" \
      org.opencontainers.image.description="Learned compression that decodes bit-exactly on any hardware" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/reprocodec /opt/reprocodec
COPY deploy/docker/entrypoint.sh /usr/local/bin/reprocodec-entrypoint
COPY deploy/docker/healthcheck.sh /usr/local/bin/reprocodec-healthcheck

# A fixed numeric UID so that Kubernetes' runAsNonRoot can verify it without /etc/passwd. The
# cpu variant's CUDA stand-ins go in the loader's cache (not LD_LIBRARY_PATH, which a deployment
# may override). chmod here rather than COPY --chmod, which older builders lack.
RUN groupadd --system --gid 10001 reprocodec \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/reprocodec --create-home \
      --shell /usr/sbin/nologin reprocodec \
 && chmod 0755 /usr/local/bin/reprocodec-entrypoint /usr/local/bin/reprocodec-healthcheck \
 && if [ -d /opt/reprocodec/cuda-stubs ]; then \
      echo /opt/reprocodec/cuda-stubs > /etc/ld.so.conf.d/reprocodec-cuda-stubs.conf && ldconfig; \
    fi \
 && PYTHONDONTWRITEBYTECODE=1 /opt/reprocodec/bin/python -P -c "import torch, reprocodec.server.main"

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
# port the entrypoint started the service on. A new container compiles every kernel of its
# preloaded models before SERVING (their warm-up; its numba cache starts empty: 30 s for an
# encoder and a decoder on a 2-core machine with an empty NUMBA_CACHE_DIR, outside an image):
# 120 s to start, as the Kubernetes startup probes allow.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["reprocodec-healthcheck"]

ENTRYPOINT ["reprocodec-entrypoint"]
CMD ["encoder"]
