#!/usr/bin/env bash
# Build the service image with whichever builder this machine has: docker (with or without
# BuildKit), podman or buildah (daemonless; no root daemon needed).
#
#   scripts/build-image.sh [cpu|cuda] [--base IMAGE] [--index URL] [--builder NAME] [-- ARGS...]
#
#   cpu|cuda        the variant (default cuda, as the Dockerfile); tags reprocodec:VERSION-VARIANT
#                   and reprocodec:VARIANT (what deploy/k8s and deploy/compose.yaml run)
#   --base IMAGE    the base image (build argument BASE_IMAGE; default: the Dockerfile's)
#   --index URL     the Python package index (build argument PIP_INDEX_URL); PIP_INDEX_URL,
#                   PIP_EXTRA_INDEX_URL and PIP_TRUSTED_HOST from the environment are passed on
#   --builder NAME  docker, podman or buildah (default: the first that works, in that order;
#                   docker only when its daemon answers); or REPROCODEC_BUILDER
#   -- ARGS...      passed to the builder as they are (e.g. --isolation chroot, --network host)
#
# podman and buildah build in docker format, the only one that keeps HEALTHCHECK. Their storage
# driver and isolation come from their own configuration or environment (STORAGE_DRIVER=vfs,
# BUILDAH_ISOLATION=chroot where there are no user namespaces or overlayfs, as in a container).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

variant=cuda
base=${BASE_IMAGE:-}
index=${PIP_INDEX_URL:-}
builder=${REPROCODEC_BUILDER:-}
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        cpu|cuda) variant=$1 ;;
        --base) [ $# -ge 2 ] || usage; base=$2; shift ;;
        --base=*) base=${1#--base=} ;;
        --index) [ $# -ge 2 ] || usage; index=$2; shift ;;
        --index=*) index=${1#--index=} ;;
        --builder) [ $# -ge 2 ] || usage; builder=$2; shift ;;
        --builder=*) builder=${1#--builder=} ;;
        --) shift; passthrough=("$@"); break ;;
        -h|--help) usage ;;
        *) echo "build-image.sh: unknown argument '$1'" >&2; usage ;;
    esac
    shift
done

if [ -z "$builder" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        builder=docker
    elif command -v podman >/dev/null 2>&1; then
        builder=podman
    elif command -v buildah >/dev/null 2>&1; then
        builder=buildah
    else
        echo "build-image.sh: no docker (with a running daemon), podman or buildah found" >&2
        exit 1
    fi
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
tags=("reprocodec:$version-$variant" "reprocodec:$variant")
args=(--file Dockerfile --build-arg "VARIANT=$variant")
for tag in "${tags[@]}"; do args+=(--tag "$tag"); done
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
[ -n "$index" ] && args+=(--build-arg "PIP_INDEX_URL=$index")
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
[ -n "${PIP_TRUSTED_HOST:-}" ] && args+=(--build-arg "PIP_TRUSTED_HOST=$PIP_TRUSTED_HOST")

case "$builder" in
    docker) cmd=(docker build "${args[@]}") ;;
    podman) cmd=(podman build --format docker "${args[@]}") ;;
    buildah) cmd=(buildah bud --format docker "${args[@]}") ;;
    *) echo "build-image.sh: unknown builder '$builder' (docker, podman or buildah)" >&2; exit 2 ;;
esac
cmd+=(${passthrough[@]+"${passthrough[@]}"} .)

echo "+ ${cmd[*]}" >&2
start=$(date +%s)
"${cmd[@]}"
elapsed=$(( $(date +%s) - start ))
size=$("$builder" images --format '{{.Size}}' "${tags[0]}" 2>/dev/null | head -n 1 || true)
echo "built ${tags[*]} with $builder in ${elapsed}s${size:+, size $size}" >&2
